"""Writing outputs safely: output locations checked before the long work, files
written under temporary names and renamed together at the end, temporaries of
killed runs removed, and a lock so that one run at a time writes to a folder.
"""
import contextlib
import errno
import fnmatch
import json
import os
import re
import tempfile

import numpy as np

from cli import Stopped, at_failure, signals_held, stop_received
from utils import GhostError, one_line, plain


def check_name(value, what):
    """The value of the path option `what` is a name: not empty, not blank."""
    if value is None or not str(value).strip():
        raise GhostError(f"{what} is empty: give a name")
    return value


def plain_name(value, what):
    """The value of the option `what` (--name, ...) as a plain name, one folder
    entry: not empty, no path separator, not . or .., so that joined to a folder
    it stays inside it.  Returns it; a one-line error otherwise."""
    check_name(value, what)
    separators = {os.sep, os.altsep or os.sep, "/"}
    if (value in (".", "..") or any(s in value for s in separators) or "\0" in value
            or os.path.isabs(value)):
        raise GhostError(f"{what} must be a plain name (no folder, not . or ..), "
                         f"got {value!r}")
    return value


def check_writable_folder(folder, what="output folder"):
    """`folder` exists and a file can really be created in it (os.access says yes
    to root in /proc, for instance, so try it)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise GhostError(f"{what} {folder} does not exist as a folder: it is a file")
    if not os.path.isdir(folder):
        raise GhostError(f"{what} {folder} does not exist")
    try:
        # a file without a name where the filesystem allows it (Linux's O_TMPFILE): a
        # signal cannot leave it behind, even one that another thread receives
        # (signals_held blocks them in this thread only)
        with signals_held(), tempfile.TemporaryFile(dir=folder, prefix=".ghost_probe"):
            pass
    except OSError as e:
        raise GhostError(f"{what} {folder} is not writable ({e.strerror or e})")
    return folder


def check_output_file(path, what="output", extensions=None):
    """The file `path` (the value of the option `what`) can be written: a name, with
    one of `extensions` (lower case, e.g. (".npy", ".root")) where given, not a
    folder's name, in a folder that exists and is writable.  Returns that folder;
    None for path None (an optional output not asked for)."""
    if path is None:
        return None
    check_name(path, what)
    if extensions and not path.lower().endswith(tuple(extensions)):
        *others, last = extensions
        raise GhostError(f"{what} {path}: the extension must be "
                         f"{', '.join(others)}{' or ' if others else ''}{last}")
    if path.endswith((os.sep, "/")) or os.path.isdir(path):
        raise GhostError(f"{what} {path} is a folder, not a file name")
    return check_writable_folder(os.path.dirname(os.path.abspath(path)), f"{what} folder")


# Folders this process created (real paths), removed again if still empty when
# the run fails (cli.run_cli calls remove_created_folders).
_created = []


def prepare_folder(path, what, create=True):
    """Create the output folder `path` (an option named by `what`) if needed and
    check that it is writable: before any long work, never after it.  With
    create=False, only check that it could be created (its first existing parent
    is a writable folder).  Each level it creates is recorded: if the run then
    fails, those still empty are removed (remove_created_folders)."""
    check_name(path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise GhostError(f"{what} {path} is a file, not a folder")
    missing, parent = [], path.rstrip(os.sep + "/") or path
    while parent and not os.path.exists(parent):  # the levels to make, deepest first
        missing.append(parent)
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise GhostError(f"cannot create {what} {path}: {parent} is a file")
    if not create:
        if missing:
            check_writable_folder(parent or ".", f"cannot create {what} {path}: folder")
        return path
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # made meanwhile by someone else: not this run's
        except OSError as e:
            raise GhostError(f"cannot create {what} {path} ({e.strerror or e})")
        _created.append(os.path.realpath(folder))
        at_failure(remove_created_folders)
    return check_writable_folder(path, what)


def remove_created_folders():
    """Remove the folders this run created (prepare_folder) that are still empty,
    deepest first; a folder it did not create, or one holding anything, stays.
    cli.run_cli calls it when a run ends in an error."""
    for folder in sorted(set(_created), key=lambda f: f.count(os.sep), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    _created.clear()


class Pattern(str):
    """An output path whose file name is a glob pattern ("plots/*.png"): it stands
    for every file of its folder that the pattern matches (refuse_overwriting_inputs)."""


def _entries(path):
    """The files that writing or reading `path` touches: its folder entry (its
    folder's symlinks resolved) and the file its own symlinks lead to."""
    folder, name = os.path.split(os.path.abspath(path))
    return {os.path.join(os.path.realpath(folder), name), os.path.realpath(path)}


def _same_file(output, path):
    """Whether writing `output` (a path or a Pattern) replaces `path`."""
    if isinstance(output, Pattern):
        folder, name = os.path.split(os.path.abspath(output))
        folder = os.path.realpath(folder)
        return any(os.path.dirname(p) == folder and fnmatch.fnmatchcase(os.path.basename(p), name)
                   for p in _entries(path))
    if _entries(output) & _entries(path):
        return True
    try:
        return os.path.samefile(output, path)  # hard links
    except OSError:
        return False


def refuse_overwriting_inputs(outputs, inputs):
    """Refuse, before any work, a run that would replace one of its own inputs, write
    two of its outputs to one file, or write a file where a folder is.

    outputs: (option, path) pairs, every file the run may write, `option` the
        command-line option it comes from ("--output", "--plots-dir"); a Pattern
        ("plots/*.png") stands for every file it matches.
    inputs: (option, path) pairs, every file the run reads (globs already
        expanded, e.g. by cli.expand_inputs); missing files are fine.
    Pairs whose path is None are skipped.  Paths are compared as the files they
    reach: realpath (symlinks, `./`, `a/../a` spellings) and, for existing
    files, os.path.samefile (hard links).  Raises GhostError naming both."""
    outputs = [(o, p) for o, p in outputs if p is not None]
    inputs = [(o, p) for o, p in inputs if p is not None]
    for i, (option, out) in enumerate(outputs):
        if not isinstance(out, Pattern) and os.path.isdir(out):
            raise GhostError(f"{option}: {out} is a folder, not a file name")
        for in_option, path in inputs:
            if _same_file(out, path):
                shown = (os.path.join(os.path.dirname(out), os.path.basename(path))
                         if isinstance(out, Pattern) else out)
                raise GhostError(f"{option}: writing {shown} would replace the input "
                                 f"{in_option} {path}; choose another {option}")
        for other_option, other in outputs[i + 1:]:
            if _same_file(other, out) if isinstance(other, Pattern) else _same_file(out, other):
                raise GhostError(f"{option} {out} and {other_option} {other} are the same "
                                 f"file; choose another {option}")


def pid_alive(pid):
    """Whether a process of this machine with this PID is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


# A temporary output: `.{stem}.tmp{pid}_{k}{ext}` (see AtomicOutputs.tmp).
_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)_\d+")


def remove_stale_temporaries(folder):
    """Delete temporary outputs that a killed run (its PID gone) left in `folder`;
    those of running processes stay."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = _TMP_NAME.match(name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


def disk_full(path, unwritten=1):
    """Whether the file system holding `path` has less room than `unwritten` bytes
    (by default: none at all), as a short write without a reason is explained."""
    try:
        disk = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < unwritten


def write_failure(e, path):
    """Why writing `path` failed, in words: the OSError's own reason, or, where it
    has none (numpy's "N requested and M written"), a full disk when the folder has
    no space left."""
    if e.errno is not None:
        return e.strerror or os.strerror(e.errno)
    if disk_full(path):
        return os.strerror(errno.ENOSPC)
    return one_line(e)


class AtomicOutputs:
    """Collects outputs under temporary names; commit() renames them all.

    `tmp(final)` returns a temporary path in the same folder, with the same
    extension (writers such as np.save or savefig look at it); stale temporaries
    of killed runs in that folder are removed first.  If the block raises, every
    temporary file is removed and no final file is touched; an OSError (disk
    full, ...) becomes a one-line error naming the output.
    """

    def __init__(self):
        self.pending = []  # (tmp, final)
        self.cleaned = set()

    def tmp(self, final):
        folder = check_output_file(final)
        if folder not in self.cleaned:
            remove_stale_temporaries(folder)
            self.cleaned.add(folder)
        stem, ext = os.path.splitext(os.path.basename(final))
        tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}_{len(self.pending)}{ext}")
        self.pending.append((tmp, final))
        return tmp

    @contextlib.contextmanager
    def writing(self, final):
        """The temporary of `final` to write; a failed write (OSError) becomes a
        one-line error naming `final` and the reason (numpy's short writes carry no
        errno: a full disk is named from the folder's free space)."""
        tmp = self.tmp(final)
        try:
            yield tmp
        except OSError as e:
            raise GhostError(f"could not write {final} ({write_failure(e, tmp)}); "
                             "nothing was written") from e

    def save_npy(self, final, array):
        with self.writing(final) as tmp:
            np.save(tmp, array)

    def save_json(self, final, obj):
        text = json.dumps(plain(obj), indent=2, allow_nan=False) + "\n"
        with self.writing(final) as tmp, open(tmp, "w") as f:
            f.write(text)

    def save_bytes(self, final, data):
        with self.writing(final) as tmp, open(tmp, "wb") as f:
            f.write(data)

    def commit(self):
        if stop_received():  # a signal whose Stopped Python swallowed: nothing goes in
            raise Stopped(stop_received())
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self):
        for tmp, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except OSError as e:
                exc_type, exc = OSError, e
            except BaseException:  # a signal (Stopped): nothing goes in
                self.discard()
                raise
        if exc_type is not None:
            finals = dict(self.pending)
            self.discard()
            if issubclass(exc_type, OSError):
                name = finals.get(exc.filename, exc.filename) or "the outputs"
                raise GhostError(f"could not write {name} ({write_failure(exc, name)}); "
                                 "nothing was written") from exc
        return False


class FolderLock:
    """One writer at a time for a folder: a lock file holding the owner's PID.
    Refused with a clear message while the owner lives; taken over when it is dead
    (a killed run).  Use as a context manager; `what` names the folder's option."""

    def __init__(self, folder, what, name=".ghost_tracks.lock"):
        self.path, self.what, self.held = os.path.join(folder, name), what, False

    def _owner(self):
        try:
            with open(self.path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    raise GhostError(
                        f"{self.what} {os.path.dirname(self.path)} is in use by another run "
                        f"(PID {owner}, lock {self.path}): wait for it or choose another "
                        f"{self.what}")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)  # its owner is gone: take it over
                continue
            except OSError as e:
                raise GhostError(f"cannot lock {self.what} {os.path.dirname(self.path)} "
                                 f"({e.strerror or e})")
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise GhostError(f"cannot take the lock {self.path}: another run keeps taking it")

    def release(self):
        if self.held and self._owner() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
