"""The fault corpus's machinery: run a script's main() as a user would, but in a
forked child (its imports paid once, not per case), corrupt files byte by byte,
and check that nothing was left behind.

A child inherits its parent's memory but not its threads, so the parent that
forks must have none running: no Ray, no ROOT implicit multi-threading, no torch
thread pool.  The test process may have started all three (other test modules run
searches in-process), so the forks come from a fork server (ForkServer): a clean
process started for the corpus, which imports the scripts and their heavy
libraries once, warms ROOT's just-in-time compiler with one serial read, and then
forks one child per case.
"""
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("make_sample", "make_dataset", "training", "inference")


@dataclass
class Result:
    rc: int        # the exit code; -N for a signal N (a crash), None for a timeout
    stdout: str
    stderr: str

    def errors(self):
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


def run_forked(main, argv, workdir, timeout=120, setup=None, cwd=None, argv0=None):
    """cli.run_cli(main, argv) in a forked child, its stdout and stderr (fd 1 and
    2, so C++ output too) in files under `workdir`: a Result.  `setup`, if given,
    runs in the child first; `cwd`: the child's working folder; `argv0`: its
    sys.argv[0] (the script, as argparse names it).  A child that outlives
    `timeout` is killed with its process group."""
    paths = [os.path.join(workdir, f".fault_{name}") for name in ("stdout", "stderr")]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        _child(main, [str(a) for a in argv], paths, setup, cwd, argv0)
    rc = _wait(pid, timeout)
    texts = []
    for path in paths:
        with open(path, errors="replace") as f:
            texts.append(f.read())
        os.remove(path)
    return Result(rc, *texts)


def _child(main, argv, paths, setup, cwd=None, argv0=None):
    code = 1
    try:
        os.setpgid(0, 0)
        if cwd is not None:
            os.chdir(cwd)
        if argv0 is not None:
            sys.argv = [argv0, *argv]
        stdin = os.open(os.devnull, os.O_RDONLY)  # not the server's requests
        os.dup2(stdin, 0)
        os.close(stdin)
        for fd, path in zip((1, 2), paths):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "torch" in sys.modules:  # the parent's thread pools are not in this process
            sys.modules["torch"].set_num_threads(1)
        if setup is not None:
            setup()
        import cli
        cli.run_cli(main, argv)
        code = 0
    except SystemExit as e:  # as the interpreter ends on sys.exit
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # as the interpreter ends on an uncaught exception
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


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


# ---------------------------------------------------------------------------
# the fork server
# ---------------------------------------------------------------------------

def no_search():
    """In a training.py child: reaching the Ray search fails the case (exit 99)."""
    def refuse(*args, **kwargs):
        print("reached the Ray search: the corrupted input was not refused", file=sys.stderr)
        sys.stderr.flush()
        os._exit(99)
    sys.modules["training"].search = refuse


SETUPS = {"no_search": no_search}


class ForkServer:
    """A clean process that runs cases in forked children: run(script, argv,
    workdir, timeout, setup) -> Result; `warm_root`: a .root file it reads once
    first, so that its children find ROOT's compiler warm."""

    def __init__(self, log_path, warm_root=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", warm_root or ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            cwd=ROOT_DIR)
        assert self._reply() == "ready\n"

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            with open(self.log_path) as f:
                raise RuntimeError(f"the fork server ended: {f.read()[-3000:]}")
        return line

    def run(self, script, argv, workdir, timeout=120, setup=None, cwd=None):
        """Run `script`'s main(argv) in a forked child (see run_forked): a Result."""
        request = {"script": script, "argv": [str(a) for a in argv], "workdir": str(workdir),
                   "timeout": timeout, "setup": setup, "cwd": cwd and str(cwd),
                   "argv0": os.path.join(ROOT_DIR, f"{script}.py")}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return Result(**json.loads(self._reply()))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _warm_up(warm_root, folder):
    """What most runs do once, done here once so that the children start warm: the
    chunked reader's and the ROOT writer's C++ compiled, matplotlib's fonts loaded
    in the toolkit's style, scipy.special imported (the intervals)."""
    import numpy as np
    import scipy.special  # noqa: F401

    import rootstream
    import rootwrite
    from drawing import style, write_figure
    from features import DEFAULT_TREE, features_for
    rootstream.stream_root([warm_root], DEFAULT_TREE, features_for("matching"), 500,
                           lambda *chunk: None)
    rootwrite.write_root(os.path.join(folder, "warm_written.root"), "t",
                         {"x": np.zeros(3, np.float32)})
    with style() as plt:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="warm")
        ax.set_xlabel("x [GeV]")
        ax.legend()
        write_figure(fig, [os.path.join(folder, "warm_figure.png")], label="LHCb simulation")


def serve(warm_root):
    """The server's loop: one JSON request a line on stdin, one Result a line back."""
    import importlib
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to the log, not into the replies
    sys.stdout = sys.stderr
    modules = {name: importlib.import_module(name) for name in SCRIPTS}
    import onnx  # noqa: F401  (what the children need, imported once)
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import rootio
    from features import DEFAULT_TREE, features_for
    rootio.import_root()
    if warm_root:
        if not os.path.exists(warm_root):  # a small sample of its own
            modules["make_sample"].make_sample(warm_root, tracks=1000, seed=0)
        rootio.read_root([warm_root], DEFAULT_TREE, features_for("matching"), threads=1,
                         matrix=True)
        _warm_up(warm_root, os.path.dirname(os.path.abspath(warm_root)))
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        result = run_forked(modules[request["script"]].main, request["argv"],
                            request["workdir"], request["timeout"],
                            SETUPS.get(request["setup"]), request["cwd"], request["argv0"])
        print(json.dumps(asdict(result)), file=replies, flush=True)


if __name__ == "__main__":  # python tests/faultlib.py models PREFIX FOLDER | serve [ROOT]
    sys.path[:0] = [ROOT_DIR, os.path.dirname(os.path.abspath(__file__))]
    if sys.argv[1] == "models":
        make_models(*sys.argv[2:4])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2] if len(sys.argv) > 2 else None)
