"""training.py --suggest-derived: which ratios (a / b) and differences (a - b) of two
features would help the classifier, measured before the dataset is remade with them.

For every candidate, one quick fit on a subsample of the training split (up to
SUGGEST_TRACKS tracks) over the features, the dataset's derived inputs and the
candidate, scored on the validation split (as many tracks): the candidate's gain is
its fit's validation AUC and ghost rejection at 99 % real-track efficiency less
those of the same fit without it.  The fit is a class-weighted logistic regression
on each input's rank among the training tracks (a monotone transform: the fit sees
the order of the values, so a candidate gains by what it tells, not by its shape),
solved by Newton's method for every candidate at once (vectorized).  It is convex:
no initial weights, the same answer every run; --seed draws the subsample.  A linear
fit sees what a candidate adds to a linear use of the inputs: a guide to what to try
with make_dataset.py --derived, which the network's own training then measures.
"""
import os

import numpy as np

from derived import Derived, compute_all, extend
from diagnostics import csv_field
from metrics import quality
from outputs import AtomicOutputs, prepare_folder
from utils import GhostError, Stopwatch, log

SUGGEST_TRACKS = 50_000  # per split: the fits' tracks (training) and their scoring (validation)
NEWTON_STEPS = 6  # converged: 5, 10 and 20 steps rank alike to 1e-5 in AUC
RIDGE = 1e-4  # a weak L2 penalty: the fit stays finite where a candidate separates the classes
SUGGEST_CSV = "suggested_derived.csv"
OUTPUTS = [("files in --output-dir with --suggest-derived (and no search):",
            [(SUGGEST_CSV, "every candidate derived input ranked by its gain in validation "
                           "AUC, with the gain in ghost rejection at 99 %")])]
REFUSED = ("save", "int8", "baseline", "resume")  # options of a search


def add_option(p):
    p.add_argument("--suggest-derived", type=int, nargs="?", const=10, default=None,
                   metavar="TOP",
                   help="instead of a search: rank the ratios and differences of feature "
                        "pairs by what each adds to a quick fit (a logistic regression on "
                        f"up to {SUGGEST_TRACKS:,} training and validation tracks), print the "
                        f"TOP (default 10) as --derived lines, write {SUGGEST_CSV} in "
                        "--output-dir")


def candidates(names, present):
    """The derived inputs to try: for each pair of features a / b, b / a and a - b
    (b - a tells the same), but none that is already present (same name or same
    expression)."""
    taken = {d.expression for d in present} | {d.name for d in present}
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for text in (f"{a}_over_{b} := {a} / {b}", f"{b}_over_{a} := {b} / {a}",
                         f"{a}_minus_{b} := {a} - {b}"):
                d = Derived.parse(text, names)
                if d.name not in taken and d.expression not in taken:
                    out.append(d)
    return out


def ranks(train, *others):
    """Each column's mid-rank among the training column's finite values, in [-1, 1]
    (0 where a value is not finite): (train's, others'...), float64."""
    out = [np.zeros(train.shape), *(np.zeros(o.shape) for o in others)]
    for j in range(train.shape[1]):
        ref = np.sort(train[:, j][np.isfinite(train[:, j])])
        for o, x in zip(out, (train, *others)):
            col = np.ascontiguousarray(x[:, j])
            order = np.argsort(col)  # sorted keys: numpy's binary search is fast on them
            r = np.empty(len(col))
            r[order] = (np.searchsorted(ref, col[order], "left")
                        + np.searchsorted(ref, col[order], "right"))
            o[:, j] = np.where(np.isfinite(col), r / max(len(ref), 1) - 1.0, 0.0)
    return out


def shapes(r):
    """The fit's columns of ranks r [tracks, k]: r and r * r (what lies far from the
    middle, either side), then a constant."""
    return np.column_stack([r, r * r, np.ones(len(r))])


def _p(logit):
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -40, 40)))


def fit_base(x, y, w):
    """The logistic regression of y on the columns x (weights w summing to 1; a RIDGE
    penalty; Newton's method): its coefficients."""
    theta = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = _p(x @ theta)
        s = w * p * (1 - p)
        h = x.T @ (x * s[:, None]) + RIDGE * np.eye(x.shape[1])
        theta -= np.linalg.solve(h, x.T @ (w * (p - y)) + RIDGE * theta)
    return theta


def fit_candidates(offset, z, y, w):
    """For every column c of z at once, the logistic regression of y on [1, z_c, z_c^2]
    on top of the fixed logit `offset` (the base fit's: each candidate adds to it
    what the base could not tell): coefficients [C, 3]."""
    zp = [np.ones_like(z), z, z * z, z * z * z, z * z * z * z]  # powers 0..4
    theta = np.zeros((z.shape[1], 3))
    for _ in range(NEWTON_STEPS):
        p = _p(offset[:, None] + extra(theta, zp))
        r, s = w[:, None] * (p - y[:, None]), w[:, None] * p * (1 - p)
        g = np.stack([(r * zp[a]).sum(0) for a in range(3)], 1) + RIDGE * theta
        sums = [(s * zp[a]).sum(0) for a in range(5)]
        h = np.stack([np.stack([sums[a + b] for b in range(3)], 1) for a in range(3)], 1)
        theta -= np.linalg.solve(h + RIDGE * np.eye(3), g[..., None])[..., 0]
    return theta


def extra(theta, zp):
    """The candidates' terms of the logit, [tracks, C] (zp: z's powers from 0)."""
    return sum(theta[:, a] * zp[a] for a in range(3))


def suggest(splits, names, derived, weights=None, seed=42, tracks=SUGGEST_TRACKS):
    """Every candidate (candidates()) with its gains: (the base fit's {"auc",
    "rejection@0.99"} on the validation split, [rows], the tracks fitted and scored),
    rows {derived, auc_gain, rejection_gain, nonfinite} best first (by AUC gain,
    then rejection gain); nonfinite: the training tracks where the candidate is NaN
    or infinite (make_dataset.py would drop them)."""
    rng = np.random.default_rng(seed)
    picked = {}
    for split in ("train", "valid"):
        data, labels = splits[split]
        rows = np.sort(rng.permutation(len(data))[:tracks])
        picked[split] = (np.asarray(data[rows], np.float32), labels[rows].ravel() > 0.5)
    tried = candidates(names, derived)
    if not tried:
        raise GhostError("--suggest-derived needs at least two features to pair")
    (train, y), (valid, y_valid) = picked["train"], picked["valid"]
    w = np.where(y, weights["ghost"], weights["real"]) if weights else np.ones(len(y))
    w, y = w / w.sum(), y.astype(np.float64)
    x, x_valid = (shapes(r) for r in ranks(extend(train, derived, names),
                                             extend(valid, derived, names)))
    theta = fit_base(x, y, w)
    cand, cand_valid = (compute_all(tried, a, names) for a in (train, valid))
    z, z_valid = ranks(cand, cand_valid)
    coef = fit_candidates(x @ theta, z, y, w)
    base_valid = x_valid @ theta
    scores = base_valid[:, None] + extra(coef, [np.ones_like(z_valid), z_valid,
                                                 z_valid * z_valid])
    base = quality(base_valid, y_valid, (0.99,))
    rows = []
    for c, d in enumerate(tried):
        q = quality(scores[:, c], y_valid, (0.99,))
        rows.append({"derived": d, "auc_gain": q["auc"] - base["auc"],
                     "rejection_gain": q["rejection@0.99"] - base["rejection@0.99"],
                     "nonfinite": float(np.mean(~np.isfinite(cand[:, c])))})
    rows.sort(key=lambda r: (-r["auc_gain"], -r["rejection_gain"]))
    return base, rows, (len(train), len(valid))


def option(d):
    return f"--derived '{d.text()}'"


def suggestions_csv(rows):
    lines = ["rank,name,expression,auc_gain,rejection_gain_at_99,nonfinite_fraction,option"]
    lines += [f"{i},{r['derived'].name},{csv_field(r['derived'].expression)},"
              f"{r['auc_gain']:.6g},{r['rejection_gain']:.6g},{r['nonfinite']:.6g},"
              f"{csv_field(option(r['derived']))}" for i, r in enumerate(rows, 1)]
    return "\n".join(lines) + "\n"


def table(rows, top):
    """The console table of the `top` rows."""
    lines = [f"{'rank':>4}  {'AUC gain':>9}  {'rejection gain':>14}  {'non-finite':>10}  "
             "add with"]
    lines += [f"{i:>4}  {r['auc_gain']:>+9.4f}  {r['rejection_gain']:>+14.4f}  "
              f"{r['nonfinite']:>10.2%}  {option(r['derived'])}"
              for i, r in enumerate(rows[:top], 1)]
    return "\n".join(lines)


def run(args, splits, meta):
    """training.py --suggest-derived: the table on the console, SUGGEST_CSV in
    --output-dir; bad combinations of options refused in one line."""
    given = [f"--{o.replace('_', '-')}" for o in REFUSED if getattr(args, o)]
    if given:
        raise GhostError(f"--suggest-derived ranks candidate derived inputs and trains no "
                         f"model: drop {', '.join(given)}")
    if args.suggest_derived < 1:
        raise GhostError("--suggest-derived must be at least 1")
    if meta.normalized or args.network == 0:
        raise GhostError("--suggest-derived finds derived inputs for network 1's first layer; "
                         + ("this dataset is normalized: remake it without --normalize"
                            if meta.normalized else "--network 0 takes none: drop it"))
    prepare_folder(args.output_dir, "--output-dir")
    clock = Stopwatch()
    names, derived = list(meta.features), list(meta.derived)
    base, rows, (n_train, n_valid) = suggest(splits, names, derived, meta.class_weights,
                                             args.seed)
    log(f"--suggest-derived: {len(rows)} ratios and differences of feature pairs, each added "
        f"to a logistic regression over {len(names)} features and {len(derived)} derived "
        f"inputs fitted on {n_train:,} training tracks, scored on {n_valid:,} validation "
        f"tracks (without one: AUC {base['auc']:.4f}, rejection at 99 % "
        f"{base['rejection@0.99']:.4f}); {clock():.1f} s; the top "
        f"{min(args.suggest_derived, len(rows))}:")
    print(table(rows, args.suggest_derived), flush=True)
    path = os.path.join(args.output_dir, SUGGEST_CSV)
    with AtomicOutputs() as out:
        out.save_bytes(path, suggestions_csv(rows).encode())
    log(f"wrote {path}: every candidate ranked; remake the dataset with make_dataset.py "
        "--derived 'name := expression' to add one")
