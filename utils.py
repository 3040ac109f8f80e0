"""Plumbing every room shares: the one-line error (GhostError; cli.run_cli prints
it), console output, plain-data conversion, the torch device and a stopwatch.

Knows nothing of tracks or models.  Heavy libraries (torch) are imported inside the
functions that need them, so that `--help` is instant.
"""
import contextlib
import math
import os
import sys
import threading
import time

import numpy as np


class GhostError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


_last_line = [time.monotonic()]  # when the console last heard of the run


def log(msg):
    print(msg, flush=True)
    _last_line[0] = time.monotonic()


def warn(msg):
    """A loud note on stderr: the run goes on, but its result may mislead."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)
    _last_line[0] = time.monotonic()


def silent_for():
    """Seconds since the last line of log or warn (a heartbeat speaks after a while)."""
    return time.monotonic() - _last_line[0]


HEARTBEAT = 8.0  # seconds of silence before a long step says it is still at work


@contextlib.contextmanager
def heartbeat(what):
    """Around a long step that prints nothing (a library's fit): a line from a
    background thread after every HEARTBEAT seconds of silence, saying `what` is
    still at work and for how long."""
    stop, clock = threading.Event(), Stopwatch()

    def beat():
        while not stop.wait(0.5):
            if silent_for() >= HEARTBEAT:
                log(f"  still {what} ({clock():.0f} s so far)" if clock() >= HEARTBEAT
                    else f"  still {what} ...")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def one_line(e, last=True, count=1):
    """An exception's message as one line: its last non-empty line by default (cppyy
    puts the C++ error there), or its first `count` lines joined."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[-1] if last else " ".join(lines[:count])


def plain(obj):
    """A deep copy as plain JSON-able Python: numpy arrays and numbers become lists
    and Python numbers, tuples lists, non-finite floats None (JSON has no NaN);
    anything else that is not plain data is refused."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    for kind in (bool, str, int, float):  # subclasses too (torch's version string)
        if isinstance(obj, kind):
            return kind(obj)
    if obj is None:
        return None
    raise GhostError(f"value {obj!r} is not plain data")


def pick_device(nocuda=False, cuda=None):
    """CPU when asked or when CUDA is absent, else cuda:K (default 0)."""
    import torch
    if nocuda or not torch.cuda.is_available():
        if cuda is not None and not nocuda:
            raise GhostError(f"--cuda {cuda} asked, but CUDA is not available here")
        return torch.device("cpu")
    index = 0 if cuda is None else cuda
    if not 0 <= index < torch.cuda.device_count():
        raise GhostError(f"--cuda {index}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{index}")


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0


@contextlib.contextmanager
def no_stderr():
    """File descriptor 2 to /dev/null meanwhile (what C code prints with fprintf)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
