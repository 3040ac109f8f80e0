"""The fault corpus's machinery: corrupt files byte by byte, check a refusal and
that nothing was left behind.  The cases run as a user would run the script, in
children of the fork server (forkserver.py): their imports paid once, not per case.
"""
import os
import sys

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(*folders):
    """{path: (size, mtime)} of every file and folder under `folders`."""
    found = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = os.path.join(root, name)
                st = os.lstat(path)
                found[path] = (st.st_size, st.st_mtime_ns)
    return found


def assert_refused(result, *needles):
    """Exit code 2, exactly one `error:` line (naming the needles), no traceback,
    and nothing else on stderr but warnings and notes."""
    what = f"rc={result.rc}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n" \
           f"{result.stderr[-3000:]}"
    assert result.rc == 2, what
    assert "Traceback" not in result.stdout + result.stderr, what
    errors = result.errors()
    assert len(errors) == 1, what
    others = [ln for ln in result.stderr.splitlines() if ln.strip() and not
              ln.startswith(("error:", "warning:", "note:"))]
    assert not others, what
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def assert_unchanged(before, after):
    """Nothing written, nothing removed, nothing left half-written."""
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (new or gone or changed), {"new": new, "gone": gone, "changed": changed}


# ---------------------------------------------------------------------------
# corrupted copies
# ---------------------------------------------------------------------------

def truncated(src, dst, size):
    """The first `size` bytes of src (size < 0: all but the last -size)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[:size])
    return dst


def flipped(src, dst, offset, count=16):
    """src with `count` bytes from `offset` (negative: from the end) inverted."""
    with open(src, "rb") as f:
        data = bytearray(f.read())
    start = offset % len(data)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return dst


def make_models(prefix, folder):
    """A small network 1 (random weights, never trained) for the dataset `prefix`,
    computing its derived inputs, saved as training.py --save writes it: .pth,
    _config.pkl/.json, .onnx, .hpp."""
    import torch

    from architecture import ModelConfig
    from artifacts import ARTIFACT, SavedConfig, save_model_files
    from dataset import load_meta
    from models import build_model
    from outputs import AtomicOutputs
    from trainer import TrainSettings
    torch.manual_seed(0)
    meta = load_meta(prefix)
    config = ModelConfig(network=1, n_features=len(meta.features), hidden=(8,),
                         inputs="standard", normalization=meta.normalization,
                         standardization=meta.standardization,
                         derived=tuple(meta.derived), branches=tuple(meta.features))
    saved = SavedConfig(model=config, track=meta.track, features=meta.features,
                        threshold=0.5, training=TrainSettings(epochs=1, seed=0),
                        working_point={"efficiency": 0.99, "threshold": 0.5},
                        training_prior=0.5, ghost_fraction=meta.ghost_fraction)
    with AtomicOutputs() as out:
        save_model_files(out, folder, ARTIFACT, build_model(config).eval(), saved)


if __name__ == "__main__":  # python tests/faultlib.py models PREFIX FOLDER
    sys.path[:0] = [ROOT_DIR, os.path.dirname(os.path.abspath(__file__))]
    make_models(*sys.argv[2:4])
