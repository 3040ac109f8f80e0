"""ROOT file(s) from Allen's kalman_validator -> split numpy datasets.

    python make_dataset.py -f ../data/Data.root --output ../data/dataset --track matching

Keeps every track at the file's natural ghost fraction, with class weights that balance
the training loss (--balance weights), or as many real tracks as ghosts (--balance
subsample, the original); splits each class 60/20/20 into train, valid and test.
"""
import os

import numpy as np

from cli import (
    FORMATS,
    Parser,
    add_plot_options,
    add_threads_option,
    expand_inputs,
    parse_formats,
    run_cli,
)
from dataset import (
    SPLITS,
    DatasetMeta,
    dataset_files,
    dataset_outputs,
    meta_path,
    write_dataset,
    write_spectators,
)
from derived import SYNTAX, Extended, compute_all, fit_all, parse_all
from features import (
    DEFAULT_TREE,
    DERIVED,
    HEAVY_TAILED,
    LABEL,
    LIMIT,
    TRACK_TYPES,
    MinMax,
    Standardize,
    features_for,
    other_track_branches,
    track_mismatch,
    unfilled,
)
from outputs import (
    AtomicOutputs,
    Pattern,
    check_output_file,
    prepare_folder,
    refuse_overwriting_inputs,
)
from pages import PAGE, Parts, dataset_parts
from provenance import file_record
from report import dataset_headline, print_headline, write_feature_figures
from rootio import MATRIX, read_root
from rootstream import stream_root
from utils import GhostError, Stopwatch, log

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, valid, test, per class
BALANCES = ("weights", "subsample")
# Read beside the features where every input has them, never fed to a model: the
# generator's optimum and the slopes, for the performance vs eta.
SPECTATORS = (LIMIT, "tx", "ty")
MIN_TRACKS_PER_CLASS = 10
CHUNK_ENTRIES = 1 << 20  # the first read's chunk: 14 float32 columns take 59 MB
OUTPUTS = [
    ("files (PREFIX = --output):", dataset_outputs()),
    ("files in --plots-dir with --plot (figures as .png; .pdf as well with --format png,pdf):",
     [("{" + ",".join(features_for(t)) + "}.png", f"with --track {t}: one figure per feature, "
       "ghosts vs real tracks") for t in TRACK_TYPES]
     + [("{" + ",".join(d.split(":=")[0].strip() for d in DERIVED[t]) + "}.png",
         f"with --track {t}: one figure per default derived input (and per --derived's), "
         "titled name := expression") for t in TRACK_TYPES]
     + [(PAGE, "the page: the data set, its files and every figure")]),
]


def parse_args(argv=None):
    p = Parser(__doc__, OUTPUTS)
    p.add_argument("-f", "--filename", nargs="+", required=True,
                   help="input ROOT file(s) or glob(s), read as one dataset")
    p.add_argument("--output", required=True, help="prefix of the output files")
    p.add_argument("--track", required=True, choices=TRACK_TYPES,
                   help="track type: selects the feature branches")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="fraction of the ghosts to keep, in (0, 1] (with --balance "
                        "weights: of each class) (default 1)")
    p.add_argument("--balance", choices=BALANCES, default="weights",
                   help="weights: keep every track, each split at the file's ghost "
                        "fraction, and record class weights that balance the training "
                        "loss; subsample: as many real tracks as ghosts, drawn at random "
                        "(the original) (default weights)")
    p.add_argument("--plot", action="store_true",
                   help="one figure per feature, ghosts vs real tracks, and index.html")
    p.add_argument("--plots-dir", default="plots", help="folder for --plot (default plots)")
    p.add_argument("--plot-transformed", action="store_true",
                   help="with --plot: the features as network 1 sees them, after the "
                        "transform and standardization")
    add_plot_options(p, "--plot's figure")
    p.add_argument("--normalize", action="store_true",
                   help="min-max normalize the features into [0, 1] (for network 0, which "
                        "takes no derived inputs)")
    p.add_argument("--derived", action="append", default=[], metavar="'NAME := EXPR'",
                   help="a derived input network 1 computes from the features, beside the "
                        f"track type's defaults (repeatable; one of the same name replaces a "
                        f"default): {SYNTAX}")
    p.add_argument("--no-derived", action="store_true",
                   help="without the track type's default derived inputs (only --derived's)")
    p.add_argument("--tree", default=DEFAULT_TREE, help=f"tree path (default {DEFAULT_TREE})")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    add_threads_option(p)
    args = p.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        raise GhostError(f"--fraction must be in (0, 1], got {args.fraction}")
    args.formats = parse_formats(args.format)
    if args.normalize and args.derived:
        raise GhostError("--derived needs network 1's first layer, but --normalize makes "
                         "inputs for network 0: leave out one of them")
    return args


def derived_inputs(args, names):
    """The derived inputs (derived.Derived, not yet fitted): the track type's defaults
    (none with --no-derived or --normalize), then --derived's, a user's replacing a
    default of the same name; GhostError naming a bad expression."""
    try:
        users = parse_all(args.derived, names)
        defaults = [] if args.no_derived or args.normalize else parse_all(DERIVED[args.track],
                                                                          names)
    except ValueError as e:
        raise GhostError(f"--derived: {e}")
    mine = {d.name for d in users}
    return [d for d in defaults if d.name not in mine] + users


def check_outputs(args, files):
    """Every output location before the long read: --output a prefix of files that
    can be written, --plots-dir (with --plot) a folder, and no output replaces one of
    the input `files`."""
    check_output_file(args.output, "--output")
    outputs = [("--output", path) for path in dataset_files(args.output)]
    if args.plot:
        prepare_folder(args.plots_dir, "--plots-dir", create=False)
        outputs += [("--plots-dir", os.path.join(args.plots_dir, PAGE))] + [
            ("--plots-dir", Pattern(os.path.join(args.plots_dir, f"*.{fmt}"))) for fmt in FORMATS]
    refuse_overwriting_inputs(outputs, [("-f", path) for path in files])
    if args.plot:
        prepare_folder(args.plots_dir, "--plots-dir")


def clean(columns, names, derived=()):
    """Which tracks have their features, derived inputs and label all finite (bool
    [tracks]), and the tracks dropped per feature or derived input ({name: count},
    only those with some).  A residual's line is fitted later (on the train split):
    its finiteness is that of y - x until then."""
    finite = np.ones(len(columns[LABEL]), dtype=bool)
    dropped = {}
    inputs = [(name, None) for name in names + [LABEL]] + [(d.name, d) for d in derived]
    for name, d in inputs:  # a derived input's values only while its check runs
        ok = np.isfinite(columns[name] if d is None else d.unfitted_values(columns, names))
        if (n_bad := int((~ok).sum())):
            dropped[name] = n_bad
        finite &= ok
    return finite, dropped


def scan_tracks(files, tree, track, names, derived):
    """The first of two reads, CHUNK_ENTRIES at a time (rootstream.stream_root), keeps
    of each track only its label, NaN where it is dropped (a feature, derived input
    or the label not finite): (float32 [tracks], the tracks dropped per feature or
    derived input, in clean's order).  An empty tree, a feature never finite, the
    wrong track type (features 0 for every track) or a label not 0 or 1 is an
    error."""
    where = in_words(files)
    inputs = names + [LABEL] + [d.name for d in derived]
    bad = dict.fromkeys(inputs, 0)
    labels, never, zero, odd = [], set(names), set(names), []

    def consume(columns):  # from inside ROOT's event loop: errors wait for its end
        finite, dropped = clean(columns, names, derived)
        for name, n in dropped.items():
            bad[name] += n
        never.intersection_update(n for n in names if not np.isfinite(columns[n]).any())
        zero.intersection_update(unfilled(columns, names))
        odd.append(not np.isin(columns[LABEL][finite], (0.0, 1.0)).all())
        labels.append(np.where(finite, columns[LABEL], np.float32(np.nan)))
    read = names + [LABEL]
    stream_root(files, tree, read, CHUNK_ENTRIES, lambda first, total, arrays: consume(
        {c: arrays[MATRIX][:, j] for j, c in enumerate(read)}))
    if not labels:
        raise GhostError(f"no tracks to read: tree {tree} is empty in {where}")
    if never:
        raise GhostError(f"features {', '.join(n for n in names if n in never)} are NaN or "
                         f"inf for every track in {where}: no track can be used")
    if zero:
        others = read_root(files, tree, [], optional=other_track_branches(track))
        raise GhostError(track_mismatch(track, [n for n in names if n in zero], others))
    if any(odd):
        raise GhostError(f"branch {LABEL!r} holds values other than 0 and 1 in {where}")
    return np.concatenate(labels), {name: n for name, n in bad.items() if n}


def row_map(n, parts):
    """Each of n entries' row in arrays that hold the entries of `parts` (arrays of
    entry numbers), part after part: an int per entry, -1 for none (rootio.read_root's
    `rows`)."""
    total = sum(len(p) for p in parts)
    rows = np.full(n, -1, dtype=np.int32 if total < 2**31 else np.int64)
    start = 0
    for part in parts:
        rows[part] = np.arange(start, start + len(part))
        start += len(part)
    return rows


def balance_and_split(labels, fraction, balance, rng, where):
    """Row indices of each split.  subsample: the ghosts (times fraction) and as many
    real tracks drawn at random; weights: every track of each class (times
    fraction).  Each class is split 60/20/20, each split shuffled."""
    ghosts, reals = np.flatnonzero(labels == 1.0), np.flatnonzero(labels == 0.0)
    if len(ghosts) == 0:
        raise GhostError(f"no ghost tracks left after cleaning {where}: cannot make a dataset")
    if len(reals) == 0:
        raise GhostError(f"no real tracks left after cleaning {where}: cannot make a dataset")
    n_ghost = int(round(len(ghosts) * fraction))
    if balance == "subsample":
        sizes = [min(n_ghost, len(reals))] * 2
    else:
        sizes = [n_ghost, int(round(len(reals) * fraction))]
    if min(sizes) < MIN_TRACKS_PER_CLASS:
        raise GhostError(f"too few tracks: {min(sizes)} in a class after "
                         f"{'balancing' if balance == 'subsample' else 'cleaning'} "
                         f"(need at least {MIN_TRACKS_PER_CLASS})")
    parts = {s: [] for s in SPLITS}
    for cls, n in zip((ghosts, reals), sizes):
        cuts = np.cumsum([int(n * f) for f in SPLIT_FRACTIONS[:-1]])
        chosen = rng.choice(cls, size=n, replace=False)
        for split, idx in zip(SPLITS, np.split(chosen, cuts)):
            parts[split].append(idx)
    return {s: rng.permutation(np.concatenate(parts[s])) for s in SPLITS}


def class_weights(train_labels):
    """Per-class loss weights that make both classes count equally in training:
    n / (2 n_class) on the train split."""
    n, n_ghost = len(train_labels), float(train_labels.sum())
    return {"ghost": n / (2 * n_ghost), "real": n / (2 * (n - n_ghost))}


def in_words(files):
    """The input files for an error message: `a.root`, or `a.root and 3 more files`."""
    return files[0] + (f" and {len(files) - 1} more files" if len(files) > 1 else "")


def fit_derived(derived, splits, names, where):
    """The derived inputs with their residual lines fitted on the real tracks of the
    train split (GhostError if one cannot be)."""
    train, labels = splits["train"]
    columns = {name: train[:, j] for j, name in enumerate(names)}
    try:
        return fit_all(derived, columns, labels[:, 0] == 0.0, names)
    except ValueError as e:
        raise GhostError(f"{e} in {where}")


def fit_scalings(splits, names, where, derived=()):
    """(MinMax, Standardize) of the train split's features and derived inputs, both
    recorded (network 1 embeds either); a feature float32 cannot scale in some
    split (values near its maximum) is refused by name: such tracks would turn
    into NaN or inf."""
    inputs = names + [d.name for d in derived]
    train = Extended(splits["train"][0], derived, names)  # a derived column at a time
    try:
        scalings = MinMax.fit(train, inputs), Standardize.fit(train, inputs)
        for split in ("valid", "test"):  # the derived columns alone, not a copy of the split
            x, extra = splits[split][0], compute_all(derived, splits[split][0], names)
            if not np.isfinite(extra).all():
                raise ValueError(f"a fitted derived input is NaN or inf in the {split} split")
            scalings[1].check_range(np.r_[x.min(axis=0), extra.min(axis=0)],
                                    np.r_[x.max(axis=0), extra.max(axis=0)], inputs,
                                    f"the {split} split")
    except ValueError as e:
        raise GhostError(f"{e}; values this large are no measurement (like NaN): remove "
                         f"those tracks from {where}")
    return scalings


def split_up(columns, y, prefix, out):
    """The second read's columns (read_root's, a row per kept track, split after
    split) -> {split: (float32 [its tracks, features], its labels y[split])} and
    the spectators' names; the spectators are written at once (through `out`), a
    split at a time, to be gone before the fits."""
    data, ends = columns.pop(MATRIX), np.cumsum([len(y[s]) for s in SPLITS])
    take = {s: slice(end - len(y[s]), end) for s, end in zip(SPLITS, ends)}
    spectators = [c for c in SPECTATORS if c in columns]
    for s in SPLITS if spectators else ():
        write_spectators(out, prefix,
                         {s: np.column_stack([columns[c][take[s]] for c in spectators])})
    return {s: (data[take[s]], y[s]) for s in SPLITS}, spectators


def describe(args, files, n_read, n_clean, ghost_fraction, dropped, splits, scalings,
             spectators, derived):
    """The DatasetMeta written beside the arrays."""
    minmax, standardize = scalings
    return DatasetMeta(
        track=args.track, features=features_for(args.track), label=LABEL, tree=args.tree,
        input_files=[file_record(f) for f in files], seed=args.seed,
        fraction=args.fraction, tracks_read=n_read,
        tracks_dropped_nonfinite=n_read - n_clean, dropped_per_feature=dropped,
        counts={s: {"ghost": int(y.sum()), "real": int(len(y) - y.sum())}
                for s, (_, y) in splits.items()},
        balance=args.balance, ghost_fraction=ghost_fraction,
        class_weights=(class_weights(splits["train"][1]) if args.balance == "weights"
                       else None),
        # both always recorded: network 1 embeds one of them, inference reuses them
        normalized=args.normalize, normalization=minmax, standardization=standardize,
        spectators=spectators, derived=derived,
        features_page=os.path.abspath(os.path.join(args.plots_dir, PAGE)) if args.plot else None)


def main(argv=None):
    args = parse_args(argv)
    clock = Stopwatch()
    names = features_for(args.track)
    files = expand_inputs(args.filename)
    check_outputs(args, files)

    derived = derived_inputs(args, names)  # a bad expression: one line, before the read
    log(f"reading {len(names)} features of {len(files)} file(s), tree {args.tree}")
    # Two reads, so that memory holds the arrays written and little more: each track's
    # label and whether it is kept, a chunk at a time; then the kept tracks, each
    # stored straight into its row of the splits.
    read, dropped = scan_tracks(files, args.tree, args.track, names, derived)
    rows = np.flatnonzero(~np.isnan(read))  # the clean tracks' entries
    labels = read[rows]
    n_read, n_clean = len(read), len(rows)
    del read
    log(f"read {n_read:,} tracks in {clock():.1f} s; "
        f"dropped {n_read - n_clean:,} with a non-finite value"
        + (f" ({', '.join(f'{k}: {v}' for k, v in dropped.items())})" if dropped else "")
        + f"; {int((labels == 1.0).sum()):,} ghosts, {int((labels == 0.0).sum()):,} real")

    index = balance_and_split(labels, args.fraction, args.balance,
                              np.random.default_rng(args.seed), in_words(files))
    n_kept = sum(len(i) for i in index.values())
    y = {s: labels[i].reshape(-1, 1) for s, i in index.items()}
    split_rows = row_map(n_read, [rows[index.pop(s)] for s in SPLITS])  # split after split
    ghost_fraction = float(labels.mean())
    if not args.plot:  # --plot draws every clean track (`rows`) in the file's order
        del rows, labels
    page = os.path.join(args.plots_dir, PAGE) if args.plot else None
    written = (f"wrote {args.output}_{{{','.join(SPLITS)}}}_*.npy and "
               f"{meta_path(args.output)}")
    with AtomicOutputs() as out:
        columns = read_root(files, args.tree, names, args.threads, optional=SPECTATORS,
                            matrix=names, rows=split_rows, note=False)  # the second read
        del split_rows
        splits, spectators = split_up(columns, y, args.output, out)
        del columns
        derived = fit_derived(derived, splits, names, in_words(files))
        scalings = fit_scalings(splits, names, in_words(files), derived)
        for s in SPLITS if args.normalize else ():  # in place, split by split
            splits[s][0][...] = scalings[0].apply(splits[s][0])
        meta = describe(args, files, n_read, n_clean, ghost_fraction, dropped, splits,
                        scalings, spectators, derived)
        write_dataset(out, args.output, splits, meta)
        if args.plot:
            del splits  # written: the figures read the clean tracks once more
            html, data_files = dataset_parts(meta, args.output, args.plots_dir)
            log(f"drawing {len(names) + len(derived)} figures (features, derived inputs) in "
                f"{args.plots_dir} ...")
            features = read_root(files, args.tree, names, args.threads, matrix=True,
                                 rows=row_map(n_read, [rows]), note=False)[MATRIX]
            write_feature_figures(features, labels == 1.0, names, HEAVY_TAILED,
                                  args.plots_dir, out,
                                  scalings[1] if args.plot_transformed else None, args.formats,
                                  args.label,
                                  Parts(dataset_headline(meta, written, None),
                                        [("Data set", html)], files=data_files), derived)

    kept = (f"kept {n_kept // 2:,} tracks per class"
            if args.balance == "subsample" else
            f"kept every track ({meta.ghost_fraction:.1%} ghosts; class weights "
            f"ghost {meta.class_weights['ghost']:.3f}, real {meta.class_weights['real']:.3f})")
    log(f"{kept}{'; normalized' if args.normalize else ''}"
        + (f"; spectators {', '.join(spectators)}" if spectators else "")
        + f"; {clock():.1f} s")
    print_headline(*dataset_headline(meta, written, page))


if __name__ == "__main__":
    run_cli(main)
