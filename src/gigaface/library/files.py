"""Where a library keeps the files it makes for each capture: pyramids, exports, uploads.

They live in a folder beside the library file (`library.db` -> `library.db.files/`), one
sub-folder per capture, so deleting a capture is deleting one folder. Every file here is
written under a temporary name and renamed into place when complete, and all of it is
its owner's only (folders 0700, files 0600).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from gigaface.engine.frames import Frame


@dataclass(frozen=True)
class CaptureFiles:
    folder: str

    @property
    def pyramid(self) -> str:          # DeepZoom of the original: pyramid.dzi + pyramid_files/
        return os.path.join(self.folder, "pyramid.dzi")

    @property
    def public_pyramid(self) -> str:   # DeepZoom of the anonymised copy
        return os.path.join(self.folder, "public.dzi")

    def exports(self, frames: Sequence[Frame]) -> list[str]:
        """The anonymised copy of each frame (one for a plain image): JPEG while it fits
        JPEG's 65,535-px limit, TIFF beyond."""
        names = []
        for k, f in enumerate(frames):
            stem = "anonymised" if len(frames) == 1 else f"anonymised-{k:03d}"
            names.append(os.path.join(self.folder, stem + (".jpg" if max(f.width, f.height) <= 65_000 else ".tif")))
        return names

    @property
    def lock(self) -> str:             # held by the process working on the capture
        return os.path.join(self.folder, "job.lock")

    def tiles(self, which: str) -> str:
        """The tile folder of a pyramid ('pyramid' or 'public')."""
        return os.path.join(self.folder, f"{which}_files")


def files_root(db: str) -> str:
    return os.path.abspath(db) + ".files"


def capture_files(db: str, capture_id: int) -> CaptureFiles:
    return CaptureFiles(os.path.join(files_root(db), f"capture-{int(capture_id)}"))


def uploads_folder(db: str) -> str:
    return os.path.join(files_root(db), "uploads")


def remove_capture_files(db: str, capture_id: int) -> None:
    shutil.rmtree(capture_files(db, capture_id).folder, ignore_errors=True)


def private_folder(db: str, folder: str) -> str:
    """Make `folder` (inside the library's files root) and every folder between, owner-only.

    Pyramids, exports and uploads show faces: biometric-grade data. `os.makedirs` applies
    its mode to the last folder only, so each level is made here; the root is set to 0700
    even if an older version made it readable by everyone.
    """
    root = files_root(db)
    relative = os.path.relpath(os.path.abspath(folder), root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"{folder} is not inside {root}")
    level = root
    for part in ["", *relative.split(os.sep)] if relative != os.curdir else [""]:
        level = os.path.join(level, part) if part else level
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            pass
    os.chmod(root, 0o700)
    return folder


@contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders made meanwhile by this process are its owner's only (umask 077);
    also a decorator. The umask is the process's: use it where one job owns the process
    (the job worker, a CLI command), never in the server's threads."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def pyramid_build(dzi: str) -> str | None:
    """The version of the pyramid at `dzi`, or None when there is none.

    Every build writes a new descriptor and renames it into place (a new inode and a new
    time), so a rebuild changes the version. It goes into the pyramid's URLs: a browser
    never shows tiles cached from an earlier build, which may show a face that is blurred
    now (an erasure, a withdrawn consent).
    """
    try:
        st = os.stat(dzi)
    except FileNotFoundError:
        return None
    return hashlib.sha256(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}".encode()).hexdigest()[:16]
