"""The command line, shared by the four scripts: one parser type, the options that
mean the same everywhere (--format, --threads, number lists), the input files (-f's
names and globs), and the run itself.

Every complaint about the command line is a GhostError: argparse's own (an unknown
option, a bad number or choice, a missing option) through Parser.error, a bad
value through the parse_* functions, the scripts' checks raised directly.  run_cli
prints it as one `error: ...` line and exits with code 2, no usage dump and no
traceback.  SIGINT and SIGTERM raise Stopped wherever the run is; run_cli ends it
with one line and exit 130 / 143.  Imports nothing of the toolkit but utils, so
every room may import it (outputs registers its undo of a failed run with
at_failure and commits nothing once a signal came).
"""
import argparse
import contextlib
import glob
import os
import signal
import sys
import textwrap

from utils import GhostError, warn

FORMATS = ("png", "pdf")  # figure formats, --format's choices
LABEL = "LHCb simulation"  # --label's default: the experiment's text on every figure


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The description and the outputs as written; every option that takes a value
    and has one by default says it (options without one say what happens instead,
    in their own words)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required and "required" not in text:
            text += " (required)"
        elif (all(action.default is not v for v in (None, False, argparse.SUPPRESS))
              and action.nargs != 0 and "default" not in text):
            text += " (default %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse's parser whose complaints are GhostErrors; the description (a
    script's docstring) printed as written, then the files the script writes
    (`outputs`: [(heading, [(names, what they hold)])], from the registries of the
    rooms that write them: see outputs_text)."""

    def __init__(self, description, outputs=()):
        super().__init__(description=description, epilog=outputs_text(outputs) or None,
                         formatter_class=_Formatter)

    def error(self, message):
        raise GhostError(message)


def outputs_text(sections):
    """The files a script writes, for its --help: each section's heading, then each
    row's names (comma-separated; `{a,b}` stands for each of a and b) indented by two,
    and what they hold indented by six."""
    lines = []
    for heading, rows in sections:
        lines += [heading] if not lines else ["", heading]
        for names, what in rows:
            lines.append(f"  {names}")
            lines += textwrap.wrap(what, 86, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    return "\n".join(lines)


def add_plot_options(parser, what):
    """--format and --label, the same in every script: `what` says which figures."""
    parser.add_argument("--format", default="png",
                        help=f"{what} formats, comma-separated: png, pdf (default png)")
    parser.add_argument("--label", default=LABEL, metavar="TEXT",
                        help=f"the text at the top left of every {what.split()[-1]}, e.g. "
                             f"'LHCb preliminary'; '' for none (default {LABEL!r})")


def parse_formats(text):
    """--format "png,pdf" -> ("png", "pdf"); a one-line error for anything else."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in str(text).split(",")
                                  if f.strip()))
    if not formats or any(f not in FORMATS for f in formats):
        raise GhostError(f"--format must be png, pdf or both, got {text!r}")
    return formats


# Below this many entries a parallel read does not win: ROOT's start of the event
# loop (about 2 s of just-in-time compilation) dominates, and on 2 cores 1M tracks
# read in the same time either way; 10M read 1.6x faster with 2 threads.
PARALLEL_READ_ENTRIES = 2_000_000  # --threads' default (add_threads_option's help says it)


def auto_threads(entries):
    """Threads for a read of `entries` entries: every core this process may use
    for a large input, one (a serial read) below PARALLEL_READ_ENTRIES."""
    return len(os.sched_getaffinity(0)) if entries >= PARALLEL_READ_ENTRIES else 1


def add_threads_option(parser, parallel_from=PARALLEL_READ_ENTRIES, help=None):
    """--threads, the same in every script that reads .root files: a whole number of
    at least 1, or None (auto_threads: every core from `parallel_from` entries
    up); `help` where a script reads otherwise."""
    parser.add_argument("--threads", type=parse_threads, metavar="N",
                        help=help or "threads reading the .root input with ROOT's implicit "
                                     "multi-threading, in entry order either way (default: "
                                     f"every core from {parallel_from:,} entries up, else 1)")


def parse_threads(text):
    """--threads "4" -> 4; a one-line error for anything but a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise GhostError(f"argument --threads: must be a whole number of at least 1, "
                         f"got {text!r}")
    return n


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


class Stopped(BaseException):
    """SIGINT or SIGTERM ended the run (BaseException: no `except Exception` swallows
    it); run_cli undoes what the run began, prints `error: ` + `outcome` (what the
    run leaves, in words) and exits with 128 + the signal."""

    def __init__(self, signum, outcome=None):
        name = signal.Signals(signum).name
        super().__init__(name)
        self.signum = signum
        self.outcome = outcome or f"stopped by {name}; nothing was written"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received = []  # the signals that asked the run to stop


def stop(signum, frame):
    """The scripts' handler of SIGINT and SIGTERM: raise Stopped where the run is.
    The signal is also recorded (stop_received), for where Python swallows what a
    handler raises (a __del__, a weakref callback: "Exception ignored in ...")."""
    _received.append(signum)
    raise Stopped(signum)


def stop_received():
    """The first signal that asked the run to stop, or None: what outputs' commit
    checks, so that nothing is renamed into place after it."""
    return _received[0] if _received else None


def _stopped(e):
    """The Stopped in the exception `e` or its chain (Python wraps what is raised
    during an import's __set_name__, for one), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Stopped):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM held back (blocked, then delivered on leaving) for a few
    lines that must not be cut in two, such as a probe file created and removed."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def listen(handler):
    """Install `handler` for SIGINT and SIGTERM (main thread only).  Again after a
    library that resets the process's real handler behind Python's back
    (ray.shutdown leaves SIGTERM at the default, which kills the run on the spot,
    its temporaries left behind)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


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
    """Run a script's main(argv); bad input ends as `error: ...` and exit 2, SIGINT
    and SIGTERM as `error: stopped by ...` and exit 130 / 143.  Any error (a non-zero
    exit too) first calls the at_failure hooks (temporaries and empty folders go)."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _received.clear()
    listen(stop)
    try:
        rc = _run(main, argv)
    finally:  # the caller's handlers again (a test calling run_cli in-process)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # Every output is written and closed by now; skip the interpreter's teardown of
    # ROOT and torch (about 0.6 s of destructors, nothing left to flush).
    _exit(rc or 0)


def _run(main, argv):
    try:
        rc = main(argv)
        if stop_received():  # raised where Python swallowed it
            raise Stopped(stop_received())
    except BaseException as e:
        if _stopped(e) is None:
            return _failing(e)
        listen(signal.SIG_IGN)  # a second signal does not interrupt the undoing
        _failed()
        print(f"error: {_stopped(e).outcome}", file=sys.stderr)
        _exit(128 + _stopped(e).signum)
    if rc:
        _failed()
    return rc


def _failing(e):
    """run_cli's end of a run that raised `e` (no signal): the failure hooks, and
    bad input, an interrupt or a lack of memory in one line."""
    if isinstance(e, SystemExit) and e.code in (None, 0):
        raise e
    _failed()
    for kind, code, line in (
            (GhostError, 2, f"error: {e}"),
            (KeyboardInterrupt, 130, "error: interrupted; no output was written"),
            (MemoryError, 2, "error: out of memory; try a smaller --fraction or --batch")):
        if isinstance(e, kind):
            print(line, file=sys.stderr)
            sys.exit(code)
    raise e


def _exit(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def expand_inputs(patterns):
    """File names and globs -> the existing files, in the order given (a glob's
    sorted), each once: the same file named twice (another spelling of its path, a
    link to it) is read once, with a warning."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise GhostError(f"no file matches {pattern}")
            files += matched
        elif not os.path.isfile(pattern):
            raise GhostError(f"input file {pattern} does not exist")
        else:
            files.append(pattern)
    first = {}  # real path -> the first name given for it
    for name in files:
        first.setdefault(os.path.realpath(name), name)
    twice = sorted({n for n in files if first[os.path.realpath(n)] != n})
    if twice:
        warn("the same file given twice is read once: " + ", ".join(
            f"{n} is {first[os.path.realpath(n)]}" for n in twice))
    return list(first.values())
