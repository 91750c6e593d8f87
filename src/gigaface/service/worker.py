"""One capture's background job, run by the service in a process of its own:
scan (resuming whatever an earlier run finished), then the pyramid, then the exports
(`privacy.refresh.build_outputs`).

    python -m gigaface.service.worker LIBRARY CAPTURE_ID

A process of its own, so that a scan holding every core cannot stall the web server (it
also runs at a lower priority), and so that stopping the server stops the job cleanly: the
next run resumes from the library. Progress goes into the library's `jobs` row.
"""
from __future__ import annotations

import os
import sys
import time

from gigaface import process
from gigaface.cluster.connect import cluster_address
from gigaface.engine.plan import Settings
from gigaface.errors import GigafaceError
from gigaface.engine.reporter import Reporter
from gigaface.ingest import is_capture_of, scan_path
from gigaface.library.files import capture_files, owner_only, private_folder
from gigaface.library.locks import capture_lock
from gigaface.library.store import Library
from gigaface.library.records import CaptureRecord
from gigaface.privacy.refresh import build_outputs

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
            build_outputs(library, capture, files, reporter)
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
    settings = Settings.from_dict(capture.settings)
    address = cluster_address(None)  # the server's --cluster, handed down by the runner
    if address is None:
        result = scan_path(library, capture.source, settings, resume=True, reporter=reporter, discard_on_error=False)
        return result.capture
    from gigaface.cluster.scan import on_cluster, scan_one  # Ray only when a cluster is asked for

    files = [(frame.path, os.stat(frame.path).st_size) for frame in capture.frames]
    with on_cluster(address, files, tile=settings.tile) as pool:
        result = scan_one(library, capture.source, settings, pool, resume=True, reporter=reporter,
                          discard_on_error=False)
    return result.capture


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m gigaface.service.worker LIBRARY CAPTURE_ID", file=sys.stderr)
        return 2
    os.nice(10)  # the server's requests come first
    process.configure_process()
    try:
        run_job(argv[0], int(argv[1]))
    except GigafaceError as exc:
        print(f"gigaface: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
