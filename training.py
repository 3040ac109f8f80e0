"""Ray Tune search for the best ghost classifier, then deployable artifacts.

    python training.py -f ../data/dataset --save

reads the arrays written by make_dataset.py and, with --save, writes the model files
and the training report (below) into --output-dir.  The console ends with the answer:
the chosen network, its test AUC and ghost rejection at its working point.
"""
import contextlib
import os
from dataclasses import replace

import provenance
import search_folder
import suggest
import training_report
from architecture import INPUT_LAYERS, default_network, normalizes_inside, refuse_normalized
from artifacts import ARTIFACT, MODEL_FILES, SavedConfig, inference_record, save_model_files
from baseline import baseline_row
from cli import Parser, Stopped, add_plot_options, parse_formats, run_cli
from dataset import dataset_files, load_dataset, load_meta, load_spectators
from features import LIMIT
from metrics import MODEL_WORKING_POINT, quality
from outputs import AtomicOutputs, FolderLock, plain_name, prepare_folder, remove_stale_temporaries
from report import PAGE, print_headline, print_quality, training_headline
from search import (
    SELECT,
    SPACES,
    Signals,
    TrialSetup,
    architectures,
    best_trial,
    check_machines,
    init_ray,
    run_search,
    trial_table,
)
from search_log import describe_params
from trainer import SCHEDULES, evaluate, predict, quantize, to_tensors
from utils import GhostError, Stopwatch, heartbeat, log, pick_device


def parse_args(argv=None):
    p = Parser(__doc__, training_report.outputs() + suggest.OUTPUTS)
    p.add_argument("-f", "--filename", required=True,
                   help="dataset prefix written by make_dataset.py")
    add_search_options(p.add_argument_group("search and training"))
    add_model_options(p.add_argument_group("model"))
    add_machine_options(p.add_argument_group("machines"))
    add_output_options(p.add_argument_group("outputs"))
    args = p.parse_args(argv)
    for name in ("epochs", "num_samples", "cpu", "trials_per_gpu", "max_macs"):
        if getattr(args, name) < 1:
            raise GhostError(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch is not None and args.batch < 1:
        raise GhostError("--batch must be at least 1")
    if args.gpu < 0 or args.int8_epochs < 1:
        raise GhostError("--gpu must be >= 0 and --int8-epochs >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise GhostError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not 0.0 < args.working_point < 1.0:
        raise GhostError(f"--working-point must be in (0, 1), got {args.working_point}")
    if args.gpu and args.nocuda:
        raise GhostError("--gpu and --nocuda contradict each other")
    if args.no_report and not args.save:
        raise GhostError("--no-report leaves the report out of what --save writes: add --save")
    args.report = args.save and not args.no_report  # whether training_report/ is written
    if args.no_plots and not args.report:
        raise GhostError("--no-plots leaves the figures out of the report --save writes: add "
                         "--save (without --no-report)")
    args.formats = () if args.no_plots else parse_formats(args.format)
    if not args.path:
        raise GhostError("--path must name a folder, got ''")
    plain_name(args.name, "--name")
    return args


def add_search_options(p):
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial (default 20)")
    p.add_argument("-n", "--num-samples", "--num_samples", type=int, default=8,
                   dest="num_samples", help="configurations to explore (default 8)")
    p.add_argument("--space", choices=SPACES, default="default",
                   help="default: 1-3 hidden layers within --max-macs, AdamW, weight decay, "
                        "--schedule, batch size; original: the seed's one-hidden-layer space "
                        "(Adam or SGD at a constant rate) (default: default)")
    p.add_argument("--max-macs", type=int, default=20000,
                   help="HLT1 budget: no trial's network costs more multiply-adds per track "
                        "(default 20000)")
    p.add_argument("--select", choices=tuple(SELECT), default="loss",
                   help="validation metric that stops trials early and picks the best "
                        "(default loss)")
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle",
                   help="learning-rate schedule of the default space (default onecycle)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: searched in 512, 1024, 2048; 2048 in the "
                        "original space)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    suggest.add_option(p)
    p.add_argument("--baseline", action="store_true",
                   help="also fit gradient-boosted trees (scikit-learn) on the same split, "
                        "shown beside the network on the test split")


def add_model_options(p):
    p.add_argument("--network", type=int, choices=(0, 1), default=None,
                   help="0: plain MLP on normalized data, 1: MLP with embedded "
                        "input scaling on raw data (default: chosen from the dataset)")
    p.add_argument("--inputs", choices=INPUT_LAYERS, default="standard",
                   help="network 1's first layer: standard (signed log1p on heavy tails, "
                        "then standardized) or minmax (the original) (default standard)")
    p.add_argument("--working-point", type=float, default=MODEL_WORKING_POINT,
                   metavar="EFFICIENCY",
                   help="the model's working point: its threshold (a track is a ghost when "
                        "p > threshold) keeps this fraction of the validation split's real "
                        "tracks; it is the `threshold` of every file written (config, ONNX "
                        "metadata, C++ headers) (default 0.99)")
    p.add_argument("--threshold", type=float, default=None,
                   help="the cut of the accuracy column only (console table, the config's "
                        "metrics), e.g. 0.5 as in the original study; never the model's "
                        "threshold (default: the working point's threshold)")
    p.add_argument("--int8", action="store_true",
                   help="quantization-aware fine-tuning of the best model to INT8")
    p.add_argument("--int8-epochs", type=int, default=3,
                   help="epochs of INT8 quantization-aware fine-tuning (default 3)")


def add_machine_options(p):
    p.add_argument("--cpu", type=int, default=os.cpu_count(),
                   help="CPU cores for the search; one trial per core (default all)")
    p.add_argument("--gpu", type=int, default=0,
                   help="GPUs for the search, shared by --trials-per-gpu trials each")
    p.add_argument("--trials-per-gpu", type=int, default=4,
                   help="trials sharing one GPU with --gpu (default 4)")
    p.add_argument("--cuda", type=int, default=None,
                   help="CUDA device for the final evaluation and INT8 fine-tuning (default 0 "
                        "where CUDA is available)")
    p.add_argument("--nocuda", action="store_true", help="never use CUDA")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (host:port) (default: start one here)")


def add_output_options(p):
    p.add_argument("--save", action="store_true",
                   help="write the model files (and the search's report in "
                        "OUTPUT_DIR/training_report)")
    p.add_argument("--output-dir", default=".", help="where --save writes (default .)")
    p.add_argument("--no-report", action="store_true",
                   help="with --save, the model files alone: no training_report folder (its "
                        "figures and tables take longer than a small search)")
    p.add_argument("--no-plots", action="store_true",
                   help="with --save, the report without figures: its tables, metrics.json, "
                        "results.root and pages")
    add_plot_options(p, "the report's figure")
    search_folder.add_options(p)


def load_data(prefix, batch):
    """The three splits as numpy arrays, the DatasetMeta make_dataset.py wrote, and
    the test split's spectators (the generator's truth_llr, if any)."""
    splits = load_dataset(prefix)
    n_train, width = splits["train"][0].shape
    meta = load_meta(prefix, width)
    largest = batch or 2048
    if n_train < largest:
        raise GhostError(f"the training split holds {n_train} tracks, fewer than one "
                         f"batch of {largest}: use a smaller --batch")
    if not meta.features:
        meta.features = [f"f{i}" for i in range(width)]
    return splits, meta, load_spectators(prefix, "test", meta)


def check_learnable(args, splits, n_features):
    """A search never trains on what cannot be learned, checked before Ray starts:
    both classes in every split, a feature that varies in the training split, and
    an architecture within --max-macs."""
    for split, (_, labels) in splits.items():
        ghosts, n = int(labels.sum()), len(labels)
        if 0 < ghosts < n:
            continue
        what = "no tracks" if n == 0 else f"only {'ghost' if ghosts else 'real'} tracks"
        raise GhostError(f"the {split} split of {args.filename} holds {what}: a search needs "
                         "ghost and real tracks in every split; remake the dataset")
    train = splits["train"][0]
    if (train.min(axis=0) == train.max(axis=0)).all():
        raise GhostError(f"every feature of the training split of {args.filename} is "
                         "constant: there is nothing to learn from")
    architectures(n_features, args.max_macs)


def resolve_network(requested, inputs, meta):
    """Network 1 takes raw data, network 0 normalized data; refuse the mix-ups."""
    network = requested if requested is not None else default_network(meta.normalized)
    refuse_normalized(network, meta.normalized, "this dataset is already normalized",
                      "remake it without --normalize or use --network 0")
    if normalizes_inside(network) and inputs == "minmax" and meta.normalization is None:
        raise GhostError("network 1 needs the normalization recorded in the dataset's "
                         "_features.json; remake the dataset with make_dataset.py")
    if normalizes_inside(network) and inputs == "standard" and meta.standardization is None:
        raise GhostError("network 1's standardized inputs need the standardization recorded "
                         "in the dataset's _features.json (a dataset of an older toolkit): "
                         "remake it with make_dataset.py, or use --inputs minmax")
    if not normalizes_inside(network) and not meta.normalized:
        raise GhostError("network 0 expects normalized inputs, but this dataset is raw: "
                         "remake it with make_dataset.py --normalize or use --network 1")
    return network


def make_setup(args, meta, splits):
    """What every trial shares: the network, its inputs, the class weights."""
    network = resolve_network(args.network, args.inputs, meta)
    weights = meta.class_weights
    return TrialSetup(
        network=network, n_features=splits["train"][0].shape[1],
        inputs=args.inputs if normalizes_inside(network) else "minmax",
        normalization=meta.normalization, standardization=meta.standardization,
        epochs=args.epochs, seed=args.seed, threshold=args.threshold, use_gpu=args.gpu > 0,
        batch=args.batch or 2048, schedule=args.schedule, select=args.select,
        weights=(weights["real"], weights["ghost"]) if weights else None,
        **({"derived": tuple(meta.derived), "branches": tuple(meta.features)}
           if meta.derived and normalizes_inside(network) else {}))


def prepare_outputs(args, locks):
    """Every output location checked, and locked against a concurrent run, before
    Ray starts: the Ray folder of this search and, with --save, the model folder
    (where stale temporaries of killed runs are removed)."""
    prepare_folder(args.path, "--path")
    locks.enter_context(FolderLock(args.path, "--path", name=f".{args.name}.lock"))
    if args.save:
        prepare_folder(args.output_dir, "--output-dir")
        locks.enter_context(FolderLock(args.output_dir, "--output-dir"))
        remove_stale_temporaries(args.output_dir)


def run_search_step(args, splits, setup, record, signals):
    """The Ray Tune search: the best trial's hyperparameters, weights and epoch, and
    every trial's summary.  Ray runs only here; torch is not imported in this process
    before."""
    try:
        log("starting Ray ...")
        with heartbeat("starting Ray"):
            init_ray(args)
        signals.install()  # ray.init put its own SIGTERM handler
        with signals.search():
            results = run_search(args, {s: splits[s] for s in ("train", "valid")}, setup,
                                 record)
        return (*best_trial(results, setup.select), trial_table(results, setup.select))
    finally:
        import ray
        ray.shutdown()
        signals.install()  # ray.shutdown reset SIGTERM behind Python's back


def finish(args, splits, meta, setup, params, state):
    """The best model evaluated on the validation and test splits, and its INT8
    version with --int8: ([(file stem, model, SavedConfig)], table rows, their
    probabilities {"network" / "INT8": {split: array}})."""
    import torch

    from models import build_model
    device = pick_device(args.nocuda, args.cuda)
    torch.manual_seed(args.seed)
    config, settings = setup.model_config(params), setup.train_settings(params)
    model = build_model(config)
    model.load_state_dict(state)
    model = model.to(device).eval()
    valid, test = (to_tensors(model, splits[s], device) for s in ("valid", "test"))
    wanted = splits if args.report else ("valid", "test")  # the report wants every split
    scores = {"network": {s: predict(model, splits[s][0], device) for s in wanted}}
    record = inference_record(meta, splits, scores["network"], args.working_point)
    cut = accuracy_cut(args, record)
    rows = {"validation": evaluate(model, *valid, cut, setup.weights),
            "test": evaluate(model, *test, cut, setup.weights)}
    saved = SavedConfig(model=config, track=meta.track or "", features=meta.features,
                        training=settings, metrics=dict(rows), **record,
                        provenance=provenance.record(
                            args.filename, meta, search_record(args), dict(params),
                            rows["test"], dataset_files(args.filename)))
    artifacts = [(ARTIFACT, model, saved)]
    if args.int8:  # same input layer: the scaled test tensors serve both
        log(f"fine-tuning the INT8 network: {args.int8_epochs} epochs on "
            f"{len(splits['train'][1]):,} tracks ...")
        with heartbeat("fine-tuning the INT8 network"):
            qmodel = quantize(model, settings, splits["train"], device, args.int8_epochs,
                              setup.weights)
        scores["INT8"] = {s: predict(qmodel, splits[s][0], device) for s in wanted}
        qrecord = inference_record(meta, splits, scores["INT8"], args.working_point)
        rows["test (INT8)"] = evaluate(qmodel, *test, accuracy_cut(args, qrecord),
                                       setup.weights)
        qsaved = replace(saved, model=replace(config, int8=True),
                         metrics={**saved.metrics, "test": rows["test (INT8)"]}, **qrecord,
                         provenance={**saved.provenance, "test_metrics": provenance.record(
                             args.filename, meta, {}, {}, rows["test (INT8)"])["test_metrics"]})
        artifacts.append((f"{ARTIFACT}_int8", qmodel, qsaved))
    return artifacts, rows, scores


def search_record(args):
    """The search's settings, for the provenance."""
    return {"space": args.space, "trials": args.num_samples, "epochs": args.epochs,
            "max_macs": args.max_macs, "select": args.select, "schedule": args.schedule,
            "seed": args.seed, "inputs": args.inputs}


def accuracy_cut(args, record):
    """The threshold of the accuracy column: --threshold, else the model's own."""
    return record["threshold"] if args.threshold is None else args.threshold


def references(args, splits, setup, spectators):
    """Table rows to measure the network against on the test split: the baseline
    (with --baseline) and the known optimum (where the dataset has it); and the
    baseline's probabilities per split."""
    rows, scores = {}, {}
    if args.baseline:
        rows["baseline (test)"], scores = baseline_row(
            splits, setup.weights, args.seed, setup.derived, setup.branches, args.threshold,
            args.working_point)
    if LIMIT in spectators:
        rows["limit (test)"] = quality(spectators[LIMIT], splits["test"][1].ravel())
    return rows, scores


def save(args, artifacts, report, trials, best):
    """Every model's files and the report folder (None: --no-report), renamed together."""
    folder = os.path.join(args.output_dir, training_report.REPORT)
    if report is not None:
        prepare_folder(folder, "the report folder")
    log("writing the model files"
        + (f" and the training report in {folder}" if report is not None else "") + " ...")
    with AtomicOutputs() as out:
        for stem, model, saved in artifacts:
            save_model_files(out, args.output_dir, stem, model.cpu(), saved)
        files = [] if report is None else training_report.write(
            out, folder, report, trials, best, args.formats, args.seed, args.label)
    log(f"saved {ARTIFACT}.pth, {ARTIFACT}_config.pkl/.json, {ARTIFACT}.onnx, {ARTIFACT}.hpp"
        + (f" and {ARTIFACT}_int8.*" if len(artifacts) > 1 else "")
        + f" in {os.path.abspath(args.output_dir)}; " + (f"the report ({len(files)} files, "
        f"index.html) in {folder}" if report is not None else "no report (--no-report)"))


def main(argv=None):
    args = parse_args(argv)
    with Signals() as signals:
        try:
            run(args, signals)
        except Stopped as e:  # run_cli: the outcome in one line, exit 128 + signal
            raise Stopped(e.signum, signals.outcome(e, search_folder.folder_of(args)))


def run(args, signals):
    clock = Stopwatch()
    splits, meta, spectators = load_data(args.filename, args.batch)
    if args.suggest_derived is not None:  # no search: which derived inputs to add
        return suggest.run(args, splits, meta)
    setup = make_setup(args, meta, splits)
    check_learnable(args, splits, setup.n_inputs())
    check_machines(args)
    record = search_folder.check(args, setup.network, splits)
    with contextlib.ExitStack() as locks:
        prepare_outputs(args, locks)
        log(f"dataset {args.filename}: {setup.n_features} features"
            + (f" and {len(setup.derived)} derived inputs ("
               + ", ".join(d.text() for d in setup.derived) + ")" if setup.derived else "")
            + ", "
            + ", ".join(f"{s} {len(y):,}" for s, (_, y) in splits.items())
            + f" ({meta.mix()}); network {setup.network}"
            + (f" ({setup.inputs} inputs)" if normalizes_inside(setup.network) else "")
            + f"; {args.num_samples} trials x {args.epochs} epochs, select by {args.select}")
        params, state, epoch, trials = run_search_step(args, splits, setup, record, signals)
        log(f"search done in {clock():.1f} s; best: "
            f"{describe_params(params, setup.n_inputs())} (epoch {epoch})")
        artifacts, rows, scores = finish(args, splits, meta, setup, params, state)
        extra, baseline = references(args, splits, setup, spectators)
        rows = {**rows, **extra}
        cut = (f"threshold {args.threshold:g} (--threshold)" if args.threshold is not None else
               f"each model's threshold, its {args.working_point:.1%} working point")
        print_quality(rows, meta.mix(), cut)
        for stem, _, saved in artifacts:
            log(f"threshold of {stem}: {saved.threshold!r} (ghost when p > threshold; keeps "
                f"{args.working_point:.1%} of the validation split's real tracks)")
        for _, _, saved in artifacts:  # "baseline (test)" -> "baseline"
            saved.metrics.update({name.split()[0]: row for name, row in extra.items()})
        if args.save:
            model = artifacts[0][1]
            report = None if not args.report else training_report.ReportInput(
                splits, meta, spectators, artifacts[0][2],
                {**scores, **({"baseline": baseline} if baseline else {})},
                lambda x: predict(model, x, inputs=True), args.filename,
                [a[0] for a in artifacts], rows,
                headline(args, splits, meta, artifacts, scores, rows, page=False), cut)
            save(args, artifacts, report, trials, params)
    log(f"total time {clock():.1f} s")
    print_headline(*headline(args, splits, meta, artifacts, scores, rows))


def headline(args, splits, meta, artifacts, scores, rows, page=True):
    """The answer (report.training_headline): the chosen network, each model's test
    AUC and ghost rejection at its own working point (the validation split's cut),
    the baseline and the limit, the files and (with `page`) the report's page."""
    models = [(name, rows[row]["auc"], scores[name]["test"], saved.working_point)
              for (_, _, saved), name, row in zip(artifacts, ("network", "INT8"),
                                                  ("test", "test (INT8)"))]
    references = [(name.removesuffix(" (test)"), row["auc"], row["rejection@0.99"])
                  for name, row in rows.items() if name in ("baseline (test)", "limit (test)")]
    where = args.output_dir if page else ".."  # the page names no path of the machine
    files = (f"model files in {where}: {ARTIFACT}{{{','.join(MODEL_FILES)}}}"
             + (f", {ARTIFACT}_int8.*" if len(artifacts) > 1 else "") if args.save
             else "no files written (--save writes the model and the report)")
    page = (os.path.join(args.output_dir, training_report.REPORT, PAGE)
            if args.report and page else None)
    return training_headline(artifacts[0][2].model, splits["test"][1].ravel() > 0.5,
                             meta.mix(), models, references, files, page)


if __name__ == "__main__":
    run_cli(main)
