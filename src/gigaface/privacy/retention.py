"""Retention: captures carry an expiry (the library's retention, 30 days by default), and
what expired is removed, templates first.

Removal is in steps that each leave a sound library: the embeddings and consents go in
one transaction (after it, nothing biometric is left of the capture), then the capture's
rows, then its files. An interrupted purge is finished by the next one.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from gigaface.library.files import remove_capture_files
from gigaface.library.records import CaptureRecord
from gigaface.library.store import Library


@dataclass(frozen=True)
class Purged:
    capture: int
    source: str
    expired_at: float
    faces: int
    embeddings: int


def purge(library: Library, db: str, now: float | None = None, dry_run: bool = False,
          before_remove=None) -> list[Purged]:
    """Remove every capture whose expiry has passed; `before_remove(capture_id)` lets the
    service stop a job still working on one."""
    purged = []
    for capture in library.captures.expired(now):
        faces = library.faces.count(capture.id)
        if dry_run:
            purged.append(Purged(capture.id, capture.source, capture.expires_at, faces,
                                 library.faces.count(capture.id, embedded=True)))
            continue
        if before_remove is not None:
            before_remove(capture.id)
        purged.append(Purged(capture.id, capture.source, capture.expires_at, faces, library.faces.drop_embeddings(capture.id)))
        remove(library, db, capture)
    if purged and not dry_run:
        library.flush_deleted()
    return purged


def remove(library: Library, db: str, capture: CaptureRecord) -> None:
    """A capture's rows, then its files and the upload the library owned."""
    job = library.jobs.get(capture.id)
    library.captures.delete(capture.id)
    remove_capture_files(db, capture.id)
    if job is not None and job.owned_file:
        shutil.rmtree(os.path.dirname(job.owned_file), ignore_errors=True)


def expiry_text(capture: CaptureRecord, now: float | None = None) -> str:
    if capture.expires_at is None:
        return "kept"
    days = (capture.expires_at - (time.time() if now is None else now)) / 86400
    return "expired" if days <= 0 else f"in {days:.0f} days" if days >= 1 else f"in {days * 24:.0f} hours"
