"""One writer per capture: the lock that the CLI's and the Python API's scans (through
`ingest.scan_path`) and the service's job worker all take before working on a capture.

Two scans of one capture at once undo each other's work (one merges while the other
restarts, and both end `done` with no faces), so the second waits for the first and then
finds the capture scanned. The lock is an flock on `LIBRARY.files/capture-N/job.lock`:
the kernel drops it when its process ends, however it ends, so a killed scan never leaves
a capture locked.

It is re-entrant within a thread (the job worker holds it around a scan that takes it
again) and exclusive between threads and processes (each acquisition opens the file anew,
and flock locks belong to the open file).
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gigaface.library.files import capture_files, private_folder

_held = threading.local()


def lock_path(db: str, capture_id: int) -> str:
    # The real path: two processes naming one library through a symlink share its locks.
    return capture_files(os.path.realpath(db), capture_id).lock


def waiting_message(capture_id: int) -> str:
    return f"capture {capture_id} is being scanned by another process; waiting"


@contextmanager
def capture_lock(db: str, capture_id: int, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the capture's lock; when another process or thread holds it, call `on_wait`
    with a line saying so, then wait for it."""
    path = lock_path(db, capture_id)
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    private_folder(os.path.realpath(db), os.path.dirname(path))  # the files folder is owner-only
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(waiting_message(capture_id))
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
    finally:
        os.close(fd)  # drops the flock
