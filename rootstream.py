"""ROOT files read in chunks of entries, so a reader holds one chunk and never the
whole file: one serial RDataFrame event loop per run of files of the same schema
fills a chunk's arrays and calls back into Python each time the chunk is full.
Its one reason to change is how rows come back in chunks; which files are read and
how they are checked is rootio's.

Why one event loop with a callback rather than the alternatives: a new
RDataFrame with Range(start, stop) per chunk starts an event loop (and its
just-in-time compilation) for every chunk, and Range is refused under implicit
multi-threading; clusters read in parallel arrive in any order, so a chunk would
wait for its slowest cluster.  (Chosen by these costs; the alternatives were not
timed.)  The loop is serial: --threads does not speed it up.
"""
import numpy as np

from rootio import MATRIX, _count_listening, _same_schema_groups, checked_inputs, import_root
from utils import GhostError, one_line

# Each entry's row in the chunk: (the group's first entry + rdfentry_) % chunk; once
# the chunk's last row is stored, Python's callback takes the chunk (it returns
# false after an exception of its own, which ends the loop and is raised again).
_STREAM_CODE = r"""
#include <functional>
#include <stdexcept>
namespace ghost_stream {
ULong64_t chunk = 1, offset = 0;
std::function<bool(ULong64_t)> flush;
void start(ULong64_t rows, std::function<bool(ULong64_t)> f) { chunk = rows; flush = f; }
void group(ULong64_t first) { offset = first; }
ULong64_t row(ULong64_t entry) { return (offset + entry) % chunk; }
bool stored(ULong64_t row, ULong64_t entry) {
   if (row + 1 == chunk && !flush(offset + entry + 1 - chunk))
      throw std::runtime_error("the chunk's callback failed");
   return true;
}
}
"""


def stream_root(files, tree, columns, chunk, on_chunk, optional=()):
    """Read `columns` (+ the `optional` ones every file has) of one tree from
    several files as one dataset, as rootio.read_root(..., matrix=True) does, but in
    consecutive chunks of `chunk` entries in entry order (the last one shorter):
    on_chunk(first entry, total entries, {MATRIX: float32 [n, len(columns)], other:
    float32 [n]}) for each.  The arrays are reused for the next chunk: the callback copies what it
    keeps.  Returns the number of entries read."""
    ROOT = import_root()
    infos, wanted = checked_inputs(files, tree, columns, optional)
    groups = _same_schema_groups([info for info in infos if info.entries > 0])
    total = sum(info.entries for group in groups for info in group)
    rows = max(1, min(int(chunk), total))
    matrix = np.empty((rows, len(columns)), dtype=np.float32)
    out = {c: matrix[:, j] for j, c in enumerate(columns)}
    out.update((c, np.empty(rows, dtype=np.float32)) for c in wanted if c not in out)
    rest = [c for c in wanted if c not in columns]
    failed = []

    def give(first, n):
        on_chunk(first, total, {MATRIX: matrix[:n], **{c: out[c][:n] for c in rest}})

    def flush(first):
        try:
            give(int(first), rows)
        except BaseException as e:  # raised again once ROOT's loop has ended
            failed.append(e)
            return False
        return True

    if not hasattr(ROOT, "ghost_stream"):
        ROOT.gInterpreter.Declare(_STREAM_CODE)
    ROOT.ghost_stream.start(rows, flush)
    first = 0
    try:
        for group in groups:
            ROOT.ghost_stream.group(first)
            first += _stream_group(ROOT, group, tree, out, failed)
    finally:
        ROOT.ghost_stream.start(1, ROOT.nullptr)  # no callback into a finished read
    if total % rows:
        give(total - total % rows, total % rows)
    return total


def _stream_group(ROOT, group, tree, out, failed):
    """One serial RDataFrame over the group's files: each entry's values stored in
    its row of the chunk's arrays (`out`, contiguous or strided views), the chunk
    handed on when full.  Returns the group's entries."""
    files = [info.path for info in group]
    n = sum(info.entries for info in group)
    stores = ", ".join(f"reinterpret_cast<float*>({a.ctypes.data}ULL)"
                       f"[ghost_row_ * {a.strides[0] // a.itemsize}] = static_cast<float>({c})"
                       for c, a in out.items())
    try:
        df = ROOT.RDataFrame(tree, ROOT.std.vector("std::string")(files))
        df = df.Define("ghost_row_", "ghost_stream::row(rdfentry_)")
        count = df.Filter(f"({stores}, ghost_stream::stored(ghost_row_, rdfentry_))").Count()
        stored = _count_listening(ROOT, count, n)
    except Exception as e:  # cppyy turns C++ exceptions into Python ones
        if failed:
            raise failed[0] from None
        raise GhostError(f"reading {tree!r} from {', '.join(files)} failed: {one_line(e)}")
    if failed:
        raise failed[0]
    if stored != n:
        raise GhostError(f"reading {tree!r} from {', '.join(files)} gave {stored:,} of "
                         f"its {n:,} entries")
    return n
