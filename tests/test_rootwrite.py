"""rootwrite.py: numpy columns as a TTree or an RNTuple, every type kept."""
import os

import numpy as np
import pytest

import rootio
import rootwrite


def test_root_writes_keep_types_and_entries(tmp_path):
    """The writer that replaced RDataFrame's Snapshot: every numpy type as its ROOT
    type, TTree and RNTuple, entries in order, an empty tree."""
    rng = np.random.default_rng(0)
    cols = {"f": rng.normal(size=1000).astype(np.float32), "d": rng.normal(size=1000),
            "i": rng.integers(-5, 5, 1000).astype(np.int32),
            "l": rng.integers(0, 1 << 40, 1000), "b": rng.random(1000) < 0.5,
            "u8": rng.integers(0, 255, 1000).astype(np.uint8)}
    want = {"f": "float32", "d": "float64", "i": "int32", "l": "int64", "b": "bool",
            "u8": "uint8"}
    for fmt in ("ttree", "rntuple"):
        path = str(tmp_path / f"{fmt}.root")
        rootwrite.write_root(path, "dir/sub/t", cols, fmt=fmt, zstd_level=1)
        info = rootio.inspect_tree(path, "dir/sub/t")
        assert info.kind == ("TTree" if fmt == "ttree" else "RNTuple")
        assert info.entries == 1000 and info.columns == want
        back = rootio.read_root([path], "dir/sub/t", list(cols))
        for name, values in cols.items():
            np.testing.assert_array_equal(back[name], values.astype(np.float32))
        rootwrite.write_root(path, "t", {k: v[:0] for k, v in cols.items()}, fmt=fmt)
        assert rootio.inspect_tree(path, "t").entries == 0
    with pytest.raises(rootio.GhostError, match="complex128"):
        rootwrite.write_root(str(tmp_path / "c.root"), "t", {"c": np.zeros(3, complex)})
    assert not os.path.exists(tmp_path / "c.root")


def test_a_short_write_on_a_nearly_full_disk_is_a_full_disk(tmp_path):
    """ROOT says only "wrote N of M" of a short write: the disk is full when it has
    less room than the M - N bytes left unwritten (a tmpfs keeps a partial page)."""
    path = str(tmp_path / "x.root")
    assert rootwrite._full(path, "error writing all requested bytes, wrote 10 of 10000000000000000")
    assert not rootwrite._full(path, "error writing all requested bytes, wrote 10 of 20")
    assert not rootwrite._full(path)  # no short write and room left
