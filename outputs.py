"""Writing outputs safely: output locations checked before the long work, files
written under temporary names and renamed together at the end, temporaries of
killed runs removed, and a lock so that one run at a time writes to a folder.
"""
import contextlib
import json
import os
import re
import tempfile

import numpy as np

from utils import GhostError, plain


def check_writable_folder(folder, what="output folder"):
    """`folder` exists and a file can really be created in it (os.access says yes
    to root in /proc, for instance, so try it)."""
    if not os.path.isdir(folder):
        raise GhostError(f"{what} {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ghost_probe")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise GhostError(f"{what} {folder} is not writable ({e.strerror or e})")
    return folder


def check_output_file(path):
    """The file `path` can be written: its folder exists and is writable, and the
    name is not taken by a folder."""
    folder = check_writable_folder(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        raise GhostError(f"output {path} is a folder, not a file name")
    return folder


def prepare_folder(path, what, create=True):
    """Create the output folder `path` (an option named by `what`) if needed and
    check that it is writable: before any long work, never after it.  With
    create=False, only check that it could be created (its first existing parent
    is a writable folder)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GhostError(f"{what} {path} is a file, not a folder")
    if not create and not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise GhostError(f"cannot create {what} {path}: {parent} is a file")
        check_writable_folder(parent, f"cannot create {what} {path}: folder")
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise GhostError(f"cannot create {what} {path} ({e.strerror or e})")
    return check_writable_folder(path, what)


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

    def save_npy(self, final, array):
        np.save(self.tmp(final), array)

    def save_json(self, final, obj):
        with open(self.tmp(final), "w") as f:
            json.dump(plain(obj), f, indent=2, allow_nan=False)
            f.write("\n")

    def save_bytes(self, final, data):
        with open(self.tmp(final), "wb") as f:
            f.write(data)

    def commit(self):
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
        if exc_type is not None:
            finals = dict(self.pending)
            self.discard()
            if issubclass(exc_type, OSError):
                name = finals.get(exc.filename, exc.filename) or "the outputs"
                raise GhostError(f"could not write {name} ({exc.strerror or exc}); "
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
