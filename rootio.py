"""ROOT files in and out: find the inputs, inspect each file's tree, read columns
with RDataFrame as float32 numpy arrays, write arrays as a TTree or an RNTuple.

ROOT is imported inside the functions (import_root), so the rest of the toolkit
runs on a machine without it.
"""
import glob
import os
import sys
from dataclasses import dataclass

import numpy as np

from utils import GhostError, log, one_line

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
        elif cls in TTREE_CLASSES + RNTUPLE_CLASSES:
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


def stack_columns(columns, names, rows=None):
    """Columns {name: array} -> one float32 [n, len(names)] array in that order,
    of the given rows (all by default), built column by column."""
    n = len(columns[names[0]]) if rows is None else len(rows)
    data = np.empty((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        data[:, j] = columns[name] if rows is None else columns[name][rows]
    return data


def write_results(path, histograms, graphs, table, shown=None):
    """Results for ROOT users, as TMVA writes them: `histograms` {name: (counts,
    edges, title)} as TH1D, `graphs` {name: (x, y, title)} as TGraph, and `table`
    {column: array} as the TTree `thresholds`."""
    ROOT = import_root()
    try:
        f = ROOT.TFile.Open(path, "RECREATE")
        if not f or f.IsZombie():
            raise OSError("cannot create the file")
        keep = []
        for name, (counts, edges, title) in histograms.items():
            h = ROOT.TH1D(name, title, len(counts), np.asarray(edges, dtype=np.float64))
            for i, c in enumerate(counts, 1):
                h.SetBinContent(i, float(c))
            h.SetEntries(float(np.sum(counts)))
            h.Write()
            keep.append(h)
        for name, (x, y, title) in graphs.items():
            g = ROOT.TGraph(len(x), np.ascontiguousarray(x, dtype=np.float64),
                            np.ascontiguousarray(y, dtype=np.float64))
            g.SetNameTitle(name, title)
            g.Write(name)
            keep.append(g)
        f.Close()
    except Exception as e:  # cppyy turns C++ exceptions into Python ones
        raise GhostError(f"could not write {shown or path}: {one_line(e, last=False)}")
    opts = ROOT.RDF.RSnapshotOptions()
    opts.fMode = "UPDATE"
    try:
        columns = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in table.items()}
        ROOT.RDF.FromNumpy(columns).Snapshot("thresholds", path, list(columns), opts)
    except Exception as e:
        raise GhostError(f"could not write {shown or path}: {one_line(e, last=False)}")
