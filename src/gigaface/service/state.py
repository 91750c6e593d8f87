"""One server's state (`app.state.service`): its settings, a library connection per thread,
the library's index of templates, the job runner, the reference pool, the open event
streams, and the background purge."""
from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import HTTPException, Request

from gigaface.engine.source import DEFAULT_MAX_PIXELS
from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.library.records import CaptureRecord
from gigaface.privacy.refresh import refresh_outputs
from gigaface.privacy.retention import Purged, purge
from gigaface.references import ReferencePool
from gigaface.search_index import LibraryIndex
from gigaface.service.runner import JobRunner
from gigaface.service.streams import StreamSlots
from gigaface.service.uploads import DEFAULT_MAX_UPLOAD


@dataclass(frozen=True)
class Config:
    db: str
    local: bool = False         # `gigaface view`: one local user, no tokens...
    local_key: str | None = None    # ...but this run's secret, in the X-Gigaface-Key header
    public: bool = False        # anonymous read-only access to the anonymised pyramids
    max_upload: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    run_jobs: bool = True
    purge_every: float = 60.0   # seconds between removals of expired captures
    data_dir: str | None = None     # captures by server path only from under here; None: uploads only
    host: str = "127.0.0.1"     # the address the server listens on
    allow_hosts: tuple[str, ...] = ()   # more Host names it answers for (behind a DNS name)
    cluster: str | None = None  # a Ray cluster's address: the jobs' scans run there


class Service:
    def __init__(self, config: Config):
        if config.local and not config.local_key:
            raise ValueError("a local server needs its run's key (Config.local_key)")
        Library(config.db)  # a clear error now rather than on the first request
        self.config = config
        self.db = config.db
        self.runner = JobRunner(config.db, config.cluster) if config.run_jobs else None
        self.streams = StreamSlots()
        self._local = threading.local()
        self._pool_lock = threading.Lock()
        self._pool: ReferencePool | None = None
        # The library's templates, loaded at the first search and kept in step with the
        # library before each one (scans add, erasure and purge remove at once).
        self.index = LibraryIndex(config.db)

    def library(self) -> Library:
        # sqlite3 connections belong to their thread; FastAPI runs handlers in a pool.
        lib = getattr(self._local, "library", None)
        if lib is None:
            lib = self._local.library = Library(self.db)
        return lib

    def reference_pool(self) -> ReferencePool:
        with self._pool_lock:  # started at the first search: a server that only shows starts fast
            if self._pool is None:
                self._pool = ReferencePool()
            return self._pool

    def capture_or_404(self, capture_id: int) -> CaptureRecord:
        try:
            return self.library().captures.get(capture_id)
        except GigafaceError:
            raise HTTPException(404, f"no capture {capture_id}") from None

    def cancel_job(self, capture_id: int) -> None:
        if self.runner is not None:
            self.runner.cancel(capture_id)

    def submit(self, capture_id: int) -> None:
        """Wake the runner for the capture's queued job."""
        if self.runner is not None:
            self.runner.submit(capture_id)

    def requeue(self, capture_id: int) -> None:
        """A job for a capture that has one already: it makes whatever the capture lacks."""
        lib = self.library()
        capture = lib.captures.get(capture_id)
        lib.jobs.put(capture_id, stage="pyramid" if capture.stage == "done" else capture.stage)
        self.submit(capture_id)

    def refresh(self, capture_id: int, originals_too: bool) -> None:
        """Who is shown in the capture changed: its job is stopped, the outdated files go,
        and a job makes them again."""
        refresh_outputs(self.db, [capture_id], originals_too, self.requeue, stop=self.cancel_job)

    def purge_expired(self) -> list[Purged]:
        return purge(self.library(), self.db, before_remove=self.runner.cancel if self.runner is not None else None)

    async def _purge_now_and_then(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.purge_expired)
            except GigafaceError as exc:  # e.g. the library is locked by a long write: next time
                print(f"gigaface: purge: {exc}", flush=True)
            await asyncio.sleep(self.config.purge_every)

    @asynccontextmanager
    async def running(self):
        """The server's lifespan: jobs and the purge run while it serves."""
        if self.runner is not None:
            self.runner.start()
        purging = asyncio.create_task(self._purge_now_and_then()) if self.config.run_jobs else None
        yield
        if purging is not None:
            purging.cancel()
        if self.runner is not None:
            await asyncio.to_thread(self.runner.stop)
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()


async def service_of(request: Request) -> Service:
    """The route's server state (a dependency)."""
    return request.app.state.service
