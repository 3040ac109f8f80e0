"""inference.py on many .root files in one command: a friend file per input
(--output-dir), and the files scored as Ray tasks on an existing cluster
(--address), one file per task, whose answers the driver joins in file order into
the stream of the concatenated input (streaming.Stream.join), so the analysis is
the one a single process reading every file gives.  Nothing is written by a task:
the driver writes every output.  Its one reason to change: how inference spreads
over files and machines.  Ray is imported only with --address.
"""
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from cli import listen, stop
from compare import compared_model_paths
from inputs import TREE_ROWS, Input, optional_branches, stream_input
from outputs import check_name, prepare_folder
from rootio import checked_inputs
from rootwrite import write_root
from scoring import ScoringPass, load_model_file
from search import check_reachable, join_ray
from streaming import Stream, chunk_size, read_and_score
from utils import GhostError, Stopwatch, log

FRIEND_SUFFIX = "_ghost.root"  # an input's friend file: <its stem>_ghost.root
FRIEND_TREE, FRIEND_BRANCH = "ghost_probability", "ghost_prob"


def check_many(args, source):
    """--output-dir and --address, checked before any work: a friend file per .root
    input, no two of the same name; the folder could be made and written; the
    cluster answers.  Returns the friend files' paths ([] without --output-dir)."""
    if source.kind != "root":
        for option, value in (("--output-dir", args.output_dir), ("--address", args.address)):
            if value is not None:
                raise GhostError(f"{option} takes .root inputs; -f {source.path} is a "
                                 "dataset prefix")
    if args.address is not None:
        check_reachable(args.address)
    if args.output_dir is None:
        return []
    check_name(args.output_dir, "--output-dir")
    prepare_folder(args.output_dir, "--output-dir", create=False)  # made when writing
    friends, first = [], {}
    for path in source.files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in first:
            raise GhostError(f"--output-dir: {first[stem]} and {path} would both write "
                             f"{stem}{FRIEND_SUFFIX}; give inputs of different names")
        first[stem] = path
        friends.append(os.path.join(args.output_dir, stem + FRIEND_SUFFIX))
    return friends


def file_entries(files, tree, names):
    """(each file's entries, the optional branches every file has: what a read of
    them all gets), from the inputs' checks (rootio.checked_inputs)."""
    infos, wanted = checked_inputs(files, tree, names, optional_branches(names))
    return [info.entries for info in infos], [c for c in wanted if c not in names]


def write_friends(out, folder, friends, scores, entries):
    """Each input's slice of `scores` (in entry order, the inputs one after another)
    as its friend file: tree FRIEND_TREE, branch FRIEND_BRANCH, one entry per entry.
    Returns the console's words for them."""
    if sum(entries) != len(scores):
        raise GhostError(f"the inputs hold {sum(entries):,} entries, but {len(scores):,} "
                         "were scored")
    prepare_folder(folder, "--output-dir")
    for path, part in zip(friends, np.split(scores, np.cumsum(entries)[:-1])):
        write_root(out.tmp(path), FRIEND_TREE,
                   {FRIEND_BRANCH: np.ascontiguousarray(part, np.float32)}, shown=path)
    return f"{folder}/ ({len(friends)} friend files *{FRIEND_SUFFIX})"


@dataclass
class Job:
    """What every task gets (once, through the object store): the model files'
    bytes, the settings to read with, how to score and what to keep."""
    models: list      # per model (the main one, then --compare's): ((name, bytes), config or None)
    settings: list    # inputs.Settings of each model, as the driver resolved them
    flags: tuple      # the main model's (--network, --int8)
    scoring: tuple    # (--backend, --nocuda, --batch)
    tree: str
    keep: int         # the first finite tracks' features to keep (--ranking, --cross-check)
    optional: list    # the optional branches every input has


def _shipped(path):
    """A file as a task gets it: (its name, its bytes); None stays None."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return os.path.basename(path), f.read()


class OnGrid:
    """A scorer (scoring.make_scorer's) that scores a part of the input as the pass
    over the whole input scores it: in batches at multiples of `batch` from the
    input's first row (streaming's chunks are such multiples), the batches cut by
    the part's ends padded with copies of a row and cut back, as an engine may
    compute a row of a short batch differently in the last bit.  `at`: the first
    row of what the next call scores, in the whole input; `total`: its rows."""

    def __init__(self, score, total):
        self.score, self.batch, self.total, self.at = score, score.batch, total, 0

    def __call__(self, x):
        b, start, n = self.batch, self.at, len(x)
        head = min(n, -start % b)  # rows before the first multiple of b
        cuts = sorted({0, head, head + (n - head) // b * b, n})
        out = []
        for lo, hi in zip(cuts, cuts[1:]):
            first = start + lo  # in the whole input
            front = first % b
            end = min(first - front + b, self.total)  # of the whole input's batch
            if front == 0 and hi - lo == end - first or hi - lo >= b:  # whole batches
                out.append(self.score(x[lo:hi]))
                continue
            padded = np.repeat(x[lo:lo + 1], end - first + front, axis=0)
            padded[front:front + hi - lo] = x[lo:hi]
            out.append(self.score(padded)[front:front + hi - lo])
        return out[0] if len(out) == 1 else np.concatenate(out)


def score_file(path, job, start, total):
    """A Ray task: one .root file, rows `start`.. of the `total` of every input,
    read and scored as streaming.read_and_score reads the whole input; its
    Stream.part with what the whole input's first TREE_ROWS tracks hold of it."""
    with tempfile.TemporaryDirectory(prefix="ghost_task_") as folder:
        models = []
        for i, files in enumerate(job.models):
            os.mkdir(own := os.path.join(folder, str(i)))
            paths = [None if shipped is None else os.path.join(own, shipped[0])
                     for shipped in files]
            for written, shipped in zip(paths, files):
                if shipped is not None:
                    with open(written, "wb") as f:
                        f.write(shipped[1])
            models.append(load_model_file(*paths, *(job.flags if i == 0 else ())))
        passes = [ScoringPass(m, s.normalization, *job.scoring)
                  for m, s in zip(models, job.settings)]
    grids = []
    for run in passes:
        run.score = OnGrid(run.score, total)
        grids.append(run.score)
    names = job.settings[0].features
    stream = Stream(models[0], names, passes, job.keep)

    def add(first, *chunk):
        for grid in grids:
            grid.at = start + first
        stream.add(first, *chunk)
    stream_input([path], names, job.tree, chunk_size(passes), add, job.optional)
    return stream.part(max(0, TREE_ROWS - start))


def score_files(args, source, scorers, keep):
    """The input read and scored (`scorers`: inference.Scorer of the model, then of
    each --compare model; `keep`: the first finite tracks' features to keep): the
    Scored and the count of tracks left unscored, as streaming.read_and_score gives
    them.  With --address as Ray tasks, one per file, joined in file order; without
    in this process, one file after another."""
    settings = scorers[0].settings
    if not args.address:
        return read_and_score(source, args.tree, settings, scorers[0].model,
                              [s.scoring_pass() for s in scorers], keep)
    stream, clock = score_on_cluster(args, source, scorers, keep)
    return stream.finish(source, args.tree, settings, Input(None), clock), stream.n_bad


def score_on_cluster(args, source, scorers, keep):
    """Every file of `source` scored by a Ray task on the cluster at --address, the
    answers joined in file order: (the Stream, the Stopwatch started with the run)."""
    clock = Stopwatch()
    names = scorers[0].settings.features
    entries, optional = file_entries(source.files, args.tree, names)
    paths = [(args.model, args.config)] + compared_model_paths(args.compare or [])
    job = Job([tuple(map(_shipped, p)) for p in paths], [s.settings for s in scorers],
              (args.network, args.int8), (args.backend, args.nocuda, args.batch), args.tree,
              keep, optional)
    log(f"scoring {len(source.files)} files as Ray tasks on the cluster at {args.address}")
    ray = join_ray(args.address)
    listen(stop)  # ray.init's SIGTERM handler would end the run with a dump
    try:
        task = ray.remote(num_cpus=1)(score_file)
        shared = ray.put(job)
        starts = np.cumsum([0] + entries)[:-1]
        refs = [task.remote(os.path.abspath(path), shared, int(start), sum(entries))
                for path, start in zip(source.files, starts)]
        stream = Stream(scorers[0].model, names, [s.scoring_pass() for s in scorers], keep)

        def answers():  # each task's answer let go once joined: its ref too
            for i, path in enumerate(source.files):
                ref, refs[i] = refs[i], None
                yield _answer(ray, ref, path)
        stream.join(answers(), total=sum(entries))
    finally:
        ray.shutdown()
        listen(stop)  # ray.shutdown leaves SIGTERM at the default
    return stream, clock


def _answer(ray, ref, path):
    """A task's answer; its error as the one line it raised, or naming the file."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, GhostError):
            raise GhostError(str(cause)) from None
        raise GhostError(f"scoring {path} on the Ray cluster failed: "
                         f"{str(cause or e).strip().splitlines()[-1]}") from None
    except ray.exceptions.RayError as e:
        raise GhostError(f"scoring {path} on the Ray cluster failed: "
                         f"{str(e).strip().splitlines()[-1]}") from None
