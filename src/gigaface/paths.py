"""Paths a user hands us, and writes that fail: checks done before a file is opened, and
the reasons of failures in words a user can act on.

Opening a FIFO (or a character device) for reading blocks until someone writes to it, so
every file gigaface reads on a user's word is checked to be a regular file first: `os.stat`
never blocks.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable

from gigaface.errors import GigafaceError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: over a file size limit (ulimit -f)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def require_regular_file(path: str, what: str = "file") -> os.stat_result:
    """The file's stat, or a clear error when it is missing or not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GigafaceError(f"{path}: no such file") from None
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GigafaceError(f"{path}: is a directory, not {_article(what)}")
    if not stat.S_ISREG(st.st_mode):
        raise GigafaceError(f"{path}: not a regular file (a pipe or a device), not {_article(what)}")
    return st


def _article(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


def os_reason(exc: OSError, folder: str | None = None) -> str:
    """Why a write (in `folder`, when known) failed, in words."""
    if exc.errno in FULL:
        return "the disk is full" if exc.errno != errno.EFBIG else "over the file size limit (disk full?)"
    if exc.errno in NOT_WRITABLE:
        return f"cannot write in {folder or 'its folder'} ({exc.strerror})"
    return exc.strerror or str(exc)


def sqlite_write_problem(exc: sqlite3.Error) -> str | None:
    """What a failed SQLite write says about the disk, or None when it says the file is damaged.
    SQLite turns ENOSPC into SQLITE_FULL, and every other failed write (EFBIG too) into an I/O error."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_FULL" or "disk is full" in text:
        return "the disk is full"
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
        return "a write failed (disk I/O error: disk full, or a file size limit)"
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return "the library or its folder is read-only"
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in text:
        return "cannot open or create files beside it (is its folder writable?)"
    return None


def folder_of(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) or "/"


def link_new_file(path: str, write: Callable[[str], None]) -> bool:
    """Make a new file at `path`: `write` fills a private (0600) temporary beside it, which
    is then linked into place. A reader never sees it half-written, and a link never
    replaces a file: returns False when `path` was there first (another process made it).

    The temporary's name is this function's own (`.NAME.new-XXXXXXXX`), so atomic.py's
    sweep of dead writers' leftovers, which cannot tell a file just made from one whose
    writer died, never removes it from under us.
    """
    fd, aside = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.new-", dir=folder_of(path))
    os.close(fd)
    try:
        write(aside)
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.remove(aside)
        except OSError:
            pass
