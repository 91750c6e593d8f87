"""The detect stage's units of work on a cluster, and the band source ingest runs them as.

How a frame's bands reach a worker depends on how the frame can be read
(bench/cluster.py measured the choices; bench/report.md, section 9):

  random access (TIFF, tiled or in strips): workers read their own ranges of bands, from
      the file every node sees; nothing passes through the driver.
  a JPEG, PNG... (decoded from the top only), when the capture has frames enough to keep
      every slot busy: one unit per frame and pass, read by the worker.
  otherwise (one big JPEG): the driver decodes the bands once, top to bottom, and ships
      each through Ray's object store to the slot that detects it. Converting to a tiled
      TIFF first would cost a decode and an encode before any worker starts, and its
      downscaled passes would not be the JPEG's shrink-on-load pixels, so not the boxes
      of a local scan.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from gigaface.cluster.pool import Call, WorkerPool
from gigaface.engine.detect import read_pass
from gigaface.engine.frames import Frame
from gigaface.engine.plan import Settings, plan_passes
from gigaface.engine.source import ImageInfo, probe
from gigaface.ingest import BandResult, BandSource, Seeds

UNITS_PER_SLOT = 3  # band ranges of a random-access pass: enough to even out the slots' speeds


def random_access(info: ImageInfo) -> bool:
    """Whether workers can read any rows of the file without decoding those above them:
    libtiff addresses tiles and strips directly."""
    return info.loader.startswith("tiffload")


def detect_units(frames: list[Frame], settings: Settings, done: set[tuple[int, int, int]], max_pixels: int,
                 slots: int, seeded: bool, seeds: Seeds) -> Iterator[Call]:
    """The calls that detect every unit not done, frame by frame, pass by pass: of the
    passes that are not seeded, or (`seeded`) of those that are, with `seeds(frame)` read
    when the frame's calls are made. Shipped units are read lazily, as the pool takes the
    calls, so the driver holds few at once."""
    passes_per_frame = len(plan_passes(frames[0].width, frames[0].height, settings))
    many = len(frames) * passes_per_frame >= 2 * slots
    for fi, frame in enumerate(frames):
        info = probe(frame.path, max_pixels)
        found = None
        for pi, p in enumerate(plan_passes(frame.width, frame.height, settings)):
            if p.seeded != seeded:
                continue
            if seeded and found is None:
                found = seeds(fi)
            skip = {b for (f, q, b) in done if f == fi and q == pi}
            if random_access(info) or many:
                grid, _ = read_pass(info, p, skip)  # its grid only: nothing is decoded
                wanted = [u for u in grid.units if u not in skip]
                if not wanted:
                    continue
                size = len(wanted) if not random_access(info) else max(1, math.ceil(len(wanted) / (UNITS_PER_SLOT * slots)))
                for at in range(0, len(wanted), size):
                    yield Call("detect_bands", (frame.path, max_pixels, p, settings, wanted[at : at + size],
                                                len(grid.units), found), tag=(fi, pi))
            else:
                grid, produced = read_pass(info, p, skip)
                for unit in produced:
                    yield Call("detect_unit", (grid, p, settings, found), tag=(fi, pi), put=unit,
                               nbytes=unit.band.pixels.nbytes)


def cluster_bands(pool: WorkerPool) -> BandSource:
    """A band source for `ingest.scan_path` whose units are detected by the pool's slots:
    every pass that is not seeded first, then the seeded ones, whose seeds are what the
    first were committed as (the driver commits each result before it asks for the next)."""

    def source(frames: list[Frame], settings: Settings, done: set[tuple[int, int, int]],
               max_pixels: int, seeds: Seeds) -> Iterator[BandResult]:
        for seeded in (False, True):
            for call, results in pool.map(detect_units(frames, settings, done, max_pixels, pool.size, seeded, seeds)):
                fi, pi = call.tag
                for unit, tiles, dets in results:
                    yield fi, pi, unit, tiles, dets

    return source


class ClusterDescriber:
    """The describe stage's describer (`ingest.describe_faces`) on the pool's slots: the
    driver reads each face's region as a local scan does and ships it; a slot returns
    quality, embedding and crop."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool

    @property
    def workers(self) -> int:  # batches in flight beyond the one being filled
        return 2 * self.pool.size

    def submit(self, regions: list):
        return self.pool.submit(Call("describe", (regions,)))

    def close(self) -> None: ...
