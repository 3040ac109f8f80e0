"""ROOT files in: inspect each file's tree, read columns with RDataFrame as float32
numpy arrays (whole, or into chosen rows; chunk by chunk: rootstream).  Writing is rootwrite's
(write_root and write_results, also reachable from here).

ROOT is imported inside the functions (import_root), so the rest of the toolkit
runs on a machine without it.
"""
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from cli import Stopped, auto_threads
from utils import GhostError, log, no_stderr, one_line

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


def import_root():
    try:
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
        with no_stderr():  # ROOT's decompressors print a corrupt record's error raw
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


MATRIX = "__matrix__"  # read_root(..., matrix=True): the key of the columns' [n, k] array


def read_root(files, tree, columns, threads=None, optional=(), matrix=False, rows=None,
              note=True):
    """Read `columns` (+ the `optional` ones that every file has) of one tree from
    several files as one dataset, as float32 arrays {name: array} in entry order.

    Each file is inspected first (kind, schema, entries), so bad input is a clear
    error and never reaches RDataFrame, which would crash or misread: a column
    missing or not a number is named with its file; empty files are skipped;
    consecutive files of the same kind and schema are read by one RDataFrame, and
    a set that mixes TTrees and RNTuples or branch types is read group by group,
    each with its own types, then converted (`note`: a line says so).  threads > 1:
    ROOT's implicit multi-threading reads clusters in parallel and in any order;
    each row is stored at its entry number (_entry_counter), so the result is the
    serial read's, row for row.  threads None: auto_threads.  matrix: `columns`
    (True) or the columns listed come as one float32 [rows, len(them)] array under
    MATRIX (ROOT stores each value straight into its row and column: no stacking
    copy), the others as arrays.  rows: int per entry of the files, the row it is
    stored into (-1: none): the arrays hold rows.max() + 1 rows."""
    ROOT = import_root()
    groups, wanted = _plan(files, tree, columns, optional, note)
    if not wanted:
        return {}
    total = sum(info.entries for group in groups for info in group)
    if rows is not None and len(rows) != total:
        raise GhostError(f"the input files changed while being read ({total:,} entries)")
    n_rows = total if rows is None else int(rows.max(initial=-1)) + 1
    threads = auto_threads(total) if threads is None else threads
    stack = list(columns) if matrix is True else list(matrix or ())
    stacked = np.empty((n_rows, len(stack)), dtype=np.float32) if stack else None
    out = {c: stacked[:, stack.index(c)] if c in stack else
           np.empty(n_rows, dtype=np.float32) for c in wanted}
    if threads > 1:
        ROOT.EnableImplicitMT(threads)
    try:
        start = 0
        for group in groups:  # each group fills its rows of the arrays
            n = sum(info.entries for info in group)
            part = {c: a[start:start + n] for c, a in out.items()} if rows is None else out
            _read_columns(ROOT, group, tree, part, ordered=threads > 1,
                          rows=None if rows is None else rows[start:start + n])
            start += n
    finally:
        if threads > 1:  # later reads and writes in this process stay serial
            ROOT.DisableImplicitMT()
    if not stack:
        return out
    return {MATRIX: stacked, **{c: a for c, a in out.items() if c not in stack}}


def _plan(files, tree, columns, optional, note):
    """(the groups of files one RDataFrame reads, the columns read), each file
    inspected and checked (checked_inputs)."""
    infos, wanted = checked_inputs(files, tree, columns, optional, note)
    return _same_schema_groups([info for info in infos if info.entries > 0]), wanted


def checked_inputs(files, tree, columns, optional=(), note=True):
    """Each file inspected (inspect_tree) and checked before RDataFrame sees it:
    (the TreeInfos, the columns to read: `columns` and the `optional` ones every
    file has).  A column missing or not a number is named with its file; files
    that differ in kind or types are noted (`note`)."""
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
    if wanted and note:
        _note_mixed_types(infos, wanted)
    return infos, wanted


# Each row's entry number under implicit multi-threading: at the start of every
# task (one cluster range of one file) DefinePerSample sets the slot's counter to
# the file's first entry in the dataset plus the range's first entry; each row
# then takes the counter's next value (a task's entries are read in order).
ENTRY_COLUMN = "ghost_entry_"
_ENTRY_CODE = r"""
#include <ROOT/RDF/RSampleInfo.hxx>
#include <string>
#include <unordered_map>
#include <vector>
namespace ghost_rdf {
std::unordered_map<std::string, ULong64_t> offsets;  // sample id -> first entry
std::vector<ULong64_t> next;                          // per slot
void reset(unsigned slots) { offsets.clear(); next.assign(slots, 0); }
void add(const std::string &id, ULong64_t first) { offsets[id] = first; }
ULong64_t task_start(unsigned slot, const ROOT::RDF::RSampleInfo &info) {
   auto it = offsets.find(info.AsString());
   if (it == offsets.end()) throw std::runtime_error("unknown sample " + info.AsString());
   next[slot] = it->second + info.EntryRange().first;
   return next[slot];
}
ULong64_t entry(unsigned slot, ULong64_t) { return next[slot]++; }
}
"""


def _entry_counter(ROOT, df, group, tree):
    """df with ENTRY_COLUMN, every row's entry number in the group's files."""
    if not hasattr(ROOT, "ghost_rdf"):
        ROOT.gInterpreter.Declare(_ENTRY_CODE)
    ROOT.ghost_rdf.reset(max(df.GetNSlots(), 1))
    first = 0
    for info in group:
        ROOT.ghost_rdf.add(f"{info.path}/{tree}", first)
        first += info.entries
    return (df.DefinePerSample("ghost_task_", "ghost_rdf::task_start(rdfslot_, rdfsampleinfo_)")
              .Define(ENTRY_COLUMN, "ghost_rdf::entry(rdfslot_, ghost_task_)"))


# A read that listens and talks (ROOT's own progress bar guessed 7 min for a 6 s read:
# it counts from before the just-in-time compilation).  Every PROGRESS_STEP entries
# of each thread: a SIGINT or SIGTERM received meanwhile (caught here in C++: the
# interpreter runs Python's handlers only between its own steps, after the loop)
# ends the loop, and on a terminal a progress line shows the entries read and the
# time left, estimated from the rate since the loop's first step.
PROGRESS_STEP = 20_000
_PROGRESS_CODE = r"""
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <ROOT/RResultPtr.hxx>
namespace ghost_read {
using clock = std::chrono::steady_clock;
volatile std::sig_atomic_t signum = 0;
struct sigaction old_int, old_term;
std::atomic<ULong64_t> done{0};
ULong64_t total = 0, step = 1, first = 0;
bool show = false, shown = false;
clock::time_point t0, last;
std::mutex lock;
void on_signal(int s) { signum = s; }
void listen() {
   struct sigaction sa {};
   sa.sa_handler = on_signal;
   sigemptyset(&sa.sa_mask);
   signum = 0;
   sigaction(SIGINT, &sa, &old_int);
   sigaction(SIGTERM, &sa, &old_term);
   if (old_int.sa_handler == SIG_IGN) sigaction(SIGINT, &old_int, nullptr);
   if (old_term.sa_handler == SIG_IGN) sigaction(SIGTERM, &old_term, nullptr);
}
int unlisten() {
   sigaction(SIGINT, &old_int, nullptr);
   sigaction(SIGTERM, &old_term, nullptr);
   if (shown) std::fputs("\n", stderr);
   return signum;
}
void tick(unsigned, ULong64_t &) {
   if (signum) throw std::runtime_error("stopped by a signal");
   ULong64_t d = done += step;
   if (!show) return;
   std::lock_guard<std::mutex> guard(lock);
   auto now = clock::now();
   if (first == 0) { first = d; t0 = last = now; return; }
   double run = std::chrono::duration<double>(now - t0).count();
   if (std::chrono::duration<double>(now - last).count() < 1.0 || d <= first) return;
   last = now;
   double left = run * double(total > d ? total - d : 0) / double(d - first);
   std::fprintf(stderr, "\r  read %llu of %llu entries (%.0f %%), about %.0f s left   ",
                (unsigned long long)d, (unsigned long long)total, 100.0 * d / total, left);
   std::fflush(stderr);
   shown = true;
}
void watch(ROOT::RDF::RResultPtr<ULong64_t> &count, ULong64_t n, ULong64_t every, bool tty) {
   done = 0; total = n; step = every; first = 0; show = tty; shown = false;
   count.OnPartialResultSlot(every, tick);
}
}
"""


def _count_listening(ROOT, count, n):
    """count.GetValue() (the read's event loop) with a progress line on a terminal,
    ended early by SIGINT or SIGTERM: Stopped then, as anywhere in a run."""
    if not hasattr(ROOT, "ghost_read"):
        ROOT.gInterpreter.Declare(_PROGRESS_CODE)
    ROOT.ghost_read.watch(count, n, PROGRESS_STEP, sys.stderr.isatty())
    ROOT.ghost_read.listen()
    try:
        stored = int(count.GetValue())
    except Exception:
        if signum := ROOT.ghost_read.unlisten():
            raise Stopped(signum) from None
        raise
    if signum := ROOT.ghost_read.unlisten():
        raise Stopped(signum)
    return stored


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


# A read into scattered rows (read_root's `rows`) asks for the rows this many entries
# ahead while it stores one: a quarter less time into 10M shuffled rows.
PREFETCH = 16


def _read_columns(ROOT, group, tree, out, ordered=False, rows=None):
    """One RDataFrame over the group's files fills `out` {column: float32 array of
    the group's entries, contiguous or a strided view}: ROOT's event loop converts
    each value to float and stores it at its entry's element, so nothing is
    copied, stacked or reordered after the loop.  `ordered`: under implicit
    multi-threading the entry is ENTRY_COLUMN's, in a serial loop rdfentry_.
    `rows` (signed int, one per entry): entry e goes to element rows[e] instead,
    nowhere if negative."""
    files = [info.path for info in group]
    n = sum(info.entries for info in group)
    entry = ENTRY_COLUMN if ordered else "rdfentry_"

    def index(e):  # the element entry e goes to
        if rows is not None:
            return (f"std::int64_t(reinterpret_cast<const std::int{rows.itemsize * 8}_t*>"
                    f"({rows.ctypes.data}ULL)[{e}])")
        return e

    def address(a, e):
        return f"reinterpret_cast<float*>({a.ctypes.data}ULL) + {index(e)} * {a.strides[0] // 4}"
    store = "(" + ", ".join(f"*({address(a, entry)}) = static_cast<float>({c})"
                            for c, a in out.items()) + ", true)"
    if rows is not None:
        ahead = f"{entry} + {PREFETCH}"
        fetch = ", ".join(f"__builtin_prefetch({address(a, ahead)}, 1)" for a in out.values())
        store = f"({ahead} >= {n}ULL || ({fetch}, true)) && ({index(entry)} < 0 || {store})"
    try:
        df = ROOT.RDataFrame(tree, ROOT.std.vector("std::string")(files))
        if ordered:
            df = _entry_counter(ROOT, df, group, tree)
        count = df.Filter(f"{entry} < {n}ULL && {store}").Count()
        stored = _count_listening(ROOT, count, n)
    except Exception as e:  # cppyy turns C++ exceptions into Python ones
        raise GhostError(f"reading {tree!r} from {', '.join(files)} failed: {one_line(e)}")
    if stored != n:
        raise GhostError(f"reading {tree!r} from {', '.join(files)} gave {stored:,} of "
                         f"its {n:,} entries")
