"""One capture's background job, run by the service in a process of its own:
scan (resuming whatever an earlier run finished), then the pyramid, then the exports.

    python -m gigaface.service.worker LIBRARY CAPTURE_ID

A process of its own, so that a scan holding every core cannot stall the web server (it
also runs at a lower priority), and so that stopping the server stops the job cleanly: the
next run resumes from the library. Progress goes into the library's `jobs` row.
"""
from __future__ import annotations

import os
import sys
import time

from gigaface.privacy import consent
from gigaface.engine import describe as describing
from gigaface.privacy.anonymise import anonymise, blurred
from gigaface.library.files import capture_files, owner_only, private_folder
from gigaface.errors import GigafaceError
from gigaface.library.records import CaptureRecord
from gigaface.library.store import Library
from gigaface.engine.plan import Settings
from gigaface.output.pyramid import build_pyramid, composed, remove_pyramid
from gigaface.ingest import Reporter, is_capture_of, scan_path
from gigaface.library.locks import capture_lock
from gigaface.engine.source import open_sequential

PROGRESS_EVERY = 0.5  # s between progress writes: readers poll the row


class JobReporter(Reporter):
    """Scan progress into the library's jobs row, at most every PROGRESS_EVERY seconds."""

    def __init__(self, library: Library, capture_id: int):
        self.library, self.capture_id = library, capture_id
        self.done = self.total = self.faces = 0
        self.stage_name = "detect"
        self.written = 0.0

    def stage(self, name: str, total: int) -> None:
        self.stage_name, self.total, self.done = name, total, 0
        if name in ("detect", "describe"):
            self.faces = 0  # faces found, then faces described: each stage counts its own
        self._write(force=True)

    def advance(self, n: int = 1, faces: int = 0) -> None:
        self.done += n
        self.faces += faces
        self._write()

    def percent(self, value: int) -> None:
        self.done = value
        self._write()

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.written >= PROGRESS_EVERY:
            self.written = now
            self.library.jobs.update(self.capture_id, stage=self.stage_name, done=self.done,
                                    total=self.total, faces=self.faces)


@owner_only()  # tiles, exports and the lock: owner-only, in owner-only folders (faces are biometric data)
def run_job(db: str, capture_id: int) -> None:
    library = Library(db)
    capture = library.captures.get(capture_id)
    files = capture_files(db, capture_id)
    private_folder(db, files.folder)
    # A job left running by a server that was killed, or a CLI scan, holds this: wait for it.
    with capture_lock(db, capture_id):
        capture = library.captures.get(capture_id)  # as the process we waited for left it
        if library.jobs.get(capture_id) is None:
            library.jobs.put(capture_id, state="running")
        library.jobs.update(capture_id, state="running", error=None)
        reporter = JobReporter(library, capture_id)
        try:
            capture = _scan(library, capture, reporter)
            _pyramids(library, capture, files, reporter)
        except GigafaceError as exc:
            library.jobs.update(capture_id, state="failed", error=str(exc))
            raise
        library.jobs.update(capture_id, state="done", stage="done", done=reporter.total,
                           faces=library.faces.count(capture_id))


def _scan(library: Library, capture: CaptureRecord, reporter: JobReporter) -> CaptureRecord:
    if capture.stage == "done":
        return capture
    for frame in capture.frames:
        if not os.path.exists(frame.path):
            raise GigafaceError(f"{frame.path}: the image is gone")
    if not is_capture_of(capture.source, capture):
        raise GigafaceError(f"{capture.source}: the file changed since it was added; add it again")
    with describing.EmbeddingPool() as pool:
        result = scan_path(library, capture.source, Settings(**capture.settings), pool=pool, resume=True,
                           reporter=reporter, discard_on_error=False)
    return result.capture


def _pyramids(library: Library, capture: CaptureRecord, files, reporter: JobReporter) -> None:
    if not os.path.exists(files.pyramid):
        reporter.stage("pyramid", 100)
        build_pyramid(composed(capture.frames, originals(library, capture)), files.pyramid, reporter.percent)
    exports = files.exports(capture.frames)
    if not os.path.exists(files.public_pyramid) or not all(map(os.path.exists, exports)):
        reporter.stage("export", 100)
        write_exports(library, capture, exports)
        build_pyramid(composed(capture.frames, [open_sequential(p) for p in exports]), files.public_pyramid,
                      reporter.percent)


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


def stale(db: str, capture_id: int, originals_too: bool) -> None:
    """Remove a capture's exports and public pyramid (and with `originals_too` its own
    pyramid) after consent or erasure changed who is shown: nothing outdated stays served
    while the next job makes them again."""
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


def has_files(db: str, capture_id: int) -> bool:
    files = capture_files(db, capture_id)
    return os.path.exists(files.pyramid) or os.path.exists(files.public_pyramid)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m gigaface.service.worker LIBRARY CAPTURE_ID", file=sys.stderr)
        return 2
    os.nice(10)  # the server's requests come first
    try:
        run_job(argv[0], int(argv[1]))
    except GigafaceError as exc:
        print(f"gigaface: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
