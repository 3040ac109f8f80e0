"""outputs.py: writing safely.  A full disk at each write (a small tmpfs mounted by
the test, else a simulated limit on the size of written files): make_sample.py -o,
inference.py --output (.root, .npy) and every file of --plots-dir; each run ends
with exit 2, one `error:` line naming the output, no traceback, no temporary and no
half file.  And the checks themselves: plain names, outputs that would replace
inputs, the empty folders a failed run made."""
import os
import resource
import subprocess
import sys

import pytest

from helpers import ROOT_DIR, assert_clean_error, run_script

PAGE = 4096


# ---------------------------------------------------------------------------
# a full disk at each write
# ---------------------------------------------------------------------------


class SmallDisk:
    """A folder on a small tmpfs that the test mounts, filled up to leave `free`
    bytes; where mounting is not allowed, a plain folder, and each run gets a limit
    on the size of every file it writes instead (RLIMIT_FSIZE: writes beyond it fail
    with EFBIG, as on a full disk they fail with ENOSPC)."""

    def __init__(self, path):
        self.path = path
        path.mkdir()
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                               capture_output=True, text=True)
        self.mounted = mount.returncode == 0
        self.limit = None
        self.filler = path / ".filler"

    def fill(self, free, limit=None):
        """Leave `free` bytes (a multiple of PAGE) on the tmpfs; without one, limit
        each file to `limit` bytes (default `free`)."""
        if not self.mounted:
            self.limit = max(limit or free, PAGE // 2)
            return
        st = os.statvfs(self.path)
        with open(self.filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - free))
        st = os.statvfs(self.path)
        assert st.f_bavail * st.f_frsize == free

    @property
    def why(self):
        return "No space left on device" if self.mounted else "File too large"

    def run(self, script, *args, fresh=False):
        """The script run as helpers.run_script runs it (main() through cli.run_cli in
        a forked child), or as a new process: with `fresh` (the figures, drawn by its
        own worker processes, as a user meets it), and under a limit on the size of
        files (which would cut the child's captured output too)."""
        if not fresh and not self.limit:
            return run_script(script, *args)

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))
        return subprocess.run([sys.executable, os.path.join(ROOT_DIR, script),
                               *map(str, args)], capture_output=True, text=True,
                              timeout=600, preexec_fn=limit if self.limit else None)

    def files(self):
        """Every file on it but the filler: temporaries and outputs alike."""
        return sorted(os.path.relpath(os.path.join(d, n), self.path)
                      for d, _, names in os.walk(self.path) for n in names
                      if os.path.join(d, n) != str(self.filler))

    def close(self):
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path):
    d = SmallDisk(tmp_path / "disk")
    yield d
    d.close()


def _pages(size):
    return -(-size // PAGE) * PAGE


# inference.py --no-plots writes its plots folder in this order
PLOTS_ORDER = ["metrics.json", "thresholds.csv", "comparison.csv", "results.root",
               "index.html"]


@pytest.fixture(scope="module")
def plots_sizes(quick_models, small_file, tmp_path_factory):
    """The size of each file of a --no-plots run's plots folder."""
    plots = tmp_path_factory.mktemp("reference") / "plots"
    proc = run_script("inference.py", "-f", small_file, "--model", quick_models["net1"],
                      "--plots-dir", plots, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(plots)) == sorted(PLOTS_ORDER)
    return {name: os.path.getsize(plots / name) for name in PLOTS_ORDER}


def _assert_nothing_left(disk, proc, output):
    """Exit 2, one error line, no traceback, and nothing on the disk: no temporary,
    no half file.  The error names the output and the system's reason (on a
    simulated full disk, numpy's short writes carry no reason)."""
    needles = [output, disk.why] if output.endswith(".root") or disk.mounted else [output]
    assert_clean_error(proc, "could not write", *needles)
    assert disk.files() == [], disk.files()


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
def test_full_disk_make_sample(disk, fmt):
    disk.fill(4 * PAGE)
    out = disk.path / "sample.root"
    proc = disk.run("make_sample.py", "-o", out, "--tracks", 5000, "--format", fmt)
    _assert_nothing_left(disk, proc, str(out))


@pytest.mark.parametrize("ext", ["root", "npy"])
def test_full_disk_inference_output(disk, quick_models, small_file, tmp_path, ext):
    disk.fill(2 * PAGE)
    out = disk.path / f"probabilities.{ext}"
    proc = disk.run("inference.py", "-f", small_file, "--model", quick_models["net1"],
                    "--output", out, "--plots-dir", tmp_path / "plots", "--no-plots")
    _assert_nothing_left(disk, proc, str(out))
    assert not os.path.exists(tmp_path / "plots") or os.listdir(tmp_path / "plots") == []


@pytest.mark.parametrize("target", PLOTS_ORDER)
def test_full_disk_at_each_file_of_the_plots_folder(disk, quick_models, small_file, plots_sizes,
                                                    target):
    before = PLOTS_ORDER[:PLOTS_ORDER.index(target)]
    disk.fill(sum(_pages(plots_sizes[name]) for name in before),
              limit=plots_sizes[target] // 2)
    plots = disk.path / "plots"
    proc = disk.run("inference.py", "-f", small_file, "--model", quick_models["net1"],
                    "--plots-dir", plots, "--no-plots")
    # with a limit per file instead, the first file over it fails
    _assert_nothing_left(disk, proc, str(plots / target) if disk.mounted else str(plots))


def test_full_disk_while_drawing_the_figures(disk, quick_models, small_file, plots_sizes):
    disk.fill(sum(_pages(size) for size in plots_sizes.values()), limit=2 * PAGE)
    plots = disk.path / "plots"
    proc = disk.run("inference.py", "-f", small_file, "--model", quick_models["net1"],
                    "--plots-dir", plots, fresh=True)
    _assert_nothing_left(disk, proc, str(plots))


# ---------------------------------------------------------------------------
# no empty folders left by a failed run
# ---------------------------------------------------------------------------


CLEANUP = """
import os, sys
sys.path.insert(0, {root!r})
from outputs import prepare_folder
from cli import run_cli
from utils import GhostError
def main(argv):
    prepare_folder("old/new/deeper", "--x")
    prepare_folder("old/kept/x", "--y")
    open("old/kept/x/file", "w").close()
    how = {how!r}
    if how == "ghost":
        raise GhostError("refused")
    if how == "interrupt":
        raise KeyboardInterrupt
    if how == "exit":
        sys.exit(3)
    if how == "bug":
        raise ValueError("a bug")
    if how == "memory":
        raise MemoryError
    if how in ("SIGINT", "SIGTERM"):  # while an output is being written
        from outputs import AtomicOutputs
        import signal
        with AtomicOutputs() as out:
            out.save_bytes("old/new/deeper/out.txt", b"half")
            os.kill(os.getpid(), getattr(signal, how))
            out.save_bytes("old/new/deeper/late.txt", b"never")
    return 1 if how == "rc" else 0
run_cli(main)
"""


@pytest.mark.parametrize("how,rc", [("ghost", 2), ("interrupt", 130), ("exit", 3),
                                    ("bug", 1), ("memory", 2), ("rc", 1), ("ok", 0),
                                    ("SIGINT", 130), ("SIGTERM", 143)])
def test_failed_run_removes_only_the_empty_folders_it_made(tmp_path, how, rc):
    (tmp_path / "old").mkdir()
    proc = subprocess.run([sys.executable, "-c", CLEANUP.format(root=ROOT_DIR, how=how)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stderr
    if how.startswith("SIG"):
        assert proc.stderr == f"error: stopped by {how}; nothing was written\n"
    left = sorted(os.path.relpath(os.path.join(r, n), tmp_path)
                  for r, ds, fs in os.walk(tmp_path) for n in ds + fs)
    kept = ["old", "old/kept", "old/kept/x", "old/kept/x/file"]
    if how == "ok":  # a run that succeeds keeps what it made
        kept += ["old/new", "old/new/deeper"]
    assert left == sorted(kept)


SWALLOWED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from outputs import AtomicOutputs
from cli import run_cli
class Slow:
    def __del__(self):  # a signal here: Python prints what it raises and goes on
        os.kill(os.getpid(), signal.SIGTERM)
def main(argv):
    with AtomicOutputs() as out:
        out.save_bytes("out.txt", b"written after the signal")
        Slow()
        print("went on")
    return 0
run_cli(main)
"""


def test_a_signal_whose_stop_python_swallows_still_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SWALLOWED.format(root=ROOT_DIR)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "went on" in proc.stdout and "Exception ignored" in proc.stderr
    assert proc.returncode == 143
    assert proc.stderr.splitlines()[-1] == "error: stopped by SIGTERM; nothing was written"
    assert os.listdir(tmp_path) == []


PROBED = """
import os, signal, sys, tempfile
sys.path.insert(0, {root!r})
from outputs import check_writable_folder
from cli import run_cli
real = tempfile.TemporaryFile
def signalled(*args, **kw):  # the signal lands between the probe's creation and removal
    made = real(*args, **kw)
    os.kill(os.getpid(), signal.SIGTERM)
    return made
tempfile.TemporaryFile = signalled
def main(argv):
    check_writable_folder("out")
    print("checked")
    return 0
run_cli(main)
"""


THREADED = """
import os, signal, sys, threading, time
sys.path.insert(0, {root!r})
from outputs import check_writable_folder
from cli import run_cli
def send():  # from another thread, which receives it: the main thread's hold is no help
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
def main(argv):
    threading.Thread(target=send, daemon=True).start()
    while True:
        check_writable_folder("out")
run_cli(main)
"""


def test_a_signal_from_another_thread_during_the_probes_leaves_no_probe(tmp_path):
    """Seen again under load (training.py's SIGTERM test, at "writing the model
    files"): a signal received by another thread while the main thread held them
    back still stopped the run inside the probe, and `.ghost_probe*` stayed.  Probing
    without pause until a thread's SIGTERM ends the run leaves nothing."""
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, "-c", THREADED.format(root=ROOT_DIR)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert os.listdir(tmp_path / "out") == []


def test_a_signal_during_the_writability_probe_leaves_no_probe(tmp_path):
    """Seen once under load (the SIGTERM test of training.py): a signal between the
    probe file's creation and its removal left `.ghost_probe*` behind; the probe now
    holds the signal back until the file is gone."""
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, "-c", PROBED.format(root=ROOT_DIR)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.splitlines()[-1] == "error: stopped by SIGTERM; nothing was written"
    assert os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------------------
# the checks themselves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["run1", "a.b", "-x", ".hidden", "my search"])
def test_plain_name_accepts_plain_names(value):
    from outputs import plain_name
    assert plain_name(value, "--name") == value


@pytest.mark.parametrize("value", ["", "  ", ".", "..", "a/b", "../x", "/", "/abs", "x/",
                                   None])
def test_plain_name_refuses_anything_else(value):
    from outputs import plain_name
    from utils import GhostError
    with pytest.raises(GhostError, match="--name"):
        plain_name(value, "--name")


def test_refuse_overwriting_inputs_direct(tmp_path):
    from outputs import Pattern, refuse_overwriting_inputs
    from utils import GhostError
    (tmp_path / "in.root").write_text("x")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "roc.png").write_text("x")
    os.symlink(tmp_path / "in.root", tmp_path / "plots" / "alias.root")
    ok = [("--output", str(tmp_path / "out.root")), ("--none", None),
          ("--plots-dir", Pattern(str(tmp_path / "plots" / "*.pdf")))]
    refuse_overwriting_inputs(ok, [("-f", str(tmp_path / "in.root")), ("--config", None)])
    for outputs, inputs, needle in (
            ([("--output", str(tmp_path / "plots" / "alias.root"))],
             [("-f", str(tmp_path / "in.root"))], "would replace the input -f"),
            ([("--plots-dir", Pattern(str(tmp_path / "plots" / "*.png")))],
             [("--model", str(tmp_path / "plots" / "roc.png"))], "plots/roc.png"),
            ([("--a", str(tmp_path / "o.npy")), ("--b", str(tmp_path / "." / "o.npy"))], [],
             "same file"),
            ([("--output", str(tmp_path / "plots"))], [], "is a folder")):
        with pytest.raises(GhostError, match=needle):
            refuse_overwriting_inputs(outputs, inputs)
