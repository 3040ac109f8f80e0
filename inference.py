"""Score tracks with a trained ghost classifier and analyse the result.

    python inference.py -f ../data/Data.root --model ghost_model.onnx --track matching
    python inference.py -f ../data/dataset --model ghost_model.pth --config ghost_model_config.pkl

-f is one or more .root files or globs (every entry, in entry order, file after file:
one analysis; --output-dir writes a friend file per input, --address scores the files
as tasks on a Ray cluster) or a dataset prefix of make_dataset.py (its test split; its
train split for the overtraining check).  The model's metadata or
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
from inputs import describe_source, finite_part, resolve_settings, scorable
from many_files import FRIEND_SUFFIX, check_many, file_entries, score_files, write_friends
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
    ScoringPass,
    calibrated,
    calibration,
    load_model_file,
    model_macs,
    score_model,
)
from streaming import CROSS_CHECK_TRACKS, RANKING_TRACKS, Scored, cross_check, nonfinite_line
from utils import GhostError, Stopwatch, log, warn

THREADS_NOTE = ("inference.py reads a .root input serially, chunk by chunk, so that its memory "
                "does not grow with the file")
OUTPUTS = [
    ("files in --plots-dir (figures as .png; .pdf as well with --format png,pdf):",
     analysis_outputs()),
    ("files named by options:", [
        ("--output FILE.npy or FILE.root", "every track's ghost probability in entry order, "
         "NaN where it cannot be computed; the .root tree `ghost_probability` (branch "
         f"`ghost_prob`) is a friend of the input tree; --output-dir DIR writes one per "
         f"input, DIR/<input stem>{FRIEND_SUFFIX}"),
        ("--export-cpp FILE.hpp", "the model as a header-only C++ file")]),
]


def parse_args(argv=None):
    p = Parser(__doc__, OUTPUTS)
    p.add_argument("-f", "--filename", nargs="+", metavar="FILE",
                   help=".root files or globs ('prod/*.root'), scored as one input, or a "
                        "dataset prefix from make_dataset.py (required unless only "
                        "--export-cpp)")
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
    add_threads_option(p, help=THREADS_NOTE + " (accepted, no effect; default: serial)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="score the .root files as Ray tasks, a file each, on the Ray "
                        "cluster there (`ray start --head`); the files must be readable at "
                        "the same path on every node (default: none, this process)")


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
    p.add_argument("--output-dir", metavar="DIR",
                   help=f"write each input's friend file DIR/<input stem>{FRIEND_SUFFIX} "
                        "(default: none)")
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
    """Argument problems, reported before any work: returns the thresholds, the
    working points' efficiencies, the --features list, the figure formats, the
    --calibrate ghost fraction ("model", a number or None) and the input (an
    inputs.Source, None with --export-cpp alone) with its friend files."""
    if args.filename is None and args.export_cpp is None:
        raise GhostError("-f/--filename is required (or --export-cpp alone)")
    check_output_file(args.export_cpp, "--export-cpp", (".hpp", ".h", ".hh"))  # if given
    if args.batch is not None and args.batch < 1:
        raise GhostError(f"--batch must be at least 1, got {args.batch}")
    if args.threads is not None:
        log(f"note: --threads has no effect here: {THREADS_NOTE}")
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
    if calibrate is not None and args.output is None and args.output_dir is None:
        raise GhostError("--calibrate needs --output or --output-dir: it calibrates the "
                         "probabilities they write (the analysis uses the model's own)")
    if calibrate not in (None, "model"):
        calibrate = parse_numbers(calibrate, "--calibrate", 0.0, 1.0, open_=True)
        if len(calibrate) != 1:
            raise GhostError(f"--calibrate takes one ghost fraction, got {args.calibrate!r}")
        calibrate = calibrate[0]
    check_output_file(args.output, "--output", (".npy", ".root"))
    prepare_folder(args.plots_dir, "--plots-dir", create=False)  # made once there are metrics
    source = None if args.filename is None else describe_source(args.filename)
    friends = [] if source is None else check_many(args, source)
    sources = ([] if source is None else source.files if source.kind == "root"
               else [source.path, *dataset_files(source.path)])
    refuse_overwriting_inputs(  # the plots folder's files too; --compare's configs: *_config.*
        [("--output", args.output), ("--export-cpp", args.export_cpp)]
        + [("--output-dir", path) for path in friends]
        + [("--plots-dir", path) for path in analysis_files(args.plots_dir)],
        [("-f", path) for path in sources] + [("--model", args.model), ("--config", args.config)]
        + [("--compare", model) for model in args.compare or []])
    return (thresholds, efficiencies, features, () if args.no_plots else formats, calibrate,
            (source, friends))


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

    def scoring_pass(self):
        """A scoring.ScoringPass of the model, for an input in chunks."""
        return ScoringPass(self.model, self.settings.normalization, self.args.backend,
                           self.args.nocuda, self.args.batch)


def describe_run(args, features_flag, source):
    """The model and the settings to read the input (inputs.Source) with (a Scorer),
    said on the console."""
    model = load_model_file(args.model, args.config, args.network, args.int8)
    settings = resolve_settings(model, source, args.track, features_flag, args.normalize)
    names = settings.features
    log(f"model {args.model} ({model.kind}{', INT8' if model.int8 else ''}"
        f"{', no metadata' if not model.has_metadata else ''}): "
        f"track {settings.track or '?'}, network "
        f"{'?' if settings.network is None else settings.network}, "
        f"{len(names)} features {','.join(names)}")
    return Scorer(model, settings, args)


def score_input(args, scorer, others, source) -> Scored:
    """Read the input and score every track (NaN where a feature is not finite) with
    the model and the --compare models (`others`) chunk by chunk, and the train split
    if there is one: a Scored (streaming.read_and_score)."""
    model, settings = scorer.model, scorer.settings
    keep = max(RANKING_TRACKS if args.ranking else 0,
               CROSS_CHECK_TRACKS if args.cross_check else 0)
    scored, n_bad = score_files(args, source, [scorer] + [other for _, other in others], keep)
    if args.cross_check:
        scored.check = cross_check(scored, model, args.backend, settings.normalization,
                                   args.nocuda)
    if n_bad:
        log(nonfinite_line(n_bad, scored.inp))
    if scored.inp.train is not None:
        scored.train_scores = scorer.scores(scored.inp.train[0])
    return scored


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
    tracks of `s` (Scored: scored with the model's, s.compared)."""
    out = []
    for (name, other), every in zip(others, s.compared or []):
        scores = finite_part(every, s.finite)
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
        log(f"metrics need labels: {s.source.path} has no {LABEL!r} branch, so only the "
            "probabilities are written" + ("" if args.output or args.output_dir
                                           else " (none asked: --output, --output-dir)"))
        return None
    if not s.finite.any():
        log("no track has all its features finite: nothing to analyse")
        return None
    name = curve_names([args.model] + (args.compare or []))[0]
    several = s.source.kind == "root" and len(s.source.files) > 1
    shown = s.source.path if several else os.path.basename(s.source.path)
    title = (f"{os.path.basename(args.model)} on {shown}"
             f" ({int(s.finite.sum()):,} tracks)")
    features = {"test": inp.data, **({"train": inp.train[0]} if inp.train else {})}
    sample = Sample(name, model.saved, model_macs(model), s.scores, inp.labels, s.finite,
                    (s.train_scores, inp.train[1]) if inp.train else None, inp.limit,
                    inp.columns, (scorer.settings.features, features),  # results.root's trees
                    inp.bins)
    context = run_context(s.source, model, scorer.settings, s.finite, s)
    record = evaluate(sample, title, context, compared_scores(others, s), cuts)
    print_summary(record, args.verbose)
    return record


def feature_ranking(args, scorer, s):
    """--ranking: the permutation ranking on (up to RANKING_TRACKS of) the first
    finite, labelled tracks (an evaluation.Ranking), said on the console."""
    rows, data = s.first_finite(RANKING_TRACKS)
    ranking = rank_model_inputs(scorer.model, scorer.scores, data, s.inp.labels[rows],
                                scorer.settings.features, args.seed)
    log(ranking.line("feature ranking"))
    return ranking


def write_outputs(args, out, scores, record, formats, header=None, friends=None):
    """--export-cpp (`header`: artifacts.model_header's), --output, --output-dir
    (`friends`: (the input, its friend files, their entries)), the plots folder
    (report.write_analysis of `record`, the ranking): (figures kept for --show, written)."""
    written, kept = [], []
    if friends and friends[1]:
        written.append(write_friends(out, args.output_dir, friends[1], scores, friends[2]))
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
                                         record.context, args.plots_dir, friends[0].path,
                                         args.model))
        written.append(f"{args.plots_dir}/ ({len(files)} files: "
                       f"{sum(f.endswith(('.png', '.pdf')) for f in files)} figures, the "
                       "tables, metrics.json, results.root, index.html)")
    return kept, written


def main(argv=None):
    args = parse_args(argv)
    thresholds, efficiencies, features_flag, formats, calibrate, (source, friends) = \
        check_args(args)
    clock = Stopwatch()
    if args.filename is None:  # --export-cpp alone
        text, namespace = model_header(load_model_file(args.model, args.config, args.network,
                                                       args.int8), args.export_cpp)
        with AtomicOutputs() as out:
            out.save_bytes(args.export_cpp, text)
        log(f"wrote {args.export_cpp}: C++ namespace {namespace}, "
            "ghost_probability(const float* features)")
        return 0
    scorer = describe_run(args, features_flag, source)
    # checked now, written with the run's other outputs once it has succeeded
    header = model_header(scorer.model, args.export_cpp) if args.export_cpp else None
    calibrate = calibration(scorer.model, calibrate) if calibrate is not None else None
    others = compared_models(args, source, scorer)
    entries = file_entries(source.files, args.tree, scorer.settings.features)[0] if friends else []
    scored = score_input(args, scorer, others, source)
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
        kept, written = write_outputs(args, out, scores, record, formats, header,
                                      (source, friends, entries))
    log(f"wrote {', '.join(written) if written else 'nothing'}; total {clock():.1f} s")
    if record is not None:
        print_headline(*analysis_headline(record, os.path.join(args.plots_dir, PAGE),
                                          args.output))
    if kept:
        pyplot(True).show()
    return 0


if __name__ == "__main__":
    run_cli(main)
