"""ROOT files out: numpy columns as a TTree or an RNTuple (write_root), and the
analysis results as histograms, graphs and a table (write_results).

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

import numpy as np

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
#include <ROOT/RNTupleModel.hxx>
#include <ROOT/RNTupleWriter.hxx>
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
std::string ttree(TDirectory *dir, const std::string &name, const Strings &names,
                  const std::string &leaves, const std::vector<ULong64_t> &from,
                  const std::vector<int> &sizes, Long64_t n) {
   TFile *file = dir->GetFile();
   TDirectory::TContext here(dir);
   auto *tree = new TTree(name.c_str(), name.c_str());  // in `dir`, which owns it
   std::vector<std::vector<char>> slots(names.size());
   std::vector<void *> to;
   for (std::size_t j = 0; j < names.size(); ++j) {
      slots[j].resize(sizes[j]);
      to.push_back(slots[j].data());
      tree->Branch(names[j].c_str(), to[j], (names[j] + "/" + leaves[j]).c_str());
   }
   for (Long64_t i = 0; i < n; ++i) {
      copy_row(i, from, sizes, to);
      if (tree->Fill() < 0 || file->TestBit(TFile::kWriteError)) return "filling the tree failed";
   }
   if (tree->Write() <= 0 || file->TestBit(TFile::kWriteError)) return "writing the tree failed";
   return "";
}
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
            types = ROOT.std.vector("std::string")(
                [ROOT_TYPES[str(v.dtype)][1] for v in cols.values()])
            return ROOT.ghost_write.rntuple(where, name, names, types, addresses, sizes, n,
                                            -1 if zstd_level is None else 500 + zstd_level)
        leaves = "".join(ROOT_TYPES[str(v.dtype)][0] for v in cols.values())
        return ROOT.ghost_write.ttree(where, name, names, leaves, addresses, sizes, n)

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
        ROOT.gSystem.Load("libROOTNTuple")  # the JIT-compiled code calls into it
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
    if problem and not code and _full(path):
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


def _full(path):
    """Whether the file system holding `path` has no space left."""
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return False


def write_results(path, histograms, graphs, table, shown=None):
    """Results for ROOT users, as TMVA writes them: `histograms` {name: (counts,
    edges, title)} as TH1D, `graphs` {name: (x, y, title)} as TGraph, and `table`
    {column: array} as the TTree `thresholds` (filled row by row: a few dozen rows).
    Written and checked as write_root writes a tree."""
    ROOT = import_root()

    def fill(f):
        objects = []
        for name, (counts, edges, title) in histograms.items():
            h = ROOT.TH1D(name, title, len(counts), np.asarray(edges, dtype=np.float64))
            h.SetContent(np.r_[0.0, np.asarray(counts, dtype=np.float64), 0.0])
            h.SetEntries(float(np.sum(counts)))
            objects.append((h, name))
        for name, (x, y, title) in graphs.items():
            g = ROOT.TGraph(len(x), np.ascontiguousarray(x, dtype=np.float64),
                            np.ascontiguousarray(y, dtype=np.float64))
            g.SetNameTitle(name, title)
            objects.append((g, name))
        columns = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in table.items()}
        buffers = {k: np.zeros(1, dtype=np.float64) for k in columns}
        tree = ROOT.TTree("thresholds", "thresholds")
        for k, buf in buffers.items():
            tree.Branch(k, buf, f"{k}/D")
        for i in range(len(next(iter(columns.values()), []))):
            for k, buf in buffers.items():
                buf[0] = columns[k][i]
            tree.Fill()
        objects.append((tree, "thresholds"))
        failed = [name for obj, name in objects if obj.Write(name) <= 0]
        return f"writing {', '.join(failed)} failed" if failed else ""

    def check():
        f = ROOT.TFile.Open(path, "READ")
        if not f or f.IsZombie():
            return "it does not read back"
        names = {key.GetName() for key in f.GetListOfKeys()}
        f.Close()
        missing = sorted((set(histograms) | set(graphs) | {"thresholds"}) - names)
        return f"it reads back without {', '.join(missing)}" if missing else ""
    _write_file(ROOT, path, shown, fill, check)
