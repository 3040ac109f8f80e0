"""The tests' fork server: run a script's main() as a user would, but in a forked
child (its imports paid once, not per run).

A child inherits its parent's memory but not its threads, so the parent that
forks must have none running: no Ray, no ROOT implicit multi-threading, no torch
thread pool.  The test processes may have started all three (tests run searches
in-process), so the forks come from a fork server: a clean process that imports
the scripts and their heavy libraries once, warms ROOT's just-in-time compiler
with one serial read, and then forks one child per run.  One server serves the
whole test run: each request comes on a connection of its own (a Unix socket), so
the pytest-xdist workers share it and their runs go side by side; `python` in the
README's session is a client too (attach: the child gets the client's stdin,
stdout, stderr, folder and environment).
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("make_sample", "make_dataset", "training", "inference")
SOCKET = "server.sock"  # the fork server's, in its folder


@dataclass
class Result:
    rc: int        # the exit code; -N for a signal N (a crash), None for a timeout
    stdout: str
    stderr: str

    def errors(self):
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


def run_forked(main, argv, workdir, timeout=120, setup=None, cwd=None, argv0=None,
               stdin=None, env=None):
    """cli.run_cli(main, argv) in a forked child (main None: the code on its stdin),
    its stdout and stderr (fd 1 and 2, so C++ output too) in files under `workdir`:
    a Result.  `setup`, if given, runs in the child first; `cwd`: the child's
    working folder; `argv0`: its sys.argv[0] (the script, as argparse names it);
    `stdin`: the text on its stdin (none by default); `env`: its environment.  A
    child that outlives `timeout` is killed with its process group."""
    paths = [os.path.join(workdir, f".fault_{os.getpid()}_{name}")
             for name in ("stdout", "stderr")]
    if stdin is None:
        streams = [os.open(os.devnull, os.O_RDONLY)]  # not the server's requests
    else:  # a file opened, then removed: the child reads it to its end
        text = os.path.join(workdir, f".fault_{os.getpid()}_stdin")
        with open(text, "w") as f:
            f.write(stdin)
        streams = [os.open(text, os.O_RDONLY)]
        os.remove(text)
    streams += [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for path in paths]
    rc = _wait(_fork(main, argv, streams, setup, cwd, argv0, env), timeout)
    texts = []
    for path in paths:
        with open(path, errors="replace") as f:
            texts.append(f.read())
        os.remove(path)
    return Result(rc, *texts)


def _fork(main, argv, streams, setup=None, cwd=None, argv0=None, env=None):
    """A child running cli.run_cli(main, argv) with `streams` as its fd 0, 1 and 2
    (closed here, the parent's copies); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        _child(main, [str(a) for a in argv], streams, setup, cwd, argv0, env)
    for fd in streams:
        os.close(fd)
    return pid


def _child(main, argv, streams, setup, cwd=None, argv0=None, env=None):
    code = 1
    try:
        os.setpgid(0, 0)
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if argv0 is not None:
            sys.argv = [argv0, *argv]
        for fd, stream in enumerate(streams):
            if stream != fd:
                os.dup2(stream, fd)
                os.close(stream)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "torch" in sys.modules:  # the parent's thread pools are not in this process
            sys.modules["torch"].set_num_threads(1)
        if setup is not None:
            setup()
        if main is None:  # `python -`: the code on stdin, as the interpreter runs it
            sys.argv = ["-", *argv]
            sys.path.insert(0, "")
            exec(compile(sys.stdin.read(), "<stdin>", "exec"), {"__name__": "__main__"})
        else:
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


def _wait(pid, timeout, client=None):
    """The child's exit code (-N: killed by signal N); None when it outlived
    `timeout` or the `client` connection closed: then it is killed with its group."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        late = deadline is not None and time.monotonic() > deadline
        if late or (client is not None and select.select([client], [], [], 0)[0]):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def no_search():
    """In a training.py child: reaching the Ray search fails the case (exit 99)."""
    def refuse(*args, **kwargs):
        print("reached the Ray search: the corrupted input was not refused", file=sys.stderr)
        sys.stderr.flush()
        os._exit(99)
    sys.modules["training"].search = refuse


SETUPS = {"no_search": no_search}


class ForkServer:
    """A client of the run's fork server (serve): run(script, argv, workdir,
    timeout, setup, cwd) -> Result, one connection per request.  ForkServer.start
    starts the server in a folder of its own; it ends, and removes that folder,
    when the process `owner` (the test run) has ended."""

    def __init__(self, socket_path):
        self.socket_path = socket_path
        self.folder = os.path.dirname(socket_path)

    @classmethod
    def start(cls, folder, owner, warm_root=None):
        with open(os.path.join(folder, "server.log"), "w") as log:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "serve", folder, str(owner),
                 warm_root or ""], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, text=True, cwd=ROOT_DIR)
        with proc.stdout:
            ready = proc.stdout.readline() == "ready\n"
        if not ready:
            proc.wait()
        with open(os.path.join(folder, "server.log")) as f:
            assert ready, f"the fork server ended: {f.read()[-3000:]}"
        return cls(os.path.join(folder, SOCKET))

    def connect(self):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.socket_path)
        except OSError:
            conn.close()
            raise
        return conn

    def run(self, script, argv, workdir, timeout=120, setup=None, cwd=None, stdin=None,
            env=None):
        """Run `script`'s main(argv) in a forked child (script "-": the code `stdin`,
        as `python -` runs it; see run_forked): a Result."""
        request = {"script": script, "argv": [str(a) for a in argv], "workdir": str(workdir),
                   "timeout": timeout, "setup": setup, "cwd": cwd and str(cwd),
                   "argv0": "-" if script == "-" else os.path.join(ROOT_DIR, f"{script}.py"),
                   "stdin": stdin, "env": env}
        with self.connect() as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            return Result(**json.loads(_line(conn)))


def _line(conn, first=b""):
    """One newline-ended message from the connection (after `first`)."""
    data = first
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the fork server closed the connection")
        data += more
    return data


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


def serve(folder, owner, warm_root):
    """The server: import and warm once, then fork a handler per connection until
    the process `owner` ends; remove `folder` then."""
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
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(folder, SOCKET))
    listener.listen(64)
    listener.settimeout(1.0)
    print("ready", file=replies, flush=True)
    replies.close()
    try:
        while _alive(owner):
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                conn = None
            if conn is not None:
                sys.stderr.flush()
                if os.fork() == 0:  # pragma: no cover (the handler never returns)
                    listener.close()
                    _handle(conn, modules)
                conn.close()
            while _reaped():
                pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reaped():
    try:
        return os.waitpid(-1, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


def _handle(conn, modules):
    """One request: capture (a Result back) or attach (the client's stdin, stdout and
    stderr passed with it; {"pid"} back at the start, {"rc"} at the end)."""
    try:
        conn.settimeout(None)
        first, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        if not first:  # a client checking that the server listens
            return
        request = json.loads(_line(conn, first))
        script = request["script"]
        main = None if script == "-" else modules[script].main
        if fds:
            pid = _fork(main, request["argv"], fds, None, request["cwd"], request["argv0"],
                        request["env"])
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            reply = {"rc": _wait(pid, None, client=conn)}
        else:
            reply = asdict(run_forked(main, request["argv"], request["workdir"],
                                      request["timeout"], SETUPS.get(request["setup"]),
                                      request["cwd"], request["argv0"], request["stdin"],
                                      request["env"]))
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(0)


def attach(socket_path, python, args):
    """`python ARGS` as a client of the fork server: a toolkit script
    (`python SCRIPT.py ...`) or code on stdin (`python - ...`) runs in a forked child
    with this process's stdin, stdout, stderr, folder and environment, and its exit
    code is this one's; anything else is the real `python`."""
    script = None
    if args and args[0] == "-":
        script = "-"
    elif args and args[0].endswith(".py"):
        name = os.path.basename(args[0])[:-3]
        if name in SCRIPTS and os.path.realpath(args[0]) == os.path.join(ROOT_DIR, f"{name}.py"):
            script = name
    if script is None:
        os.execv(python, [python, *args])
    request = {"script": script, "argv": args[1:], "cwd": os.getcwd(),
               "env": dict(os.environ), "argv0": args[0]}
    with ForkServer(socket_path).connect() as conn:
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        data = _line(conn)
        first, rest = data.split(b"\n", 1)
        pid = json.loads(first)["pid"]
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda n, _: os.kill(pid, n))
        rc = json.loads(_line(conn, rest))["rc"]
    sys.exit(128 - rc if rc is not None and rc < 0 else rc if rc is not None else 1)


if __name__ == "__main__":
    # python tests/forkserver.py serve FOLDER OWNER [ROOT] | python SOCKET PYTHON ARGS...
    if sys.argv[1] == "python":
        attach(sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.path[:0] = [ROOT_DIR, os.path.dirname(os.path.abspath(__file__))]
    serve(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
