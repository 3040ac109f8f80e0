"""The command line, shared by the four scripts: one parser type, the options that
mean the same everywhere (--format, --threads, number lists), and the run itself.

Every complaint about the command line is a GhostError: argparse's own (an unknown
option, a bad number or choice, a missing option) through Parser.error, a bad
value through the parse_* functions, the scripts' checks raised directly.  run_cli
prints it as one `error: ...` line and exits with code 2, no usage dump and no
traceback.  Imports nothing of the toolkit but utils, so every room may import it
(outputs registers its undo of a failed run with at_failure).
"""
import argparse
import os
import sys
import textwrap

from utils import GhostError

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


def add_threads_option(parser, parallel_from):
    """--threads, the same in every script that reads .root files: a whole number of
    at least 1, or None (rootio.auto_threads: every core from `parallel_from`
    entries up)."""
    parser.add_argument("--threads", type=parse_threads, metavar="N",
                        help="threads reading the .root input with ROOT's implicit "
                             "multi-threading, in entry order either way (default: every "
                             f"core from {parallel_from:,} entries up, else 1)")


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
