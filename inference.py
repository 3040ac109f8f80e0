"""Score tracks with a trained ghost classifier and analyse the result.

    python inference.py -f ../data/Data.root --model ghost_model.onnx --track matching
    python inference.py -f ../data/dataset --model ghost_model.pth --config ghost_model_config.pkl

-f is a .root file (every entry of the tree, in entry order) or a dataset prefix written
by make_dataset.py (its test split; its train split too, for the overtraining check).
The model's ONNX metadata or config tells the track type, features, network and the
normalization recorded at training time; flags override them.

One scoring pass, then for every threshold (ghost when probability > threshold):
accuracy, TP/TN/FP/FN fractions, sensitivity, specificity, FPR, FNR, precision, F1,
predicted and true ghost/real fractions; ROC AUC, the full ROC, ghost rejection at
90/95/99/99.5 % real-track efficiency.  Writes to --plots-dir: thresholds.csv,
metrics.json, accuracy.png, ghost_real.png, confusion.png, ssfnfp.png, roc.png,
scores.png, rejection.png (and overtraining.png on a dataset prefix).
--output FILE.npy|FILE.root: the ghost probability of every input track (NaN where a
track has a non-finite feature); the .root tree `ghost_probability` (branch
`ghost_prob`) can be a friend of the input tree.
"""
import argparse
import os

import numpy as np

from compare import (
    Curve,
    compared_model_paths,
    comparison_csv,
    curve_names,
    format_comparison,
    gap_to_limit,
    model_macs,
)
from features import DEFAULT_TREE, LABEL, LIMIT, TRACK_TYPES
from inputs import describe_source, read_input, resolve_settings, warn_unfilled
from metrics import analyse, overtraining
from outputs import AtomicOutputs, check_output_file, prepare_folder
from plots import PlotInput, pyplot, write_analysis_figures
from report import metrics_record, print_summary, table_csv
from rootio import write_root
from scoring import CPU_BATCH, GPU_BATCH, load_model_file, score_model
from utils import GhostError, Stopwatch, log, run_cli

# The original study's 26 thresholds: 0.10-0.80 by 0.05, 0.81-0.89 by 0.01, 0.90, 0.95.
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in (
    [0.10 + 0.05 * i for i in range(15)] + [0.81 + 0.01 * i for i in range(9)] + [0.90, 0.95]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", required=True,
                   help="a .root file, or a dataset prefix from make_dataset.py")
    p.add_argument("--model", default="ghost_model.onnx",
                   help="an .onnx model, or a .pth state dict with --config "
                        "(default ghost_model.onnx)")
    p.add_argument("--config", help="model config (.pkl or .json); needed for a .pth model")
    p.add_argument("--track", choices=TRACK_TYPES,
                   help="track type: its default features (default: from the model)")
    p.add_argument("--features",
                   help="comma-separated feature branches in the model's column order "
                        "(for a model without metadata)")
    p.add_argument("--network", type=int, choices=(0, 1),
                   help="0: model expects normalized inputs; 1: normalization inside "
                        "(default: from the model)")
    p.add_argument("--normalize", action="store_true",
                   help="normalize the inputs with the offsets and scales recorded at "
                        "training time (automatic for network 0 on raw inputs)")
    p.add_argument("--int8", action="store_true",
                   help="the model is INT8-quantized (.pth: config with int8; .onnx: "
                        "QuantizeLinear/DequantizeLinear, run with onnxruntime)")
    p.add_argument("--nocuda", action="store_true", help="do not use CUDA")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="scoring engine (default torch; onnxruntime as a cross-check)")
    p.add_argument("--output", help="write every track's ghost probability to FILE.npy "
                                    "or FILE.root (NaN for non-finite tracks)")
    p.add_argument("--plots-dir", default="plots",
                   help="folder for plots, thresholds.csv and metrics.json (default plots)")
    p.add_argument("--show", action="store_true", help="also open the plots in windows")
    p.add_argument("--no-plots", action="store_true",
                   help="write thresholds.csv and metrics.json but no plots")
    p.add_argument("--thresholds",
                   help="comma-separated thresholds in [0, 1] (default: the original 26)")
    p.add_argument("--batch", type=int,
                   help=f"tracks per scoring batch (default {CPU_BATCH} on CPU, "
                        f"{GPU_BATCH:,} on GPU)")
    p.add_argument("--tree", default=DEFAULT_TREE, help=f"tree path (default {DEFAULT_TREE})")
    p.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="other models (.onnx, or .pth with its _config beside it) scored on "
                        "the same tracks: ROC and rejection overlaid in compare.png, a table "
                        "in comparison.csv (the limit too, where the input has it)")
    p.add_argument("--seed", type=int, default=42,
                   help="accepted like in the other scripts; the analysis draws no random "
                        "numbers, so it is the same for every seed")
    return p.parse_args(argv)


def check_args(args):
    """Argument problems that need no file, reported before any work: returns the
    thresholds and the --features list."""
    if args.batch is not None and args.batch < 1:
        raise GhostError(f"--batch must be at least 1, got {args.batch}")
    thresholds = list(DEFAULT_THRESHOLDS)
    if args.thresholds is not None:
        try:
            values = [float(t) for t in args.thresholds.split(",") if t.strip()]
        except ValueError:
            raise GhostError(f"--thresholds must be comma-separated numbers, "
                             f"got {args.thresholds!r}")
        if not values or not all(0.0 <= t <= 1.0 for t in values):
            raise GhostError(f"--thresholds must be numbers in [0, 1], got {args.thresholds!r}")
        thresholds = sorted(set(values))
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not features:
            raise GhostError("--features is empty")
        if len(set(features)) != len(features):
            raise GhostError(f"--features repeats a name: {','.join(features)}")
    if args.output is not None:
        if os.path.splitext(args.output)[1].lower() not in (".npy", ".root"):
            raise GhostError(f"--output {args.output}: the extension must be .npy or .root")
        check_output_file(args.output)
    prepare_folder(args.plots_dir, "--plots-dir", create=False)  # made once there are metrics
    return thresholds, features


def describe_run(args, features_flag):
    """The model, the input and the settings to read it with, said on the console."""
    model = load_model_file(args.model, args.config, args.network, args.int8)
    source = describe_source(args.filename)
    settings = resolve_settings(model, source, args.track, features_flag, args.normalize)
    names = settings.features
    log(f"model {args.model} ({model.kind}{', INT8' if model.int8 else ''}"
        f"{', no metadata' if not model.has_metadata else ''}): "
        f"track {settings.track or '?'}, network "
        f"{'?' if settings.network is None else settings.network}, "
        f"{len(names)} features {','.join(names)}")
    return model, source, settings


def load_input(args, source, settings):
    """The inputs.Input read from -f, and which tracks have every feature finite."""
    clock = Stopwatch()
    inp = read_input(source, settings.features, args.tree)
    if len(inp.data) == 0:
        raise GhostError(f"{args.filename} holds no tracks")
    finite = np.isfinite(inp.data).all(axis=1)
    log(f"read {len(inp.data):,} tracks from {args.filename} in {clock():.1f} s"
        + ("" if inp.labels is not None else f" (no {LABEL!r} branch: unlabelled)"))
    warn_unfilled(source, args.tree, settings.track, settings.features, inp.data)
    if settings.normalization is not None:
        log(f"normalized with the transform recorded in {settings.normalization_origin}")
    return inp, finite


def score_input(args, model, settings, inp, finite):
    """Scores of every track (NaN where a feature is not finite) and of the train
    split if there is one; the scorer's description and the pass's seconds."""
    scores, desc, seconds, note = score_model(model, inp.data, finite, settings.normalization,
                                              args.backend, args.nocuda, args.batch)
    if note:
        log(f"note: {note}")
    rate = len(inp.data) / seconds if seconds > 0 else float("inf")
    log(f"scored {len(inp.data):,} tracks in {seconds:.3f} s: {rate / 1e6:,.1f} M tracks/s "
        f"({desc})")
    n_bad = int((~finite).sum())
    if n_bad:
        log(f"{n_bad:,} tracks have a non-finite feature: their probability is NaN "
            f"and they are left out of the metrics")
    train_scores = None
    if inp.train is not None:
        train_finite = np.isfinite(inp.train[0]).all(axis=1)
        train_scores = score_model(model, inp.train[0], train_finite, settings.normalization,
                                   args.backend, args.nocuda, args.batch)[0]
    return scores, train_scores, desc, seconds


def analyse_scores(model, scores, labels, finite, thresholds, where, output_asked):
    """The metrics.Analysis of the finite, labelled scores, or None (said why)."""
    if labels is None:
        log(f"metrics need labels: {where} has no {LABEL!r} branch, so only the "
            "probabilities are written" + ("" if output_asked else " (none asked: --output)"))
        return None
    if not finite.any():
        log("no track has all its features finite: nothing to analyse")
        return None
    n_ghost = int(labels[finite].sum())
    if n_ghost in (0, int(finite.sum())):
        log(f"note: only {'real tracks' if n_ghost == 0 else 'ghosts'} among the scored "
            "tracks: the rates of the missing class, ROC AUC and ghost rejection are "
            "undefined (nan)")
    try:
        own = float(model.saved.threshold)
    except (TypeError, ValueError):
        own = None
    return analyse(scores[finite], labels[finite], thresholds,
                   own if own is not None and 0.0 <= own <= 1.0 else None)


def compare_curves(args, model, source, settings, inp, finite, analysis):
    """The analysed model, each --compare model and the limit (where the input has
    it) on the same finite, labelled tracks: a list of compare.Curve."""
    names = curve_names([args.model] + (args.compare or []))
    curves = [Curve.from_analysis(names[0], analysis, model_macs(model))]
    labels = inp.labels[finite]
    for name, (path, config) in zip(names[1:], compared_model_paths(args.compare or [])):
        other = load_model_file(path, config)
        theirs = resolve_settings(other, source)
        if theirs.features != settings.features:
            raise GhostError(f"--compare {path} reads features {','.join(theirs.features)}, "
                             f"not the {','.join(settings.features)} of {args.model}")
        scores = score_model(other, inp.data, finite, theirs.normalization, args.backend,
                             args.nocuda, args.batch)[0]
        curves.append(Curve.of(name, scores[finite], labels, model_macs(other)))
    if inp.limit is not None:
        curves.append(Curve.of(f"limit ({LIMIT})", inp.limit[finite], labels))
    return curves


def analyse_input(args, model, source, settings, inp, finite, scored, thresholds):
    """The analysis, the overtraining check on a dataset, the comparison with other
    models and the limit, the console summary, and what the figures draw:
    (Analysis, extra metrics.json entries, PlotInput), or Nones."""
    scores, train_scores = scored
    analysis = analyse_scores(model, scores, inp.labels, finite, thresholds, args.filename,
                              bool(args.output))
    if analysis is None:
        return None, {}, None
    train = inp.train
    over = overtraining(train_scores, train[1], scores, inp.labels) if train else None
    print_summary(analysis, over)
    curves = compare_curves(args, model, source, settings, inp, finite, analysis)
    extra = {"overtraining": over}
    if len(curves) > 1:
        log(format_comparison(curves, analysis.n))
        extra["comparison"] = [c.record() for c in curves]
    if inp.limit is not None:
        extra["limit"] = curves[-1].record()
        extra["gap_to_limit"] = gap = gap_to_limit(curves[0], curves[-1])
        log(f"gap to the limit: AUC {gap['auc_gap']:.4f} lower; "
            f"{gap['rejection_fraction@0.99']:.1%} of the limit's ghost rejection at "
            "99 % real-track efficiency")
    title = (f"{os.path.basename(args.model)} on {os.path.basename(args.filename)}"
             f" ({analysis.n:,} tracks)")
    return analysis, extra, PlotInput(
        analysis, title, test=(scores, inp.labels), overtraining=over,
        train=(train_scores, train[1]) if train is not None else None,
        curves=curves if len(curves) > 1 else None)


def write_outputs(args, out, scores, analysis, extra, plot_input, context):
    """--output, then metrics.json, thresholds.csv, comparison.csv and the figures;
    returns the figures kept open for --show and what was written."""
    written, kept = [], []
    if args.output:
        if args.output.lower().endswith(".npy"):
            out.save_npy(args.output, scores.astype(np.float32))
        else:
            write_root(out.tmp(args.output), "ghost_probability",
                       {"ghost_prob": np.ascontiguousarray(scores, np.float32)},
                       shown=args.output)
        written.append(args.output)
    if analysis is not None:
        prepare_folder(args.plots_dir, "--plots-dir")
        out.save_json(os.path.join(args.plots_dir, "metrics.json"),
                      metrics_record(analysis, extra, context))
        out.save_bytes(os.path.join(args.plots_dir, "thresholds.csv"),
                       table_csv(analysis.table).encode())
        tables = "thresholds.csv"
        if plot_input.curves:
            out.save_bytes(os.path.join(args.plots_dir, "comparison.csv"),
                           comparison_csv(plot_input.curves).encode())
            tables += ", comparison.csv"
        names = []
        if not args.no_plots:
            names, kept = write_analysis_figures(plot_input, args.plots_dir, out, args.show)
        written.append(f"{args.plots_dir}/ ({len(names)} plots, {tables}, metrics.json)")
    return kept, written


def run_context(args, source, model, settings, scores, finite, desc, seconds):
    """What metrics.json records about the run before its numbers."""
    return {
        "input": os.path.abspath(args.filename), "input_kind": source.kind,
        "model": os.path.abspath(args.model), "model_kind": model.kind,
        "int8": model.int8, "scoring": desc, "track": settings.track,
        "features": settings.features, "network": settings.network,
        "macs_per_track": model_macs(model),
        "normalized_by_inference": settings.normalization is not None,
        "normalization_origin": settings.normalization_origin,
        "tracks": len(scores), "tracks_nonfinite": int((~finite).sum()),
        "scoring_seconds": seconds,
        "tracks_per_second": len(scores) / seconds if seconds > 0 else None,
    }


def main(argv=None):
    args = parse_args(argv)
    thresholds, features_flag = check_args(args)
    clock = Stopwatch()
    model, source, settings = describe_run(args, features_flag)
    inp, finite = load_input(args, source, settings)
    scores, train_scores, desc, seconds = score_input(args, model, settings, inp, finite)
    analysis, extra, plot_input = analyse_input(args, model, source, settings, inp, finite,
                                                (scores, train_scores), thresholds)
    context = run_context(args, source, model, settings, scores, finite, desc, seconds)
    with AtomicOutputs() as out:
        kept, written = write_outputs(args, out, scores, analysis, extra, plot_input, context)
    log(f"wrote {', '.join(written) if written else 'nothing'}; total {clock():.1f} s")
    if kept:
        pyplot(True).show()
    return 0


if __name__ == "__main__":
    run_cli(main)
