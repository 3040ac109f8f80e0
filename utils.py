"""Shared helpers: errors and CLI exit, atomic outputs, ROOT reading, datasets,
normalization, safe configs, devices and metrics.

Heavy libraries (ROOT, torch) are imported inside the functions that need them, so
that `--help` is instant and the torch-only code runs on a machine without ROOT.
"""
import contextlib
from dataclasses import dataclass
import glob
import json
import math
import os
import pickle
import re
import sys
import tempfile
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


def warn(msg):
    """A loud note on stderr: the run goes on, but its result may mislead."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# atomic outputs: write to temporary names, rename all at the end
# ---------------------------------------------------------------------------

def check_writable_folder(folder, what="output folder"):
    """`folder` exists and a file can really be created in it (os.access says yes
    to root in /proc, for instance, so try it)."""
    if not os.path.isdir(folder):
        raise GhostError(f"{what} {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ghost_probe")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise GhostError(f"{what} {folder} is not writable ({e.strerror or e})")
    return folder


def check_output_dir(path):
    """The file `path` can be written: its folder exists and is writable, and the
    name is not taken by a folder."""
    folder = check_writable_folder(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        raise GhostError(f"output {path} is a folder, not a file name")
    return folder


def prepare_folder(path, what, create=True):
    """Create the output folder `path` (an option named by `what`) if needed and
    check that it is writable: before any long work, never after it.  With
    create=False, only check that it could be created (its first existing parent
    is a writable folder)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GhostError(f"{what} {path} is a file, not a folder")
    if not create and not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise GhostError(f"cannot create {what} {path}: {parent} is a file")
        check_writable_folder(parent, f"cannot create {what} {path}: folder")
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise GhostError(f"cannot create {what} {path} ({e.strerror or e})")
    return check_writable_folder(path, what)


def pid_alive(pid):
    """Whether a process of this machine with this PID is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


# A temporary output: `.{stem}.tmp{pid}_{k}{ext}` (see AtomicOutputs.tmp).
_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)_\d+")


def remove_stale_temporaries(folder):
    """Delete temporary outputs that a killed run (its PID gone) left in `folder`;
    those of running processes stay."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = _TMP_NAME.match(name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


class AtomicOutputs:
    """Collects outputs under temporary names; commit() renames them all.

    `tmp(final)` returns a temporary path in the same folder, with the same
    extension (writers such as np.save or savefig look at it); stale temporaries
    of killed runs in that folder are removed first.  If the block raises, every
    temporary file is removed and no final file is touched; an OSError (disk
    full, ...) becomes a one-line error naming the output.
    """

    def __init__(self):
        self.pending = []  # (tmp, final)
        self.cleaned = set()

    def tmp(self, final):
        folder = check_output_dir(final)
        if folder not in self.cleaned:
            remove_stale_temporaries(folder)
            self.cleaned.add(folder)
        stem, ext = os.path.splitext(os.path.basename(final))
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
            try:
                self.commit()
            except OSError as e:
                exc_type, exc = OSError, e
        if exc_type is not None:
            finals = dict(self.pending)
            self.discard()
            if issubclass(exc_type, OSError):
                name = finals.get(exc.filename, exc.filename) or "the outputs"
                raise GhostError(f"could not write {name} ({exc.strerror or exc}); "
                                 "nothing was written") from exc
        return False


class FolderLock:
    """One writer at a time for a folder: a lock file holding the owner's PID.
    Refused with a clear message while the owner lives; taken over when it is dead
    (a killed run).  Use as a context manager; `what` names the folder's option."""

    def __init__(self, folder, what, name=".ghost_tracks.lock"):
        self.path, self.what, self.held = os.path.join(folder, name), what, False

    def _owner(self):
        try:
            with open(self.path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    raise GhostError(
                        f"{self.what} {os.path.dirname(self.path)} is in use by another run "
                        f"(PID {owner}, lock {self.path}): wait for it or choose another "
                        f"{self.what}")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)  # its owner is gone: take it over
                continue
            except OSError as e:
                raise GhostError(f"cannot lock {self.what} {os.path.dirname(self.path)} "
                                 f"({e.strerror or e})")
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise GhostError(f"cannot take the lock {self.path}: another run keeps taking it")

    def release(self):
        if self.held and self._owner() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
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


def _find_key(directory, path):
    """The key at `path`, found through directories by key, never by reading the
    object (an RNTuple is not a TObject); None if absent."""
    *dirs, name = path.split("/")
    for d in dirs:
        directory = directory.GetDirectory(d)
        if not directory:
            return None
    return directory.GetKey(name) or None


TTREE_CLASSES = ("TTree", "TNtuple")
RNTUPLE_CLASSES = ("ROOT::RNTuple",)
# Column types RDataFrame hands to numpy as plain numbers (ROOT's and C++'s spellings).
NUMBER_TYPES = {
    "Float_t": "float32", "float": "float32", "Double_t": "float64", "double": "float64",
    "Char_t": "int8", "std::int8_t": "int8", "UChar_t": "uint8", "std::uint8_t": "uint8",
    "Short_t": "int16", "std::int16_t": "int16", "UShort_t": "uint16",
    "std::uint16_t": "uint16", "Int_t": "int32", "int": "int32", "std::int32_t": "int32",
    "UInt_t": "uint32", "std::uint32_t": "uint32", "Long64_t": "int64",
    "std::int64_t": "int64", "ULong64_t": "uint64", "std::uint64_t": "uint64",
    "Bool_t": "bool", "bool": "bool",
}


@dataclass(frozen=True)
class TreeInfo:
    """What one file holds at the tree path, read from its header only."""
    path: str
    kind: str      # "TTree" or "RNTuple"
    entries: int
    columns: dict  # column name -> numpy type name, or ROOT's type name if not a number

    def schema(self):
        return self.kind, tuple(sorted(self.columns.items()))


def inspect_tree(path, tree):
    """Kind, entry count and column types of `tree` in one file, without handing
    the file to RDataFrame: a clear error for a missing, corrupt or truncated file,
    a missing tree or an object that is no tree."""
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
        key = _find_key(f, tree)
        if key is None:
            there = _list_datasets(f)
            raise GhostError(f"{path} has no tree {tree!r}; trees there: "
                             f"{', '.join(there) if there else 'none'}")
        cls = key.GetClassName()
        try:
            if cls in TTREE_CLASSES:
                return _ttree_info(path, key.ReadObj())
            if cls in RNTUPLE_CLASSES:
                return _rntuple_info(ROOT, path, key.ReadObject[ROOT.RNTuple]())
        except GhostError:
            raise
        except Exception as e:  # cppyy turns C++ exceptions into Python ones
            raise GhostError(f"{path}: cannot read the header of {tree!r}: {one_line(e)}")
        raise GhostError(f"{path}: {tree!r} is a {cls}, not a TTree or an RNTuple")
    finally:
        f.Close()


def _ttree_info(path, t):
    columns = {}
    for branch in t.GetListOfBranches():
        leaves = branch.GetListOfLeaves()
        leaf = leaves[0] if leaves.GetEntries() == 1 else None
        if leaf is not None and leaf.GetLen() == 1 and not leaf.GetLeafCount():
            kind = str(leaf.GetTypeName())
        else:
            kind = str(branch.GetClassName() or "array")
        columns[str(branch.GetName())] = NUMBER_TYPES.get(kind, kind)
    return TreeInfo(path, "TTree", int(t.GetEntries()), columns)


def _rntuple_info(ROOT, path, anchor):
    reader = ROOT.RNTupleReader.Open(anchor)
    columns = {}
    for field in reader.GetDescriptor().GetTopLevelFields():
        kind = str(field.GetTypeName())
        columns[str(field.GetFieldName())] = NUMBER_TYPES.get(kind, kind)
    return TreeInfo(path, "RNTuple", int(reader.GetNEntries()), columns)


def read_root(files, tree, columns, threads=0, optional=()):
    """Read `columns` (+ the `optional` ones that every file has) of one tree from
    several files as one dataset, as float32 arrays {name: array} in entry order.

    Each file is inspected first (kind, schema, entries), so bad input is a clear
    error and never reaches RDataFrame, which would crash or misread: a column
    missing or not a number is named with its file; empty files are skipped;
    consecutive files of the same kind and schema are read by one RDataFrame, and
    a set that mixes TTrees and RNTuples or branch types is read group by group,
    each with its own types, then converted.  With threads > 1 ROOT reads clusters
    in any order (and rdfentry_ is then not the entry number), so the rows are
    sorted by their values instead: the same files always give the same order."""
    ROOT = import_root()
    infos = [inspect_tree(path, tree) for path in files]
    for info in infos:
        missing = [c for c in columns if c not in info.columns]
        if missing:
            raise GhostError(f"tree {tree!r} in {info.path} lacks branches: "
                             f"{', '.join(missing)}")
    wanted = list(columns) + [c for c in optional if c not in columns
                              and all(c in info.columns for info in infos)]
    for info in infos:
        odd = [f"{c} ({info.columns[c]})" for c in wanted if info.columns[c] not in
               NUMBER_TYPES.values()]
        if odd:
            raise GhostError(f"{info.path}: branches {', '.join(odd)} are not plain "
                             "numbers (one value per track)")
    if not wanted:
        return {}
    _note_mixed_types(infos, wanted)
    groups = _same_schema_groups([info for info in infos if info.entries > 0])
    if not groups:
        return {c: np.empty(0, dtype=np.float32) for c in wanted}
    parallel = bool(threads and threads > 1)
    if parallel:
        ROOT.EnableImplicitMT(threads)
    try:
        parts = [_read_columns(ROOT, [info.path for info in group], tree, wanted)
                 for group in groups]
    finally:
        if parallel:  # later reads in this process stay in entry order
            ROOT.DisableImplicitMT()
    arrays = parts[0] if len(parts) == 1 else {
        c: np.concatenate([p[c] for p in parts]) for c in wanted}
    if parallel:
        order = np.lexsort(list(arrays.values())[::-1])
        arrays = {c: a[order] for c, a in arrays.items()}
    return arrays


def _same_schema_groups(infos):
    """Runs of consecutive files that one RDataFrame can read: same kind, same
    columns, same types."""
    groups = []
    for info in infos:
        if groups and groups[-1][-1].schema() == info.schema():
            groups[-1].append(info)
        else:
            groups.append([info])
    return groups


def _note_mixed_types(infos, wanted):
    kinds = sorted({info.kind for info in infos})
    mixed = {c: sorted({info.columns[c] for info in infos}) for c in wanted}
    mixed = {c: t for c, t in mixed.items() if len(t) > 1}
    if len(kinds) > 1 or mixed:
        what = [" and ".join(kinds)] if len(kinds) > 1 else []
        what += [f"{c} as {' / '.join(t)}" for c, t in mixed.items()]
        log(f"note: the input files differ ({'; '.join(what)}): read file by file, "
            "each with its own types, converted to float32")


def _read_columns(ROOT, files, tree, wanted):
    names = ROOT.std.vector("std::string")(files)
    try:
        df = ROOT.RDataFrame(tree, names)
        if sys.stdout.isatty():  # a live progress bar for people, nothing in logs
            ROOT.RDF.Experimental.AddProgressBar(df)
        arrays = df.AsNumpy(wanted)
    except Exception as e:  # cppyy turns C++ exceptions into Python ones
        raise GhostError(f"reading {tree!r} from {', '.join(files)} failed: {one_line(e)}")
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
            meta = json.load(f)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {path}: {one_line(e)}")
    if not isinstance(meta, dict):
        raise GhostError(f"{path} holds a JSON {type(meta).__name__}, not an object")
    _check_meta(meta, path)
    return meta


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_meta(meta, path):
    """The parts of a dataset's JSON that models are built from: feature names and
    the normalization, one finite offset and one positive scale per feature."""
    names = meta.get("features")
    if names is not None and not (isinstance(names, list) and names
                                  and all(isinstance(n, str) for n in names)):
        raise GhostError(f"{path}: 'features' must be a list of branch names")
    norm = meta.get("normalization")
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise GhostError(f"{path}: 'normalization' must be an object with offsets and scales")
    for key in ("offsets", "scales"):
        values = norm.get(key)
        if not (isinstance(values, list) and all(_is_number(v) for v in values)):
            raise GhostError(f"{path}: normalization {key} must be a list of finite numbers")
        if names is not None and len(values) != len(names):
            raise GhostError(f"{path}: the normalization has {len(values)} {key} for "
                             f"{len(names)} features")
    if any(v <= 0 for v in norm["scales"]):
        raise GhostError(f"{path}: normalization scales must be positive")


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
