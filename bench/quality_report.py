"""The table of bench/quality.sh: what the default commands reached on each track
type with the default derived inputs (on) and without them (off), next to the
baseline (fed the same inputs), the known optimum and the targets.

    python -m bench.quality_report CACHE_FOLDER
"""
import json
import os
import re
import sys

from architecture import ModelConfig

VARIANTS = (("on", "derived inputs on (default)"), ("off", "derived inputs off (--no-derived)"))


def operations(tree):
    """Elementwise operations of an expression tree (numbers and branches: none)."""
    kind, *args = tree
    return 0 if kind in ("num", "var") else 1 + sum(operations(a) for a in args)


def cost(record):
    """(multiply-adds per track, derived inputs' operations per track, their names)."""
    config = ModelConfig.from_dict(record)
    ops = sum(operations(d.tree(config.branches)) for d in config.derived)
    return config.cost()[0], ops, [d.name for d in config.derived]


def row(name, auc, rejection, limit):
    return f"    {name:<36} {auc:>8.4f} {rejection:>9.4f} {rejection / limit:>8.1%}"


def load(cache, run):
    folder = os.path.join(cache, f"model_{run}")
    config = json.load(open(os.path.join(folder, "ghost_model_config.json")))
    int8 = json.load(open(os.path.join(folder, "ghost_model_int8_config.json")))
    fresh = json.load(open(os.path.join(cache, f"plots_{run}", "metrics.json")))
    log = open(os.path.join(cache, f"train_{run}.log")).read()
    search = float(re.search(r"search done in ([\d.]+) s", log).group(1))
    wall = float(open(os.path.join(cache, f"wall_{run}")).read())
    return config, int8, fresh, search, wall


def fresh_rejection(curve, efficiency=0.99):
    return next(r["ghost_rejection"] for r in curve["ghost_rejection"]
                if r["target_efficiency"] == efficiency)


def report(cache, track):
    print(f"{track} tracks{'':<27} {'AUC':>8} {'rej@99%':>9} {'of limit':>8}")
    test = {}
    for variant, title in VARIANTS:
        config, int8, fresh, search, wall = load(cache, f"{track}_{variant}")
        m = config["metrics"]
        limit = m["limit"]["rejection@0.99"]
        macs, ops, names = cost(config)
        print(f"  {title}: hidden {'x'.join(map(str, config['hidden']))}, {macs:,} "
              f"multiply-adds + {ops} operations of derived inputs per track"
              + (f" ({', '.join(names)})" if names else "")
              + f"; search {search:.0f} s, training.py with --int8 --baseline {wall:.0f} s")
        print("   on the test split")
        print(row("network (float)", m["test"]["auc"], m["test"]["rejection@0.99"], limit))
        print(row("network (INT8)", int8["metrics"]["test"]["auc"],
                  int8["metrics"]["test"]["rejection@0.99"], limit))
        print(row("baseline (gradient-boosted trees)", m["baseline"]["auc"],
                  m["baseline"]["rejection@0.99"], limit))
        print(row("limit (truth_llr)", m["limit"]["auc"], limit, limit))
        print("   on a fresh 300,000-track file")
        fresh_limit = fresh_rejection(fresh["limit"])
        for curve, name in zip(fresh["comparison"], ("network (float)", "network (INT8)")):
            print(row(name, curve["auc"], fresh_rejection(curve), fresh_limit))
        print(row("limit (truth_llr)", fresh["limit"]["auc"], fresh_limit, fresh_limit))
        print(f"   INT8 - float AUC {int8['metrics']['test']['auc'] - m['test']['auc']:+.4f} "
              f"(target within 0.005); network - baseline on the test split: AUC "
              f"{m['test']['auc'] - m['baseline']['auc']:+.4f}, rejection "
              f"{m['test']['rejection@0.99'] - m['baseline']['rejection@0.99']:+.4f}; gap to "
              f"the limit (fresh file): AUC {fresh['gap_to_limit']['auc_gap']:.4f} (target "
              f"<= 0.01), {fresh['gap_to_limit']['rejection_fraction@0.99']:.1%} of its "
              "rejection (target >= 90 %)")
        test[variant] = m["test"]
    print(f"  on - off (network, test split): AUC {test['on']['auc'] - test['off']['auc']:+.4f}, "
          f"rejection at 99 % {test['on']['rejection@0.99'] - test['off']['rejection@0.99']:+.4f}")


if __name__ == "__main__":
    tracks = os.path.join(sys.argv[1], "tracks")
    if os.path.isfile(tracks):
        print(f"{int(open(tracks).read()):,} tracks per sample (make_sample.py --seed 11)")
    for track in ("matching", "forward"):
        report(sys.argv[1], track)
