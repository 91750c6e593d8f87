"""The service's job runner: one capture's job at a time, each in a `service.worker` process.

The queue is the library's `jobs` table, so it survives a restart: at start-up, jobs left
`running` by a server that stopped are queued again, and their scan resumes from the last
band or batch the library holds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from gigaface.cluster.connect import CLUSTER_ENV
from gigaface.library.files import capture_files
from gigaface.library.store import Library

WORKER = [sys.executable, "-m", "gigaface.service.worker"]


class JobRunner:
    def __init__(self, db: str, cluster: str | None = None):
        self.db = db
        # The jobs' scans run on this Ray cluster (None: in the job process itself).
        self.env = {k: v for k, v in os.environ.items() if k != CLUSTER_ENV}
        if cluster:
            self.env[CLUSTER_ENV] = cluster
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: subprocess.Popen | None = None
        self.current_capture: int | None = None
        self.cancelled: set[int] = set()   # stopped on purpose: not a failure
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="gigaface-jobs", daemon=True)

    def start(self) -> None:
        library = Library(self.db)
        for job in library.jobs.all(states=("running",)):
            library.jobs.update(job.capture, state="queued")
        self.queue_missing_files(library)
        library.close()
        self.thread.start()

    def queue_missing_files(self, library: Library) -> None:
        """Scanned captures without a pyramid or exports (scanned by the CLI, or their files
        were removed) get a job that makes them."""
        for capture in library.captures.all():
            job = library.jobs.get(capture.id)
            if job is not None and job.state in ("queued", "running", "failed"):
                continue
            files = capture_files(self.db, capture.id)
            ready = (capture.stage == "done" and os.path.exists(files.pyramid)
                     and os.path.exists(files.public_pyramid)
                     and all(map(os.path.exists, files.exports(capture.frames))))
            if not ready:
                library.jobs.put(capture.id, stage="pyramid" if capture.stage == "done" else capture.stage)

    def submit(self, capture_id: int) -> None:
        self.wake.set()

    def cancel(self, capture_id: int) -> None:
        """Stop the capture's job if it is the one running (it is about to be deleted, or
        redone with other consents)."""
        with self.lock:
            if self.current_capture == capture_id and self.current is not None:
                self.cancelled.add(capture_id)
                self.current.terminate()
                try:
                    self.current.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.current.kill()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        with self.lock:
            if self.current is not None:
                # SIGTERM: the worker dies between committed bands; the next start resumes.
                self.current.send_signal(signal.SIGTERM)
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        library = Library(self.db)  # sqlite3 connections belong to the thread that made them
        while not self.stopping.is_set():
            queued = library.jobs.all(states=("queued",))
            if not queued:
                self.wake.wait(timeout=2)
                self.wake.clear()
                continue
            self._run(library, queued[0].capture)
        library.close()

    def _run(self, library: Library, capture_id: int) -> None:
        with self.lock:
            if self.stopping.is_set():
                return
            self.current_capture = capture_id
            self.current = subprocess.Popen([*WORKER, self.db, str(capture_id)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                            env=self.env)
        _, stderr = self.current.communicate()
        code = self.current.returncode
        with self.lock:
            self.current = self.current_capture = None
            cancelled = capture_id in self.cancelled
            self.cancelled.discard(capture_id)
        if self.stopping.is_set() or cancelled:
            return
        job = library.jobs.get(capture_id)
        if job is not None and code != 0 and job.state != "failed":
            # Killed or crashed without a word: fail the job with what it said, so the
            # queue moves on instead of retrying it forever.
            last = (stderr or "").strip().splitlines()
            library.jobs.update(capture_id, state="failed",
                                    error=last[-1][:300] if last else f"job worker exited with {code}")
