"""ROOT files out: numpy columns as a TTree or an RNTuple (write_root), and the
analysis results as trees, histograms, graphs, efficiencies and texts (write_results).

Every write goes through _write_file: the file is created with TFile and filled by
code that reports a failure instead of aborting (RDataFrame's Snapshot aborts the
process when the disk fills, throwing while it finalizes), checked (no write
error, every entry there when read back) and removed if anything failed, with one
line naming the output and the system's reason (a full disk, a quota, a read-only
file system).  ROOT is imported inside the functions (rootio.import_root).
"""
import contextlib
import errno
import os
import re

import numpy as np

from outputs import disk_full
from rootio import import_root, inspect_tree
from utils import GhostError, one_line

# numpy type -> (TTree leaf letter, C++ type of an RNTuple field)
ROOT_TYPES = {
    "float32": ("F", "float"), "float64": ("D", "double"), "int8": ("B", "std::int8_t"),
    "uint8": ("b", "std::uint8_t"), "int16": ("S", "std::int16_t"),
    "uint16": ("s", "std::uint16_t"), "int32": ("I", "std::int32_t"),
    "uint32": ("i", "std::uint32_t"), "int64": ("L", "std::int64_t"),
    "uint64": ("l", "std::uint64_t"), "bool": ("O", "bool"),
}
# Columns to a TTree or an RNTuple in C++, every failure returned as a message:
# RDataFrame's Snapshot aborts the process when the disk fills (an exception thrown
# while it finalizes).  ROOT's error messages are recorded, not printed, meanwhile,
# with the errno of a failed system call.
_WRITE_CODE = r"""
#include <TError.h>
#include <TFile.h>
#include <TTree.h>
#include <cerrno>
#include <cstring>
namespace ghost_write {
using Strings = std::vector<std::string>;
int last_errno = 0;
std::string last_error;
ErrorHandlerFunc_t previous = nullptr;
void record(int level, Bool_t abort, const char *location, const char *msg) {
   if (level >= kSysError && errno) last_errno = errno;
   if (level >= kError && last_error.empty()) last_error = msg;
}
void start() { errno = last_errno = 0; last_error.clear(); previous = SetErrorHandler(record); }
void stop() { SetErrorHandler(previous); }
// value i of each column into its slot
void copy_row(Long64_t i, const std::vector<ULong64_t> &from, const std::vector<int> &sizes,
              const std::vector<void *> &to) {
   for (std::size_t j = 0; j < to.size(); ++j)
      std::memcpy(to[j], reinterpret_cast<const char *>(from[j]) + i * sizes[j], sizes[j]);
}
std::string ttree(TDirectory *dir, const std::string &name, const std::string &title,
                  const Strings &names,
                  const std::string &leaves, const std::vector<ULong64_t> &from,
                  const std::vector<int> &sizes, Long64_t n) {
   TFile *file = dir->GetFile();
   TDirectory::TContext here(dir);
   auto *tree = new TTree(name.c_str(), title.c_str());  // in `dir`, which owns it
   std::vector<std::vector<char>> slots(names.size());
   std::vector<std::string> texts(names.size());  // 'C': a std::string branch
   std::vector<void *> to;
   for (std::size_t j = 0; j < names.size(); ++j) {
      slots[j].resize(sizes[j] + 1);  // a string's terminator after it
      to.push_back(slots[j].data());
      if (leaves[j] == 'C')
         tree->Branch(names[j].c_str(), &texts[j]);
      else
         tree->Branch(names[j].c_str(), to[j], (names[j] + "/" + leaves[j]).c_str());
   }
   for (Long64_t i = 0; i < n; ++i) {
      copy_row(i, from, sizes, to);
      for (std::size_t j = 0; j < names.size(); ++j)
         if (leaves[j] == 'C') texts[j] = slots[j].data();
      if (tree->Fill() < 0 || file->TestBit(TFile::kWriteError)) return "filling the tree failed";
   }
   if (tree->Write() <= 0 || file->TestBit(TFile::kWriteError)) return "writing the tree failed";
   return "";
}
}
"""
# The RNTuple writer, compiled only by a run that writes one (its headers take as
# long to compile as the rest of the code above).
_RNTUPLE_CODE = r"""
#include <ROOT/RNTupleModel.hxx>
#include <ROOT/RNTupleWriter.hxx>
namespace ghost_write {
std::string rntuple(TDirectory *dir, const std::string &name, const Strings &names,
                    const Strings &types, const std::vector<ULong64_t> &from,
                    const std::vector<int> &sizes, Long64_t n, int compression) {
   try {
      auto model = ROOT::RNTupleModel::CreateBare();
      for (std::size_t j = 0; j < names.size(); ++j)
         model->AddField(ROOT::RFieldBase::Create(names[j], types[j]).Unwrap());
      ROOT::RNTupleWriteOptions options;
      if (compression >= 0) options.SetCompression(compression);
      auto writer = ROOT::RNTupleWriter::Append(std::move(model), name, *dir, options);
      auto entry = writer->CreateEntry();
      std::vector<std::shared_ptr<void>> values;
      std::vector<void *> to;
      for (const auto &field : names) {
         values.push_back(entry->GetPtr<void>(field));
         to.push_back(values.back().get());
      }
      for (Long64_t i = 0; i < n; ++i) {
         copy_row(i, from, sizes, to);
         writer->Fill(*entry);
      }
      writer->CommitDataset();
   } catch (const std::exception &e) {
      return e.what();
   }
   return "";
}
}
"""


def write_root(path, tree, columns, fmt="ttree", zstd_level=None, shown=None):
    """Write {name: array} as `tree` ('dir/name' makes the directory), a TTree or an
    RNTuple, one entry per row in array order, each column with its numpy type.
    `path` is written in place (give it a temporary name, outputs.AtomicOutputs) and
    read back; on any failure it is removed and the error (a full disk: "No space
    left on device") names `shown`."""
    ROOT = import_root()
    cols = {k: np.ascontiguousarray(v) for k, v in columns.items()}
    odd = [f"{k} ({v.dtype})" for k, v in cols.items() if str(v.dtype) not in ROOT_TYPES]
    if odd:
        raise GhostError(f"could not write {shown or path}: no ROOT type for {', '.join(odd)}")
    n = len(next(iter(cols.values()), ()))
    names = ROOT.std.vector("std::string")(list(cols))
    addresses = ROOT.std.vector("ULong64_t")([v.ctypes.data for v in cols.values()])
    sizes = ROOT.std.vector("int")([v.itemsize for v in cols.values()])
    *folders, name = tree.split("/")

    def fill(f):
        where = f
        for folder in folders:
            where = where.mkdir(folder)
        if fmt == "rntuple":
            if not hasattr(ROOT.ghost_write, "rntuple"):
                ROOT.gSystem.Load("libROOTNTuple")  # the JIT-compiled code calls into it
                ROOT.gInterpreter.Declare(_RNTUPLE_CODE)
            types = ROOT.std.vector("std::string")(
                [ROOT_TYPES[str(v.dtype)][1] for v in cols.values()])
            return ROOT.ghost_write.rntuple(where, name, names, types, addresses, sizes, n,
                                            -1 if zstd_level is None else 500 + zstd_level)
        leaves = "".join(ROOT_TYPES[str(v.dtype)][0] for v in cols.values())
        return ROOT.ghost_write.ttree(where, name, name, names, leaves, addresses, sizes, n)

    def check():
        info = inspect_tree(path, tree)
        if info.entries != n or sorted(info.columns) != sorted(cols):
            return f"it reads back with {info.entries:,} of {n:,} entries"
        return ""
    compression = 500 + zstd_level if zstd_level is not None and fmt == "ttree" else None
    _write_file(ROOT, path, shown, fill, check, compression)


def _write_file(ROOT, path, shown, fill, check, compression=None):
    """Create the ROOT file `path`, fill(file) -> "" or what failed, close it, then
    check() -> "" or what is wrong with it read back.  ROOT's messages are recorded
    meanwhile, not printed; any failure removes `path` and raises a one-line error
    naming `shown` (the system's reason where a call failed: a full disk, a quota,
    a read-only file system)."""
    if not hasattr(ROOT, "ghost_write"):
        ROOT.gInterpreter.Declare(_WRITE_CODE)
    ROOT.ghost_write.start()
    problem = ""
    try:
        # opened by its bare name in its folder: a TFile records the name it was
        # created under, and a file keeps no path of the machine that wrote it
        folder, name = os.path.split(os.path.abspath(path))
        try:
            with contextlib.chdir(folder):
                f = ROOT.TFile.Open(name, "RECREATE", "", *([compression] if compression else []))
        except OSError:  # how PyROOT reports a file it cannot open
            f = None
        if not f or f.IsZombie():
            problem = "cannot create the file"
        else:
            try:
                problem = str(fill(f))
            except Exception as e:  # cppyy turns C++ exceptions into Python ones
                problem = one_line(e, last=False)
            f.Close()
            if f.TestBit(ROOT.TFile.kWriteError) and not problem:
                problem = "a write failed"
    finally:
        ROOT.ghost_write.stop()
    code, said = ROOT.ghost_write.last_errno, str(ROOT.ghost_write.last_error)
    if problem and not code and _full(path, said):
        code = errno.ENOSPC  # a short write says no more than that
    if not problem:
        try:
            problem = check()
        except GhostError as e:
            problem = f"it does not read back ({e})"
    if problem:
        with contextlib.suppress(OSError):
            os.remove(path)
        why = os.strerror(code) if code else (said or problem).splitlines()[0]
        raise GhostError(f"could not write {shown or path} ({why})")


def _full(path, said=""):
    """Whether the file system holding `path` has no space left, or less than what
    ROOT's short write (`said`: "... wrote N of M") left unwritten."""
    short = re.search(r"wrote (\d+) of (\d+)", said or "")
    return disk_full(path, int(short[2]) - int(short[1]) if short else 1)


def write_results(path, objects, shown=None):
    """Results for ROOT users, as TMVA writes them: `objects` {name: (kind, title,
    *data)}, each title "title;x axis;y axis":
      ("tree", title, {column: array})         a TTree, as write_root writes one (a
                                               bytes column 'S<n>' a std::string branch)
      ("th1", title, edges, counts)            a TH1D; counts with the underflow and the
                                               overflow (len(edges) + 1), Sumw2 on
      ("th2", title, labels, matrix)           a TH2D, its bins labelled on both axes
      ("graph", title, x, y)                   a TGraph
      ("efficiency", title, edges, passed, total)  a TEfficiency (Clopper-Pearson, 68.3 %)
                                               from counts with the under- and overflow
      ("text", text)                           a TNamed: its title is `text`
    A name "folder/name" is written in that folder.  Written and checked as
    write_root writes a tree: every object read back by name and class, every tree
    with its entries."""
    ROOT = import_root()
    classes = {"tree": "TTree", "th1": "TH1D", "th2": "TH2D", "graph": "TGraph",
               "efficiency": "TEfficiency", "text": "TNamed"}

    def fill(f):
        failed = []
        status = ROOT.TH1.AddDirectoryStatus()
        ROOT.TH1.AddDirectory(False)  # nothing owned by the file but what is written
        try:
            for name, (kind, *data) in objects.items():
                *folders, leaf = name.split("/")
                where = f
                for folder in folders:
                    where = where.GetDirectory(folder) or where.mkdir(folder)
                obj = (_tree if kind == "tree" else _RESULTS[kind])(ROOT, where, leaf, *data)
                if isinstance(obj, str):
                    if obj:
                        return f"{name}: {obj}"
                elif where.WriteTObject(obj, leaf) <= 0 or f.TestBit(ROOT.TFile.kWriteError):
                    failed.append(name)
        finally:
            ROOT.TH1.AddDirectory(status)
        return f"writing {', '.join(failed)} failed" if failed else ""

    def check():
        f = ROOT.TFile.Open(path, "READ")
        if not f or f.IsZombie():
            return "it does not read back"
        try:
            for name, (kind, *data) in objects.items():
                obj = f.Get(name)
                if not obj or obj.ClassName() != classes[kind]:
                    return f"it reads back without {name}"
                if kind == "tree" and obj.GetEntries() != _rows(data[1]):
                    return f"{name} reads back with {obj.GetEntries():,} entries"
        finally:
            f.Close()
        return ""
    _write_file(ROOT, path, shown, fill, check)


def _rows(columns):
    return len(next(iter(columns.values()), ()))


def _tree(ROOT, where, name, title, columns):
    """A TTree of numpy columns in the file (ghost_write.ttree): "" or what failed."""
    cols = {k: np.ascontiguousarray(v) for k, v in columns.items()}
    odd = [f"{k} ({v.dtype})" for k, v in cols.items() if _leaf(v.dtype) is None]
    if odd:
        return f"no ROOT type for {', '.join(odd)}"
    return str(ROOT.ghost_write.ttree(
        where, name, title, ROOT.std.vector("std::string")(list(cols)),
        "".join(_leaf(v.dtype) for v in cols.values()),
        ROOT.std.vector("ULong64_t")([v.ctypes.data for v in cols.values()]),
        ROOT.std.vector("int")([v.itemsize for v in cols.values()]), _rows(cols)))


def _leaf(dtype):
    """The TTree leaf letter of a numpy type (C: bytes, written as std::string), or
    None."""
    return "C" if dtype.kind == "S" else ROOT_TYPES.get(str(dtype), (None,))[0]


def _th1(ROOT, _, name, title, edges, counts):
    h = ROOT.TH1D(name, title, len(edges) - 1, np.asarray(edges, dtype=np.float64))
    h.SetContent(np.asarray(counts, dtype=np.float64))  # bin 0 the underflow
    h.SetEntries(float(np.sum(counts)))
    h.Sumw2()  # filled: the sums of squares are the counts (unit weights)
    return h


def _th2(ROOT, _, name, title, labels, matrix):
    n = len(labels)
    h = ROOT.TH2D(name, title, n, 0.0, float(n), n, 0.0, float(n))
    for i, label in enumerate(labels):
        h.GetXaxis().SetBinLabel(i + 1, label)
        h.GetYaxis().SetBinLabel(i + 1, label)
        for j in range(n):
            h.SetBinContent(i + 1, j + 1, float(matrix[i][j]))
    h.SetEntries(float(n * n))
    return h


def _graph(ROOT, _, name, title, x, y):
    g = ROOT.TGraph(len(x), np.ascontiguousarray(x, dtype=np.float64),
                    np.ascontiguousarray(y, dtype=np.float64))
    g.SetNameTitle(name, title)
    _, *axes = title.split(";") + ["", ""]
    g.GetXaxis().SetTitle(axes[0])
    g.GetYaxis().SetTitle(axes[1])
    return g


def _efficiency(ROOT, _, name, title, edges, passed, total):
    hists = [_th1(ROOT, None, f"{name}_{part}", title, edges, counts)
             for part, counts in (("passed", passed), ("total", total))]
    if not ROOT.TEfficiency.CheckConsistency(*hists):
        return "passed and total counts are not consistent"
    e = ROOT.TEfficiency(*hists)
    e.SetName(name)
    e.SetTitle(title)
    e.SetStatisticOption(ROOT.TEfficiency.kFCP)  # Clopper-Pearson, 68.3 %: the defaults
    return e


_RESULTS = {"th1": _th1, "th2": _th2, "graph": _graph, "efficiency": _efficiency,
            "text": lambda ROOT, _, name, text: ROOT.TNamed(name, text)}
