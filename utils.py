"""Shared helpers: errors and CLI exit, atomic outputs, ROOT reading, datasets,
normalization, safe configs, devices and metrics.

Heavy libraries (ROOT, torch) are imported inside the functions that need them, so
that `--help` is instant and the torch-only code runs on a machine without ROOT.
"""
import contextlib
import glob
import json
import os
import pickle
import sys
import time

import numpy as np

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------
# errors and command-line entry
# ---------------------------------------------------------------------------

class GhostError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def run_cli(main, argv=None):
    """Run a script's main(argv); bad input ends as `error: ...` and exit 2."""
    try:
        rc = main(argv)
    except GhostError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print("error: out of memory; try a smaller --fraction or --batch", file=sys.stderr)
        sys.exit(2)
    # Every output is written and closed by now; skip the interpreter's teardown of
    # ROOT and torch (about 0.6 s of destructors, nothing left to flush).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# atomic outputs: write to temporary names, rename all at the end
# ---------------------------------------------------------------------------

def check_output_dir(path):
    """The file `path` can be written: its folder exists and is writable, and the
    name is not taken by a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise GhostError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise GhostError(f"output folder {folder} is not writable")
    if os.path.isdir(path):
        raise GhostError(f"output {path} is a folder, not a file name")
    return folder


class AtomicOutputs:
    """Collects outputs under temporary names; commit() renames them all.

    `tmp(final)` returns a temporary path in the same folder, with the same
    extension (writers such as np.save or savefig look at it).  If the block
    raises, every temporary file is removed and no final file is touched.
    """

    def __init__(self):
        self.pending = []  # (tmp, final)

    def tmp(self, final):
        check_output_dir(final)
        folder, name = os.path.split(os.path.abspath(final))
        stem, ext = os.path.splitext(name)
        tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}_{len(self.pending)}{ext}")
        self.pending.append((tmp, final))
        return tmp

    def save_npy(self, final, array):
        np.save(self.tmp(final), array)

    def save_json(self, final, obj):
        with open(self.tmp(final), "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")

    def save_bytes(self, final, data):
        with open(self.tmp(final), "wb") as f:
            f.write(data)

    def commit(self):
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self):
        for tmp, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ---------------------------------------------------------------------------
# reading ROOT files
# ---------------------------------------------------------------------------

def expand_inputs(patterns):
    """File names and globs -> sorted, de-duplicated list of existing files."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise GhostError(f"no file matches {pattern}")
            files += matched
        elif not os.path.isfile(pattern):
            raise GhostError(f"input file {pattern} does not exist")
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def import_root():
    try:
        import warnings
        with warnings.catch_warnings():  # the PyPI wheel warns that it is "alpha"
            warnings.simplefilter("ignore")
            import ROOT
    except ImportError as e:
        raise GhostError(f"reading .root files needs ROOT (pip install root): {e}")
    ROOT.gROOT.SetBatch(True)
    ROOT.gErrorIgnoreLevel = ROOT.kFatal  # our own one-line errors instead
    return ROOT


def _list_datasets(directory, prefix=""):
    """Paths of every TTree and RNTuple inside a ROOT directory."""
    found = []
    for key in directory.GetListOfKeys():
        cls, name = key.GetClassName(), key.GetName()
        path = f"{prefix}{name}"
        if cls.startswith("TDirectory"):
            found += _list_datasets(directory.GetDirectory(name), path + "/")
        elif cls in ("TTree", "TNtuple", "ROOT::RNTuple", "ROOT::Experimental::RNTuple"):
            found.append(path)
    return sorted(set(found))


def _has_key(directory, path):
    """Whether a key exists at `path`, found through directories by key, never by
    reading the object (an RNTuple is not a TObject)."""
    *dirs, name = path.split("/")
    for d in dirs:
        directory = directory.GetDirectory(d)
        if not directory:
            return False
    return bool(directory.GetKey(name))


def check_root_file(path, tree):
    """Fail clearly on a missing, corrupt or truncated file or a missing tree."""
    ROOT = import_root()
    try:
        f = ROOT.TFile.Open(path, "READ")
    except OSError:
        f = None
    if not f or f.IsZombie():
        raise GhostError(f"{path} is not a readable ROOT file")
    try:
        if f.TestBit(ROOT.TFile.kRecovered):
            raise GhostError(f"{path} is truncated or was not closed properly")
        if not _has_key(f, tree):
            there = _list_datasets(f)
            raise GhostError(f"{path} has no tree {tree!r}; trees there: "
                             f"{', '.join(there) if there else 'none'}")
    finally:
        f.Close()


def read_root(files, tree, columns, threads=0, optional=()):
    """Read `columns` (+ `optional` ones where present) of one tree from several
    files as one dataset, through RDataFrame opened by file name, so a TTree and an
    RNTuple both work.  Returns {name: float32 array} in entry order; with
    threads > 1 ROOT reads clusters in any order (and rdfentry_ is then not the
    entry number), so the rows are sorted by their values instead: the same
    file always gives the same order."""
    ROOT = import_root()
    for path in files:
        check_root_file(path, tree)
    parallel = bool(threads and threads > 1)
    if parallel:
        ROOT.EnableImplicitMT(threads)
    try:
        arrays = _read_columns(ROOT, files, tree, columns, optional)
    finally:
        if parallel:  # later reads in this process stay in entry order
            ROOT.DisableImplicitMT()
    if parallel:
        order = np.lexsort(list(arrays.values())[::-1])
        arrays = {c: a[order] for c, a in arrays.items()}
    return arrays


def _read_columns(ROOT, files, tree, columns, optional):
    names = ROOT.std.vector("std::string")(files)
    try:
        df = ROOT.RDataFrame(tree, names)
        present = set(str(c) for c in df.GetColumnNames())
    except Exception as e:  # cppyy turns C++ exceptions into Python ones
        raise GhostError(f"cannot read {tree!r}: {one_line(e)}")
    missing = [c for c in columns if c not in present]
    if missing:
        raise GhostError(f"tree {tree!r} lacks branches: {', '.join(missing)}")
    wanted = list(columns) + [c for c in optional if c in present and c not in columns]
    if sys.stdout.isatty():  # a live progress bar for people, nothing in logs
        ROOT.RDF.Experimental.AddProgressBar(df)
    try:
        arrays = df.AsNumpy(wanted)
    except Exception as e:
        raise GhostError(f"reading {tree!r} failed: {one_line(e)}")
    return {c: np.asarray(arrays[c], dtype=np.float32) for c in wanted}


def write_root(path, tree, columns, fmt="ttree", zstd_level=None, shown=None):
    """Write {name: array} as `tree` ('dir/name' makes the directory), a TTree or an
    RNTuple, one entry per row in array order: implicit multi-threading, which
    would reorder the entries, is paused meanwhile.  `shown`: the name for errors
    (`path` is often a temporary name)."""
    ROOT = import_root()
    opts = ROOT.RDF.RSnapshotOptions()
    opts.fMode = "RECREATE"
    if zstd_level is not None:
        opts.fCompressionAlgorithm = ROOT.RCompressionSetting.EAlgorithm.kZSTD
        opts.fCompressionLevel = zstd_level
    if fmt == "rntuple":
        opts.fOutputFormat = ROOT.RDF.ESnapshotOutputFormat.kRNTuple
    threads = ROOT.IsImplicitMTEnabled() and ROOT.GetThreadPoolSize()
    try:
        if threads:
            ROOT.DisableImplicitMT()
        df = ROOT.RDF.FromNumpy(columns)
        df.Snapshot(tree, path, list(columns), opts)
        del df
    except Exception as e:  # cppyy reports a failed Snapshot as a TypeError
        raise GhostError(f"could not write {shown or path}: {one_line(e, last=False)}")
    finally:
        if threads:
            ROOT.EnableImplicitMT(threads)


def one_line(e, last=True):
    """One line of an exception's message: the last by default (cppyy puts the C++
    error there), or the first."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(e).__name__


def stack_columns(columns, names, rows=None):
    """Columns {name: array} -> one float32 [n, len(names)] array in that order,
    of the given rows (all by default), built column by column."""
    n = len(columns[names[0]]) if rows is None else len(rows)
    data = np.empty((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        data[:, j] = columns[name] if rows is None else columns[name][rows]
    return data


# ---------------------------------------------------------------------------
# normalization: x -> clip((x - offset) / scale, 0, 1)
# ---------------------------------------------------------------------------

def fit_normalization(train, names):
    """Offsets and scales from features.FIXED_BOUNDS, else the training data's
    own min and max (never validation or test statistics)."""
    from features import FIXED_BOUNDS
    offsets = np.empty(len(names), dtype=np.float64)
    scales = np.empty(len(names), dtype=np.float64)
    for i, name in enumerate(names):
        if name in FIXED_BOUNDS:
            lo, hi = FIXED_BOUNDS[name]
        else:
            lo, hi = float(train[:, i].min()), float(train[:, i].max())
        offsets[i], scales[i] = lo, (hi - lo) if hi > lo else 1.0
    return offsets, scales


def normalize(data, offsets, scales):
    """Apply a recorded min-max transform; result is float32 in [0, 1]."""
    out = (data - np.asarray(offsets, dtype=np.float32)) / np.asarray(scales, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------
# datasets written by make_dataset.py
# ---------------------------------------------------------------------------

def split_paths(prefix, split):
    return f"{prefix}_{split}_data.npy", f"{prefix}_{split}_labels.npy"


def features_json_path(prefix):
    return f"{prefix}_features.json"


def load_split(prefix, split):
    """One split's data [n, f] float32 and labels [n, 1] float32, validated."""
    data_path, label_path = split_paths(prefix, split)
    for path in (data_path, label_path):
        if not os.path.isfile(path):
            raise GhostError(f"dataset file {path} is missing")
    try:
        data = np.load(data_path, allow_pickle=False)
        labels = np.load(label_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {data_path} / {label_path}: {one_line(e)}")
    if data.ndim != 2:
        raise GhostError(f"{data_path} has shape {data.shape}; expected [tracks, features]")
    labels = labels.reshape(-1, 1) if labels.ndim == 1 else labels
    if labels.ndim != 2 or labels.shape != (len(data), 1):
        raise GhostError(f"{label_path} has shape {labels.shape}, "
                         f"but {data_path} holds {len(data)} tracks")
    if not np.isin(labels, (0, 1)).all():
        raise GhostError(f"{label_path} holds labels other than 0 and 1")
    if not np.isfinite(data).all():
        raise GhostError(f"{data_path} holds non-finite values (NaN or inf)")
    return data.astype(np.float32, copy=False), labels.astype(np.float32, copy=False)


def load_dataset_meta(prefix):
    """The `{prefix}_features.json` written beside the arrays, or {} if absent."""
    path = features_json_path(prefix)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {path}: {one_line(e)}")


def load_dataset(prefix, splits=SPLITS):
    """{split: (data, labels)} for the given splits, with matching widths."""
    out = {s: load_split(prefix, s) for s in splits}
    widths = {s: d.shape[1] for s, (d, _) in out.items()}
    if len(set(widths.values())) > 1:
        raise GhostError(f"dataset splits disagree on the number of features: {widths}")
    return out


# ---------------------------------------------------------------------------
# configs: plain data only
# ---------------------------------------------------------------------------

class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers; refuses any class."""

    def find_class(self, module, name):
        raise GhostError(f"refusing to unpickle {module}.{name}: configs must be plain data")


def load_config(path):
    """A model config from .pkl (plain data only) or .json -> dict."""
    if not os.path.isfile(path):
        raise GhostError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            if path.endswith(".json"):
                config = json.load(f)
            else:
                config = _PlainUnpickler(f).load()
    except GhostError:
        raise
    except Exception as e:
        raise GhostError(f"cannot read config {path}: {one_line(e)}")
    if not isinstance(config, dict):
        raise GhostError(f"config {path} is a {type(config).__name__}, not a dict")
    return config


def plain(obj):
    """Deep copy of a config with numpy types turned into plain Python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise GhostError(f"config value {obj!r} is not plain data")


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------

def pick_device(nocuda=False, cuda=None):
    """CPU when asked or when CUDA is absent, else cuda:K (default 0)."""
    import torch
    if nocuda or not torch.cuda.is_available():
        if cuda is not None and not nocuda:
            raise GhostError(f"--cuda {cuda} asked, but CUDA is not available here")
        return torch.device("cpu")
    index = 0 if cuda is None else cuda
    if not 0 <= index < torch.cuda.device_count():
        raise GhostError(f"--cuda {index}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{index}")


# ---------------------------------------------------------------------------
# metrics (numpy, one pass over sorted scores)
# ---------------------------------------------------------------------------

def roc_auc(scores, labels):
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average rank of tied scores
    first = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(scores)]
    avg_rank = (starts + ends + 1) / 2.0  # 1-based ranks
    ranks = np.empty(len(scores))
    ranks[order] = avg_rank[group]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0
