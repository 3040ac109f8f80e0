"""Score tracks with a trained ghost classifier and analyse the result.

    python inference.py -f ../data/Data.root --model ghost_model.onnx --track matching
    python inference.py -f ../data/dataset --model ghost_model.pth --config ghost_model_config.pkl

-f is a .root file (every entry, in entry order) or a dataset prefix of make_dataset.py
(its test split; its train split for the overtraining check).  The model's metadata or
config tells the track type, features, network and normalization; flags override them.

One scoring pass, then ROC AUC, ghost rejection at the working points (--working-point
and the model's own) and the original study's threshold table (thresholds.csv; on the
console with --verbose).  The console ends with the answer: AUC, ghost rejection at each
working point with its threshold, the gap to the known optimum, the page to open.
"""
import os
from dataclasses import dataclass

import numpy as np

from artifacts import model_header
from cli import Parser, add_plot_options, add_threads_option, parse_formats, parse_numbers, run_cli
from compare import compared_model_paths, curve_names
from dataset import dataset_files
from drawing import pyplot, style
from evaluation import Sample, evaluate, rank_model_inputs, run_context
from features import DEFAULT_TREE, LABEL, TRACK_TYPES
from inputs import (
    describe_source,
    finite_part,
    load_input,
    nonfinite_line,
    overflow_warning,
    release_features,
    resolve_settings,
    scorable,
)
from metrics import DEFAULT_THRESHOLDS
from outputs import AtomicOutputs, check_output_file, prepare_folder, refuse_overwriting_inputs
from pages import inference_parts
from report import (
    PAGE,
    analysis_files,
    analysis_headline,
    analysis_outputs,
    print_headline,
    print_summary,
    write_analysis,
    write_ranking,
)
from rootwrite import write_root
from scoring import (
    BACKENDS,
    GPU_BATCH,
    calibrated,
    calibration,
    cross_check,
    load_model_file,
    model_macs,
    score_model,
)
from utils import GhostError, Stopwatch, log, warn

CROSS_CHECK_TOLERANCE = 1e-5  # float32 engines agree to ~1e-7 on a probability
OUTPUTS = [
    ("files in --plots-dir (figures as .png; .pdf as well with --format png,pdf):",
     analysis_outputs()),
    ("files named by options:", [
        ("--output FILE.npy or FILE.root", "every track's ghost probability in entry order, "
         "NaN where it cannot be computed; the .root tree `ghost_probability` (branch "
         "`ghost_prob`) is a friend of the input tree"),
        ("--export-cpp FILE.hpp", "the model as a header-only C++ file")]),
]


def parse_args(argv=None):
    p = Parser(__doc__, OUTPUTS)
    p.add_argument("-f", "--filename",
                   help="a .root file, or a dataset prefix from make_dataset.py (required "
                        "unless only --export-cpp)")
    add_model_options(p.add_argument_group("the model and how it runs"))
    add_analysis_options(p.add_argument_group("the analysis"))
    add_output_options(p.add_argument_group("outputs"))
    return p.parse_args(argv)


def add_model_options(p):
    p.add_argument("--model", default="ghost_model.onnx",
                   help="an .onnx model, or a .pth state dict with --config "
                        "(default ghost_model.onnx)")
    p.add_argument("--config", help="model config (.pkl or .json); needed for a .pth model "
                                            "(default: none)")
    p.add_argument("--track", choices=TRACK_TYPES,
                   help="track type: its default features (default: from the model)")
    p.add_argument("--features",
                   help="comma-separated feature branches in the model's column order "
                        "(default: from the model; for a model without metadata)")
    p.add_argument("--network", type=int, choices=(0, 1),
                   help="0: model expects normalized inputs; 1: scaling inside "
                        "(default: from the model)")
    p.add_argument("--normalize", action="store_true",
                   help="normalize the inputs with the offsets and scales recorded at "
                        "training time (automatic for network 0 on raw inputs)")
    p.add_argument("--int8", action="store_true",
                   help="the model is INT8-quantized (.pth: config with int8; .onnx: "
                        "QuantizeLinear/DequantizeLinear, run with onnxruntime)")
    p.add_argument("--nocuda", action="store_true", help="do not use CUDA")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="scoring engine: torch (an .onnx through onnx2torch) or onnxruntime; "
                        "auto (default): onnxruntime for an .onnx on the CPU, torch on a "
                        "GPU and for a .pth")
    p.add_argument("--cross-check", action="store_true",
                   help="score up to 100,000 tracks again with the other engine and report "
                        "the largest difference")
    p.add_argument("--batch", type=int,
                   help="tracks per scoring batch (default: from the model's size on the "
                        f"CPU, 4,096-65,536; {GPU_BATCH:,} on a GPU)")
    p.add_argument("--tree", default=DEFAULT_TREE, help=f"tree path (default {DEFAULT_TREE})")
    add_threads_option(p)


def add_analysis_options(p):
    p.add_argument("--working-point", default="0.99,0.95", metavar="EFFICIENCIES",
                   help="real-track efficiencies to cut at, comma-separated: each one's "
                        "threshold and ghost rejection, also vs kinematics (default "
                        "0.99,0.95; the model's own point is added)")
    p.add_argument("--thresholds",
                   help="comma-separated thresholds in [0, 1] (default: the original 26)")
    p.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="other models (.onnx, or .pth with its _config beside it) scored on "
                        "the same tracks: ROC and rejection overlaid in compare.png, a table "
                        "in comparison.csv (the limit too, where the input has it) (default: "
                        "none)")
    p.add_argument("--ranking", action="store_true",
                   help="rank the features by the loss of AUC and of rejection at 99 %% "
                        "when each is shuffled (ranking.png, ranking.csv)")
    p.add_argument("--seed", type=int, default=42,
                   help="seeds --ranking's shuffles; the rest of the analysis draws no "
                        "random numbers (default 42)")


def add_output_options(p):
    p.add_argument("--output", help="write every track's ghost probability to FILE.npy "
                                    "or FILE.root (default: none)")
    p.add_argument("--export-cpp", metavar="FILE.hpp",
                   help="also write the model as a header-only C++ file (the same as "
                        "training.py --save writes); without -f, only that")
    p.add_argument("--calibrate", nargs="?", const="model", metavar="GHOST_FRACTION",
                   help="--output probabilities calibrated to a ghost fraction (default: the "
                        "training input's, recorded in the model) instead of the raw output, "
                        "which is calibrated to the balanced mix of training")
    p.add_argument("--plots-dir", default="plots",
                   help="folder for the figures, tables and pages below (default plots)")
    add_plot_options(p, "figure")
    p.add_argument("--show", action="store_true", help="also open the plots in windows")
    p.add_argument("--no-plots", action="store_true",
                   help="write the tables, metrics.json and results.root but no figures")
    p.add_argument("--verbose", action="store_true",
                   help="also print the threshold table (accuracy, sensitivity, specificity, "
                        "... at each threshold), the best thresholds, every rejection")


def check_args(args):
    """Argument problems that need no file, reported before any work: returns the
    thresholds, the working points' efficiencies, the --features list, the figure
    formats and the --calibrate ghost fraction ("model", a number or None)."""
    if args.filename is None and args.export_cpp is None:
        raise GhostError("-f/--filename is required (or --export-cpp alone)")
    check_output_file(args.export_cpp, "--export-cpp", (".hpp", ".h", ".hh"))  # if given
    if args.batch is not None and args.batch < 1:
        raise GhostError(f"--batch must be at least 1, got {args.batch}")
    thresholds = (list(DEFAULT_THRESHOLDS) if args.thresholds is None
                  else parse_numbers(args.thresholds, "--thresholds", 0.0, 1.0))
    efficiencies = parse_numbers(args.working_point, "--working-point", 0.0, 1.0, open_=True,
                                 sort=False)
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not features:
            raise GhostError("--features is empty")
        if len(set(features)) != len(features):
            raise GhostError(f"--features repeats a name: {','.join(features)}")
    formats = parse_formats(args.format)
    calibrate = args.calibrate
    if calibrate is not None and args.output is None:
        raise GhostError("--calibrate needs --output: it calibrates the probabilities "
                         "--output writes (the analysis uses the model's own)")
    if calibrate not in (None, "model"):
        calibrate = parse_numbers(calibrate, "--calibrate", 0.0, 1.0, open_=True)
        if len(calibrate) != 1:
            raise GhostError(f"--calibrate takes one ghost fraction, got {args.calibrate!r}")
        calibrate = calibrate[0]
    check_output_file(args.output, "--output", (".npy", ".root"))
    prepare_folder(args.plots_dir, "--plots-dir", create=False)  # made once there are metrics
    sources = [] if args.filename is None else [args.filename, *dataset_files(args.filename)]
    refuse_overwriting_inputs(  # the plots folder's files too; --compare's configs: *_config.*
        [("--output", args.output), ("--export-cpp", args.export_cpp)]
        + [("--plots-dir", path) for path in analysis_files(args.plots_dir)],
        [("-f", path) for path in sources] + [("--model", args.model), ("--config", args.config)]
        + [("--compare", model) for model in args.compare or []])
    return thresholds, efficiencies, features, () if args.no_plots else formats, calibrate


@dataclass
class Scorer:
    """A model, the settings it reads the input with, and how it runs (--backend,
    --nocuda, --batch): scores any [tracks, features] array."""
    model: object              # scoring.LoadedModel
    settings: object           # inputs.Settings
    args: object               # the parsed command line (argparse.Namespace)

    def run(self, data, finite):
        """scoring.score_model's (scores, description, seconds, note, overflow)."""
        return score_model(self.model, data, finite, self.settings.normalization,
                           self.args.backend, self.args.nocuda, self.args.batch)

    def scores(self, data, finite=None):
        """Probabilities of the tracks `finite` (default: inputs.scorable's), NaN elsewhere."""
        return self.run(data, scorable(self.model, data) if finite is None else finite)[0]


@dataclass
class Scored:
    """The input read and scored: what the analysis and the outputs are made of."""
    source: object             # inputs.Source
    inp: object                # inputs.Input
    finite: np.ndarray         # tracks with every feature finite (and computable)
    scores: np.ndarray         # every track's probability, NaN where not finite
    train_scores: np.ndarray   # the train split's, on a dataset
    desc: str                  # the scorer's description
    seconds: float             # the scoring pass's
    check: dict = None         # --cross-check's result


def describe_run(args, features_flag):
    """The model and the settings to read the input with (a Scorer), and the input
    (inputs.Source), said on the console."""
    model = load_model_file(args.model, args.config, args.network, args.int8)
    source = describe_source(args.filename)
    settings = resolve_settings(model, source, args.track, features_flag, args.normalize)
    names = settings.features
    log(f"model {args.model} ({model.kind}{', INT8' if model.int8 else ''}"
        f"{', no metadata' if not model.has_metadata else ''}): "
        f"track {settings.track or '?'}, network "
        f"{'?' if settings.network is None else settings.network}, "
        f"{len(names)} features {','.join(names)}")
    return Scorer(model, settings, args), source


def score_input(args, scorer, source):
    """Read the input and score every track (NaN where a feature is not finite) and
    the train split if there is one: a Scored."""
    model, settings = scorer.model, scorer.settings
    inp, finite = load_input(source, settings, model, args.tree, args.threads)
    scores, desc, seconds, note, overflow = scorer.run(inp.data, finite)
    n_bad = int((~finite).sum())
    if overflow.any():  # from now on, like tracks with a non-finite feature
        finite &= ~overflow
        warn(overflow_warning(inp.data, overflow, finite, settings.features))
    if note:
        log(f"note: {note}")
    rate = len(inp.data) / seconds if seconds > 0 else float("inf")
    log(f"scored {len(inp.data):,} tracks in {seconds:.3f} s: {rate / 1e6:,.1f} M tracks/s "
        f"({desc})")
    check = None
    if args.cross_check:
        check = cross_check(model, inp.data, finite, scores, args.backend,
                            settings.normalization, args.nocuda)
        if check is None:
            log("cross-check: no second engine runs an INT8 .onnx model (onnx2torch cannot "
                "convert it)")
        else:
            log(f"cross-check with {check['engine']} on {check['tracks']:,} tracks: largest "
                f"difference {check['max_abs_diff']:.2e}")
            if check["max_abs_diff"] > CROSS_CHECK_TOLERANCE:
                warn(f"the two engines differ by {check['max_abs_diff']:.2e} (more than "
                     f"{CROSS_CHECK_TOLERANCE:g}): the model does not compute the same in both")
    if n_bad:
        log(nonfinite_line(n_bad, inp))
    train_scores = None if inp.train is None else scorer.scores(inp.train[0])
    return Scored(source, inp, finite, scores, train_scores, desc, seconds, check)


def compared_models(args, source, scorer):
    """--compare's models, loaded and checked against the input before any track is
    read: [(curve name, Scorer)]."""
    names = curve_names([args.model] + (args.compare or []))[1:]
    out = []
    for name, (path, config) in zip(names, compared_model_paths(args.compare or [])):
        other = load_model_file(path, config)
        theirs = resolve_settings(other, source)
        if theirs.features != scorer.settings.features:
            raise GhostError(f"--compare {path} reads features {','.join(theirs.features)}, "
                             f"not the {','.join(scorer.settings.features)} of {args.model}")
        out.append((name, Scorer(other, theirs, args)))
    return out


def compared_scores(others, s):
    """Each --compare model's (name, scores of the finite tracks, MACs), on the
    tracks of `s` (Scored)."""
    out = []
    for name, other in others:
        scores = finite_part(other.scores(s.inp.data, s.finite), s.finite)
        if bad := int((~np.isfinite(scores)).sum()):
            warn(f"--compare {other.model.path} cannot compute {bad:,} of the "
                 "tracks in float32: its curve leaves them out")
        out.append((name, scores, model_macs(other.model)))
    return out


def analyse_input(args, scorer, others, s, cuts):
    """The evaluation.Evaluation of the scored input `s` (with the --compare models
    and the limit), said on the console; None (said why) where there is nothing to
    analyse.  `cuts`: (thresholds, working points' efficiencies)."""
    inp, model = s.inp, scorer.model
    if inp.labels is None:
        log(f"metrics need labels: {args.filename} has no {LABEL!r} branch, so only the "
            "probabilities are written" + ("" if args.output else " (none asked: --output)"))
        return None
    if not s.finite.any():
        log("no track has all its features finite: nothing to analyse")
        return None
    name = curve_names([args.model] + (args.compare or []))[0]
    title = (f"{os.path.basename(args.model)} on {os.path.basename(args.filename)}"
             f" ({int(s.finite.sum()):,} tracks)")
    features = {"test": inp.data, **({"train": inp.train[0]} if inp.train else {})}
    sample = Sample(name, model.saved, model_macs(model), s.scores, inp.labels, s.finite,
                    (s.train_scores, inp.train[1]) if inp.train else None, inp.limit,
                    inp.columns, (scorer.settings.features, features))  # results.root's trees
    context = run_context(s.source, model, scorer.settings, s.finite, s)
    record = evaluate(sample, title, context, compared_scores(others, s), cuts)
    print_summary(record, args.verbose)
    return record


def feature_ranking(args, scorer, s):
    """--ranking: the permutation ranking on (up to 200,000 of) the finite, labelled
    tracks (an evaluation.Ranking), said on the console."""
    rows = np.flatnonzero(s.finite)[:200_000]
    ranking = rank_model_inputs(scorer.model, scorer.scores, s.inp.data[rows],
                                s.inp.labels[rows], scorer.settings.features, args.seed)
    log(ranking.line("feature ranking"))
    return ranking


def write_outputs(args, out, scores, record, formats, header=None):
    """--export-cpp (`header`: artifacts.model_header's), --output, the plots folder
    (report.write_analysis of `record`, the ranking): (figures kept for --show, written)."""
    written, kept = [], []
    if header is not None:
        out.save_bytes(args.export_cpp, header[0])
        written.append(f"{args.export_cpp} (C++ namespace {header[1]})")
    if args.output:
        if args.output.lower().endswith(".npy"):
            out.save_npy(args.output, scores.astype(np.float32))
        else:
            write_root(out.tmp(args.output), "ghost_probability",
                       {"ghost_prob": np.ascontiguousarray(scores, np.float32)},
                       shown=args.output)
        written.append(args.output)
    if record is not None:
        prepare_folder(args.plots_dir, "--plots-dir")
        figures = []
        if record.ranking is not None:
            write_ranking(out, args.plots_dir, record.ranking)
            if formats:
                with style() as plt:
                    figures = [record.ranking.figure(plt, record.title)]
        files, kept = write_analysis(out, args.plots_dir, record, formats, args.show, figures,
                                     args.label, inference_parts(
                                         record.context, args.plots_dir, args.filename, args.model))
        written.append(f"{args.plots_dir}/ ({len(files)} files: "
                       f"{sum(f.endswith(('.png', '.pdf')) for f in files)} figures, the "
                       "tables, metrics.json, results.root, index.html)")
    return kept, written


def main(argv=None):
    args = parse_args(argv)
    thresholds, efficiencies, features_flag, formats, calibrate = check_args(args)
    clock = Stopwatch()
    if args.filename is None:  # --export-cpp alone
        text, namespace = model_header(load_model_file(args.model, args.config, args.network,
                                                       args.int8), args.export_cpp)
        with AtomicOutputs() as out:
            out.save_bytes(args.export_cpp, text)
        log(f"wrote {args.export_cpp}: C++ namespace {namespace}, "
            "ghost_probability(const float* features)")
        return 0
    scorer, source = describe_run(args, features_flag)
    # checked now, written with the run's other outputs once it has succeeded
    header = model_header(scorer.model, args.export_cpp) if args.export_cpp else None
    calibrate = calibration(scorer.model, calibrate) if calibrate is not None else None
    others = compared_models(args, source, scorer)
    scored = score_input(args, scorer, source)
    if not (args.compare or args.ranking):
        release_features(scored.inp)
    record = analyse_input(args, scorer, others, scored, (thresholds, efficiencies))
    if args.ranking and record is not None:
        record.ranking = feature_ranking(args, scorer, scored)
    scores = scored.scores
    if calibrate is not None:
        scores = calibrated(scores, *calibrate)
        if record is not None:
            record.context["output_calibrated_to_ghost_fraction"] = calibrate[1]
        log(f"--output: probabilities calibrated to a ghost fraction of {calibrate[1]:.4f}")
    with AtomicOutputs() as out:
        kept, written = write_outputs(args, out, scores, record, formats, header)
    log(f"wrote {', '.join(written) if written else 'nothing'}; total {clock():.1f} s")
    if record is not None:
        print_headline(*analysis_headline(record, os.path.join(args.plots_dir, PAGE),
                                          args.output))
    if kept:
        pyplot(True).show()
    return 0


if __name__ == "__main__":
    run_cli(main)
