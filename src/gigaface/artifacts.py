"""Where a library keeps the files it makes for each capture: pyramids, exports, uploads.

They live in a folder beside the library file (`library.db` -> `library.db.files/`), one
sub-folder per capture, so deleting a capture is deleting one folder. Every file here is
written under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from .index import Frame


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
