"""inference.py's input read and scored chunk by chunk, so its memory does not grow
with the file's features: a .root file comes in rootstream's chunks of entries (a
dataset's test split, already in memory, is one chunk), each scored by the model
and the --compare models as it comes.  Of every track only what the analysis needs
is kept (its probability and the compared models', label, limit, kinematic bins,
whether it was scored); of the input only bounded parts: the first
inputs.TREE_ROWS tracks' features (results.root's trees), the first finite tracks
(--ranking, --cross-check), the guard rails' sums.  Streams of consecutive files
(many_files' Ray tasks, one file each) join into the stream of their concatenation
(Stream.part, Stream.join).  Its one reason to change: what inference keeps of a
track and of its input.
"""
import ctypes
import math
import warnings
from dataclasses import dataclass

import numpy as np

import kinematics
from features import LABEL
from inputs import (
    TREE_ROWS,
    ColumnStats,
    GuardStats,
    Input,
    bad_labels,
    derived_inputs,
    finite_tracks,
    guard,
    read_dataset,
    stream_input,
)
from scoring import choose_backend, make_scorer, other_backend
from utils import GhostError, Stopwatch, log, warn

# Tracks per chunk, rounded up to a multiple of every scoring batch (chunk_size):
# 13 float32 features and 8 other branches of 2^20 tracks take 88 MB.
CHUNK_TRACKS = 1 << 20
RANKING_TRACKS = 200_000  # --ranking's tracks: the first with every input finite
CROSS_CHECK_TRACKS = 100_000  # --cross-check's: the first with every input finite
CROSS_CHECK_TOLERANCE = 1e-5  # float32 engines agree to ~1e-7 on a probability


def nonfinite_line(n_bad, inp):
    """The console's line on the tracks left unscored: a non-finite feature, or
    only a non-finite derived input (load_input counts those)."""
    only = inp.nonfinite_derived
    what = f" or derived input ({only:,} only a derived input)" if only else ""
    return (f"{n_bad:,} tracks have a non-finite feature{what}: their probability is NaN "
            "and they are left out of the metrics")


def overflow_warning(n, scored, overflowed, names):
    """The warning on the `n` tracks with finite features that the model cannot
    compute in float32 (scoring.score_model's overflow), naming the features in
    which they lie beyond every track scored (`scored`, `overflowed`: ColumnStats of
    the tracks scored and of those)."""
    lo, hi, _ = scored.result()
    beyond = [n for j, n in enumerate(names)
              if lo is None or overflowed.lo[j] < lo[j] or overflowed.hi[j] > hi[j]]
    named = f" ({', '.join(beyond)} beyond the range of the others)" if beyond else ""
    return (f"{n:,} tracks have finite features that the model cannot "
            f"compute in float32{named}: their probability is NaN and they are left out "
            "of the analysis, like non-finite tracks")


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
    compared: list = None      # each --compare model's probabilities, every track's
    first: tuple = None        # (entry numbers, features) of the first finite tracks

    def first_finite(self, k):
        """(entry numbers, features) of the first `k` tracks with every input finite."""
        if self.first is not None:
            return self.first[0][:k], self.first[1][:k]
        rows = np.flatnonzero(self.finite)[:k]
        return rows, self.inp.data[rows]


def release_free_memory():
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere
    nothing): the chunks' and the sorts' arrays below glibc's mmap threshold leave
    their pages in the heap once freed (about 80 MB after a read), which the peak
    that follows would count again; no value changes."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # this process's own symbols: libc's among them
    except (OSError, AttributeError):
        pass


def chunk_size(passes):
    """CHUNK_TRACKS rounded up to a multiple of every ScoringPass's batch."""
    step = math.lcm(*(p.batch for p in passes))
    return -(-CHUNK_TRACKS // step) * step


class Stream:
    """One input's chunks scored by `passes` (scoring.ScoringPass: the model's, then
    each --compare model's) as they come (add), and summed up; `keep`: how many of
    the first finite tracks' features to keep."""

    def __init__(self, model, names, passes, keep):
        self.model, self.names, self.passes, self.keep = model, names, passes, keep
        self.scores = None
        self.n_bad = self.bad_labels = self.nonfinite_derived = self.kept = 0
        self.scored = ColumnStats([None] * len(names))  # for the overflow warning
        self.overflowed = ColumnStats([None] * len(names))

    def _start(self, total, data, labels, limit, bins):
        n, width = total, data.shape[1]
        self.scores, self.finite = np.empty(n, np.float32), np.empty(n, bool)
        self.labels = None if labels is None else np.empty(n, bool)
        self.limit = None if limit is None else np.empty(n, np.float32)
        self.bins = {k: np.empty(n, np.uint8) for k in bins}
        self.compared = [np.empty(n, np.float32) for _ in self.passes[1:]]
        self.head = np.empty((min(n, TREE_ROWS), width), np.float32)
        self.rows = np.empty(min(n, self.keep), np.int64)
        self.first = np.empty((len(self.rows), width), np.float32)
        self.guard = GuardStats(self.model, self.names, derived_inputs(self.model, data)[1])

    def add(self, first, total, data, labels, limit, columns):
        """The chunk of tracks `first`.. of `total`: its features, label values (or
        None), limit (or None) and kinematics columns (kinematics.columns_of)."""
        bins = kinematics.bins_of(columns)
        if self.scores is None:
            self._start(total, data, labels, limit, bins)
        n = len(data)
        rows = slice(first, first + n)
        if labels is not None:
            self.bad_labels += int((~np.isin(labels, (0.0, 1.0))).sum())
            self.labels[rows] = labels == 1.0
        if limit is not None:
            self.limit[rows] = limit
        for k, v in bins.items():
            self.bins[k][rows] = v
        values = derived_inputs(self.model, data)[0]
        finite = finite_tracks(data, values)
        self.nonfinite_derived += int((np.isfinite(data).all(axis=1) & ~finite).sum())
        self.n_bad += int((~finite).sum())
        self.guard.add(data, finite, values)
        self.scores[rows], overflow = self.passes[0](data, finite)
        ok = finite & ~overflow  # from now on, like tracks with a non-finite feature
        self.finite[rows] = ok
        self.scored.add(data, ok)
        if overflow.any():
            self.overflowed.add(data, overflow)
        for run, out in zip(self.passes[1:], self.compared):
            out[rows] = run(data, ok)[0]
        if first < len(self.head):
            self.head[first:first + n] = data[:len(self.head) - first]
        if self.kept < len(self.rows):
            take = np.flatnonzero(ok)[:len(self.rows) - self.kept]
            self.rows[self.kept:self.kept + len(take)] = first + take
            self.first[self.kept:self.kept + len(take)] = data[take]
            self.kept += len(take)

    def part(self, head=TREE_ROWS):
        """What `join` needs of this stream (picklable, a Ray task's answer): its sums
        and arrays without the model, the first `head` tracks' features, and each
        ScoringPass's sums."""
        state = {k: v for k, v in vars(self).items() if k not in ("model", "passes")}
        if self.scores is not None:
            state.update(head=self.head[:head], rows=self.rows[:self.kept],
                         first=self.first[:self.kept])
        state["passes"] = [(p.seconds, p.lost, p.range) for p in self.passes]
        return state

    def join(self, parts, total=None):
        """Parts (Stream.part) of streams of consecutive inputs, in their order, into
        this fresh stream (of the same model, passes and `keep`), as if it had read
        the inputs one after another.  `parts` may be an iterable: what one stream
        keeps of each part's first tracks is copied as it comes, the rest let go;
        given the `total` tracks, each part's per-track arrays are copied into
        arrays of that length as they come too (no list of them joined at the end)."""
        got, start, every = [], 0, {}
        for part in parts:
            for run, (seconds, lost, (lo, hi, n)) in zip(self.passes, part["passes"]):
                run.seconds, run.lost = run.seconds + seconds, run.lost + lost
                run.range = [min(run.range[0], lo), max(run.range[1], hi), run.range[2] + n]
            if part["scores"] is None:  # an empty file adds nothing
                continue
            want = self.keep - sum(len(p["rows"]) for p in got)
            part = {**part, "head": np.array(part["head"][:max(0, TREE_ROWS - start)]),
                    "first": np.array(part["first"][:want]), "rows": part["rows"][:want] + start}
            n = len(part["scores"])
            got.append(part if total is None else _copy_tracks(every, part, start, total))
            start += n
        if not got:
            return self
        every = {k: v if v is None else v[:start] for k, v in every.items()}

        def joined(key):
            if key in every:
                return every[key]
            arrays = [p[key] for p in got]
            return None if any(x is None for x in arrays) else np.concatenate(arrays)
        for key in ("n_bad", "bad_labels", "nonfinite_derived"):
            setattr(self, key, sum(p[key] for p in got))
        for key in ("scores", "finite", "labels", "limit", "head", "first", "rows"):
            setattr(self, key, joined(key))
        self.kept = len(self.rows)
        self.bins = {k: every[("bins", k)] if every else
                     np.concatenate([p["bins"][k] for p in got]) for k in got[0]["bins"]}
        self.compared = [every[("compared", i)] if every else np.concatenate(c)
                         for i, c in enumerate(zip(*(p["compared"] for p in got)))]
        self.guard = got[0]["guard"]
        for p in got:
            if p is not got[0]:
                self.guard.merge(p["guard"])
            self.scored.merge(p["scored"])
            self.overflowed.merge(p["overflowed"])
        return self

    def finish(self, source, tree, settings, inp, clock):
        """The Scored (its train split's scores to come), said on the console as a
        whole-array read would say it; `inp`: the dataset's Input, or an empty one."""
        if self.scores is None:
            raise GhostError(f"{source.path} holds no tracks")
        if self.bad_labels:
            raise bad_labels(source.path, self.bad_labels)
        main, n = self.passes[0], len(self.scores)
        log(f"read {n:,} tracks from {source.path} in {clock() - main.seconds:.1f} s"
            + ("" if self.labels is not None else f" (no {LABEL!r} branch: unlabelled)"))
        guard(source, tree, settings.track, self.guard)
        if settings.normalization is not None:
            log(f"normalized with the transform recorded in {settings.normalization_origin}")
        for run in self.passes:
            run.check()
        if self.overflowed.n:
            warn(overflow_warning(self.overflowed.n, self.scored, self.overflowed, self.names))
        if main.note:
            log(f"note: {main.note}")
        rate = n / main.seconds if main.seconds > 0 else float("inf")
        log(f"scored {n:,} tracks in {main.seconds:.3f} s: {rate / 1e6:,.1f} M tracks/s "
            f"({main.desc})")
        inp.data, inp.labels, inp.limit = self.head, self.labels, self.limit
        inp.columns, inp.bins, inp.nonfinite_derived = None, self.bins, self.nonfinite_derived
        first = (self.rows[:self.kept], self.first[:self.kept])
        return Scored(source, inp, self.finite, self.scores, None, main.desc, main.seconds,
                      compared=self.compared, first=first)


def _copy_tracks(every, part, start, total):
    """A part's (Stream.part) per-track arrays copied at `start` into `every` ({key:
    array of `total` tracks, or None where a part has none}, made at the first part):
    the part without them."""
    arrays = {k: part[k] for k in ("scores", "finite", "labels", "limit")}
    arrays.update({("bins", k): v for k, v in part["bins"].items()})
    arrays.update({("compared", i): v for i, v in enumerate(part["compared"])})
    for key, values in arrays.items():
        if key not in every:  # the first part
            every[key] = None if values is None else np.empty(total, values.dtype)
        if values is None:
            every[key] = None
        elif every[key] is not None:
            every[key][start:start + len(values)] = values
    return {**part, **{k: None for k in arrays if isinstance(k, str)},
            "bins": dict.fromkeys(part["bins"]), "compared": [None] * len(part["compared"])}


def read_and_score(source, tree, settings, model, passes, keep=0):
    """Read the input and score every track (NaN where a feature is not finite) with
    `passes` as it comes: a Scored (train_scores None), said on the console."""
    clock = Stopwatch()
    stream = Stream(model, settings.features, passes, keep)
    if source.kind == "root":
        inp = Input(None)
        stream_input(source.files, settings.features, tree, chunk_size(passes), stream.add)
    else:
        inp = read_dataset(source, settings.features)
        if len(inp.data):  # none: said by finish
            stream.add(0, len(inp.data), inp.data, inp.labels, inp.limit, inp.columns)
    release_free_memory()
    return stream.finish(source, tree, settings, inp, clock), stream.n_bad


def cross_check(scored, model, backend="auto", scaling=None, nocuda=False):
    """The first CROSS_CHECK_TRACKS finite tracks scored again with the engine other
    than the one `backend` chose, said on the console: {"engine", "tracks",
    "max_abs_diff"}, or None where there is no other engine."""
    other = other_backend(model, choose_backend(model, backend, nocuda)[0])
    if other is None:
        log("cross-check: no second engine runs an INT8 .onnx model (onnx2torch cannot "
            "convert it)")
        return None
    rows, x = scored.first_finite(CROSS_CHECK_TRACKS)
    x = x if scaling is None else scaling.apply(x)
    score, desc = make_scorer(model, other, nocuda)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        theirs = score(np.ascontiguousarray(x))
    diff = float(np.max(np.abs(theirs - scored.scores[rows]))) if len(rows) else 0.0
    log(f"cross-check with {desc} on {len(rows):,} tracks: largest difference {diff:.2e}")
    if diff > CROSS_CHECK_TOLERANCE:
        warn(f"the two engines differ by {diff:.2e} (more than {CROSS_CHECK_TOLERANCE:g}): "
             "the model does not compute the same in both")
    return {"engine": desc, "tracks": len(rows), "max_abs_diff": diff}
