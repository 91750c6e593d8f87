"""Captures scanned on a cluster into one library: the use case the CLI, the Python API and
the service's jobs call with an address.

Each capture is `ingest.scan_path` with the pool's band source and describer, so the
library holds what a local scan writes, committed in the same transactions by this one
process. Several captures go at once (each in a thread of the driver with its own library
connection, sharing the slots), so that one capture's merge and describe do not leave
the cluster idle, and small captures fill it together.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager

from gigaface.cluster.pool import WorkerPool
from gigaface.cluster.units import ClusterDescriber, cluster_bands
from gigaface.engine.content_key import capture_key
from gigaface.engine.manifest import frames_of
from gigaface.engine.plan import Settings
from gigaface.engine.reporter import Reporter
from gigaface.engine.source import DEFAULT_MAX_PIXELS
from gigaface.ingest import ScanResult, find_or_add_capture, scan_path
from gigaface.library.store import Library


def input_files(paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                frames_anywhere: bool = False) -> list[tuple[str, int]]:
    """(path, size) of every file the workers will read: each image, each manifest's frames."""
    files = {}
    for path in paths:
        for frame in frames_of(path, max_pixels, frames_anywhere)[1]:
            files[frame.path] = os.stat(frame.path).st_size
    return sorted(files.items())


@contextmanager
def on_cluster(address: str, files: list[tuple[str, int]], runtime: str | None = None,
               precision: str | None = None, tile: int = 640) -> Iterator[WorkerPool]:
    """The cluster's worker pool, checked (reachable, same versions, files seen by every
    node) before the caller touches a library; closed on the way out."""
    pool = WorkerPool.start(address, runtime, precision, tile, files)
    try:
        yield pool
    finally:
        pool.close()


def scan_one(library: Library, path: str, settings: Settings, pool: WorkerPool, **options) -> ScanResult:
    """`ingest.scan_path` with its bands and faces worked on by the pool."""
    return scan_path(library, path, settings, bands=cluster_bands(pool), describer=ClusterDescriber(pool), **options)


def _register_in_order(db: str, paths: list[str], settings: Settings, max_pixels: int, frames_anywhere: bool) -> None:
    """Captures made in the order of the paths, as a local scan numbers them, before the
    threads race to make them."""
    library = Library(db)
    try:
        for path in paths:
            kind, frames = frames_of(path, max_pixels, frames_anywhere)
            find_or_add_capture(library, path, capture_key(path, frames), kind, frames, settings)
    finally:
        library.close()


def captures_at_once(captures: int, slots: int) -> int:
    """Two captures keep the slots busy through each other's merge and describe; a large
    cluster takes more small captures at once."""
    return max(1, min(captures, 2 + slots // 8))


def scan_paths(db: str, paths: list[str], settings: Settings, pool: WorkerPool,
               reporter_for: Callable[[str], AbstractContextManager[Reporter]], **options) -> list[ScanResult]:
    """Every path scanned into the library `db`, in results of the paths' order. When one
    fails, no capture is started after it, those running finish, and its error is raised."""

    def one(path: str) -> ScanResult:
        library = Library(db)  # a connection per thread: sqlite3's rule
        try:
            with reporter_for(path) as reporter:
                return scan_one(library, path, settings, pool, reporter=reporter, **options)
        finally:
            library.close()

    at_once = captures_at_once(len(paths), pool.size)
    if at_once == 1:
        return [one(path) for path in paths]
    _register_in_order(db, paths, settings, options.get("max_pixels", DEFAULT_MAX_PIXELS),
                       options.get("frames_anywhere", False))
    threads = ThreadPoolExecutor(at_once, thread_name_prefix="capture")
    try:
        futures = [threads.submit(one, path) for path in paths]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()  # those not started yet
            wait(futures)
            raise failed.exception()
        return [f.result() for f in futures]
    finally:
        # Interrupted (Ctrl-C): return now; the caller closes the pool, which ends the
        # threads' calls.
        threads.shutdown(wait=False, cancel_futures=True)
