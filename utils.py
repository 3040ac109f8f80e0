"""Plumbing every script shares: one-line errors and the command-line exit,
console output, plain-data conversion, the torch device and a stopwatch.

Knows nothing of tracks or models.  Heavy libraries (torch) are imported inside the
functions that need them, so that `--help` is instant.
"""
import math
import os
import sys
import time

import numpy as np


class GhostError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


# What run_cli calls when a run ends in an error (see at_failure).
_at_failure = []


def at_failure(hook):
    """Have run_cli call hook() if the run ends in an error: a GhostError, an
    interrupt, a non-zero exit, any exception.  For a room's undo of what the run
    began (outputs removes the empty folders it made); each hook once."""
    if hook not in _at_failure:
        _at_failure.append(hook)


def _failed():
    while _at_failure:
        try:
            _at_failure.pop()()
        except Exception:  # an undo that fails must not hide the run's own error
            pass


def run_cli(main, argv=None):
    """Run a script's main(argv); bad input ends as `error: ...` and exit 2.  Any
    error (a non-zero exit too) first calls the at_failure hooks."""
    try:
        rc = main(argv)
    except GhostError as e:
        _failed()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _failed()
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        _failed()
        print("error: out of memory; try a smaller --fraction or --batch", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        if e.code not in (None, 0):
            _failed()
        raise
    except BaseException:
        _failed()
        raise
    if rc:
        _failed()
    # Every output is written and closed by now; skip the interpreter's teardown of
    # ROOT and torch (about 0.6 s of destructors, nothing left to flush).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)


def log(msg):
    print(msg, flush=True)


def warn(msg):
    """A loud note on stderr: the run goes on, but its result may mislead."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


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


def parse_numbers(text, option, lo, hi, open_=False, sort=True):
    """Comma-separated numbers in [lo, hi] (or (lo, hi) with open_), unique, sorted
    or in the order given; a one-line error naming the option otherwise."""
    try:
        values = list(dict.fromkeys(float(t) for t in str(text).split(",") if t.strip()))
        values = sorted(values) if sort else values
    except ValueError:
        raise GhostError(f"{option} must be comma-separated numbers, got {text!r}")
    inside = (lambda v: lo < v < hi) if open_ else (lambda v: lo <= v <= hi)
    if not values or not all(inside(v) for v in values):
        span = f"({lo:g}, {hi:g})" if open_ else f"[{lo:g}, {hi:g}]"
        raise GhostError(f"{option} must be numbers in {span}, got {text!r}")
    return values


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
