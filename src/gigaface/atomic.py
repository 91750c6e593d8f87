"""The one way gigaface writes a file: under a temporary name beside its destination, then
renamed into place, so a reader sees the old file or the new one, never half of one.

A process killed mid-write (SIGKILL, power cut, OOM killer) cannot clean up, so it leaves
its temporary file or folder behind. The next writer of the same destination removes such
leftovers before it starts. To tell a leftover from another live writer's work in
progress, every temporary is held under an flock by the process writing it: the kernel
drops the lock when that process ends, however it ends, so a temporary whose lock can be
taken belongs to nobody.

Names are `.DEST.gigaface-XXXXXXXX[SUFFIX]` beside DEST: hidden, and specific to one
destination, so a sweep never touches anything but this module's own leftovers for it.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

MARK = ".gigaface-"


def _prefix(final: str) -> str:
    return f".{os.path.basename(final)}{MARK}"


def remove_leftovers(final: str, suffix: str = "") -> list[str]:
    """Delete temporaries for `final` left by writers that died; returns what was removed."""
    directory = os.path.dirname(os.path.abspath(final))
    # tempfile's names are 8 characters of [a-z0-9_]
    pattern = re.compile(re.escape(_prefix(final)) + r"[a-z0-9_]{8}" + re.escape(suffix) + r"\Z")
    try:
        names = [n for n in os.listdir(directory) if pattern.match(n)]
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextmanager
def temporary_beside(final: str, suffix: str = "", folder: bool = False) -> Iterator[str]:
    """A locked temporary file (or folder) beside `final`, removed on exit unless the caller
    has renamed it (or, for a folder, its contents) into place. Leftovers of earlier,
    killed writers of `final` are removed first."""
    directory = os.path.dirname(os.path.abspath(final))
    remove_leftovers(final, suffix)
    if folder:
        path = tempfile.mkdtemp(prefix=_prefix(final), suffix=suffix, dir=directory)
    else:
        fd, path = tempfile.mkstemp(prefix=_prefix(final), suffix=suffix, dir=directory)
        os.close(fd)
        # mkstemp makes the file private (0600); the finished output should get the usual
        # permissions of a new file, as if written in place.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)
    lock = os.open(path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        finally:
            os.close(lock)


def write_bytes(final: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to `final` through a temporary beside it (see temporary_beside)."""
    final = os.fspath(final)
    with temporary_beside(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, final)
