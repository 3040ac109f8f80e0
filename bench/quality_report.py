"""The table of bench/quality.sh: what the default commands reached on each track
type, next to the baseline, the known optimum and the targets.

    python -m bench.quality_report CACHE_FOLDER
"""
import json
import os
import re
import sys


def row(name, auc, rejection, note=""):
    return f"  {name:<34} {auc:>8.4f} {rejection:>10.4f}  {note}"


def report(cache, track):
    config = json.load(open(os.path.join(cache, f"model_{track}", "ghost_model_config.json")))
    int8 = json.load(open(os.path.join(cache, f"model_{track}", "ghost_model_int8_config.json")))
    fresh = json.load(open(os.path.join(cache, f"plots_{track}", "metrics.json")))
    log = open(os.path.join(cache, f"train_{track}.log")).read()
    search = float(re.search(r"search done in ([\d.]+) s", log).group(1))
    wall = float(open(os.path.join(cache, f"wall_{track}")).read())
    m, limit = config["metrics"], config["metrics"]["limit"]
    print(f"{track}: hidden {'x'.join(map(str, config['hidden']))}, {config['macs']:,} "
          f"multiply-adds per track; search {search:.0f} s (target < 180 s), training.py "
          f"with --int8 --baseline {wall:.0f} s")
    print(f"  {'on the test split':<34} {'AUC':>8} {'rej@99%':>10}")
    print(row("network (float)", m["test"]["auc"], m["test"]["rejection@0.99"]))
    print(row("network (INT8)", int8["metrics"]["test"]["auc"],
              int8["metrics"]["test"]["rejection@0.99"],
              f"AUC - float = {int8['metrics']['test']['auc'] - m['test']['auc']:+.4f} "
              "(target within 0.005)"))
    print(row("baseline (gradient-boosted trees)", m["baseline"]["auc"],
              m["baseline"]["rejection@0.99"]))
    print(row("limit (truth_llr)", limit["auc"], limit["rejection@0.99"]))
    print(f"  {'on a fresh 300,000-track file':<34}")
    for c in fresh["comparison"]:
        r99 = next(r["ghost_rejection"] for r in c["ghost_rejection"]
                   if r["target_efficiency"] == 0.99)
        print(row(c["name"], c["auc"], r99))
    gap = fresh["gap_to_limit"]
    print(f"  gap to the limit: AUC {gap['auc_gap']:.4f} (target <= 0.01), rejection at 99 % "
          f"{gap['rejection_fraction@0.99']:.1%} of the limit's (target >= 90 %); ahead of "
          f"the baseline on the test split: AUC "
          f"{m['test']['auc'] - m['baseline']['auc']:+.4f}, rejection "
          f"{m['test']['rejection@0.99'] - m['baseline']['rejection@0.99']:+.4f}")


if __name__ == "__main__":
    for track in ("matching", "forward"):
        report(sys.argv[1], track)
