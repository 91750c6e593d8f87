"""A capture's published outputs, and remaking them when who is shown changes.

The outputs: the viewer's pyramid of the originals (untouched but for erased people), the
anonymised exports (every face blurred but consented matches) and their public pyramid.
A consent added or withdrawn changes the exports; an erasure changes the originals' pyramid
too. The CLI remakes them in its own process, the service queues a job: both go through
`refresh_outputs`, so the order (stop the maker, remove what is outdated, make again) is
the same, and nothing outdated stays served while the new files are made.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from gigaface.engine.source import open_sequential
from gigaface.errors import GigafaceError
from gigaface.library.files import CaptureFiles, capture_files
from gigaface.library.store import Library
from gigaface.library.records import CaptureRecord
from gigaface.output.pyramid import build_pyramid, composed, remove_pyramid
from gigaface.privacy import consent
from gigaface.privacy.anonymise import anonymise, blurred


class Progress:
    """Where `build_outputs` says how far it is; this one listens to nothing."""

    def stage(self, name: str, total: int) -> None: ...
    def percent(self, value: int) -> None: ...


def build_outputs(library: Library, capture: CaptureRecord, files: CaptureFiles,
                  progress: Progress | None = None) -> None:
    """Make whichever of the capture's outputs is missing (a scanned capture's)."""
    progress = progress or Progress()
    if not os.path.exists(files.pyramid):
        progress.stage("pyramid", 100)
        build_pyramid(composed(capture.frames, originals(library, capture)), files.pyramid, progress.percent)
    exports = files.exports(capture.frames)
    if not os.path.exists(files.public_pyramid) or not all(map(os.path.exists, exports)):
        progress.stage("export", 100)
        write_exports(library, capture, exports)
        build_pyramid(composed(capture.frames, [open_sequential(p) for p in exports]), files.public_pyramid,
                      progress.percent)


def originals(library: Library, capture: CaptureRecord) -> list:
    """Each frame as the viewer's own pyramid shows it: untouched, but for the faces of
    people who asked to be forgotten, which are blurred there too."""
    erased = [f for f in library.faces.all(capture.id) if f.erased]
    return [blurred(frame.path, _boxes_in(frame, [f for f in erased if f.frame == i]))
            if any(f.frame == i for f in erased) else open_sequential(frame.path)
            for i, frame in enumerate(capture.frames)]


def write_exports(library: Library, capture: CaptureRecord, exports: list[str]) -> int:
    """Each frame with every face blurred but consented matches, written atomically;
    returns faces blurred."""
    shown = consent.revealed(library, capture.id)
    faces = [f for f in library.faces.all(capture.id, include_unlisted=True) if f.id not in shown]  # blur point included
    blurred_count = 0
    for i, (frame, out) in enumerate(zip(capture.frames, exports)):
        blurred_count += anonymise(frame.path, _boxes_in(frame, [f for f in faces if f.frame == i]), out)
    return blurred_count


def _boxes_in(frame, faces) -> list[tuple[float, float, float, float]]:
    return [(f.box[0] - frame.x, f.box[1] - frame.y, f.box[2], f.box[3]) for f in faces]


def has_outputs(db: str, capture_id: int) -> bool:
    """Whether any pyramid of the capture was made (by `gigaface serve` or `view`)."""
    files = capture_files(db, capture_id)
    return os.path.exists(files.pyramid) or os.path.exists(files.public_pyramid)


def remove_outdated_files(db: str, capture_id: int, originals_too: bool) -> None:
    """Delete a capture's exports and public pyramid (and with `originals_too` its own
    pyramid): they show people who may no longer be shown, or hide one who may."""
    files = capture_files(db, capture_id)
    library = Library(db)
    try:
        capture = library.captures.get(capture_id)
    except GigafaceError:
        return
    finally:
        library.close()
    remove_pyramid(files.public_pyramid)
    if originals_too:
        remove_pyramid(files.pyramid)
    for path in files.exports(capture.frames):
        if os.path.exists(path):
            os.remove(path)


def refresh_outputs(db: str, capture_ids: Iterable[int], originals_too: bool, remake: Callable[[int], None],
                    stop: Callable[[int], None] | None = None, made_only: bool = False) -> list[int]:
    """Who is shown in these captures changed: for each, stop what may be writing its outputs
    (`stop`: the service's running job), delete the outdated ones, and have them made again
    (`remake`: a job queued by the service, or run here by the CLI). With `made_only`, a
    capture that never had outputs is left alone (the CLI makes none of its own accord).
    Returns the captures remade."""
    remade = []
    for capture_id in capture_ids:
        if made_only and not has_outputs(db, capture_id):
            continue
        if stop is not None:
            stop(capture_id)  # first: a job still running would write the old outputs again
        remove_outdated_files(db, capture_id, originals_too)
        remake(capture_id)
        remade.append(capture_id)
    return remade
