"""A scan: a capture through the engine's stages into the library, each stage resumable.

The stages themselves are the engine's (engine/detect.py, engine/merge.py,
engine/describe.py) and know no library; this module runs them against one and commits
their units of work.

Stages and their unit of resume:
  detect    one band of one pass of one frame, committed with its detections
  merge     all-or-nothing (it is quick): raw detections become faces
  describe  a batch of faces, committed with their quality, crop and embedding

Detection looks down to the settings' blur point (a lower score, smaller faces) and the
merge keeps everything it found: faces at the listing point are `listed`, the rest are
boxes stored only so that every published image blurs them too.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from gigaface.engine import describe as describing
from gigaface.engine.content_key import capture_key, legacy_capture_key
from gigaface.engine.detect import count_tiles, detect_bands, seed_points
from gigaface.engine.detections import Detections
from gigaface.engine.detector import CenterFace, Detector
from gigaface.engine.frames import Frame, panorama_size
from gigaface.engine.manifest import frames_of
from gigaface.engine.merge import merge, outside_erased
from gigaface.engine.plan import Settings, plan_passes
from gigaface.engine.reporter import Reporter
from gigaface.engine.source import DEFAULT_MAX_PIXELS, RowWindow, load_scaled, probe
from gigaface.errors import GigafaceError
from gigaface.library.locks import capture_lock
from gigaface.library.records import CaptureRecord, Face
from gigaface.library.store import Library

DESCRIBE_NATIVE_MAX = 320  # px: larger faces are described from a downscaled read
# The describe stage's ring of rows, at most: an image wider than 32k px is described in
# column stripes (its full-width ring took 200 MB at 64k px, the scan's peak at 2 GP).
DESCRIBE_WINDOW_BYTES = 96 << 20


@dataclass
class ScanResult:
    capture: CaptureRecord
    faces: int  # listed
    described: int
    seconds: float
    skipped: bool  # True when the capture was already scanned with these settings
    tiles: int = 0
    detect_seconds: float = 0.0
    describe_seconds: float = 0.0
    stored: int = 0  # listed, and the boxes kept only to be blurred


def is_capture_of(path: str, capture: CaptureRecord) -> bool:
    """Whether the file at `path` is still what `capture` was made from (full key, or the
    older key of a capture made from this very path)."""
    if capture.key == capture_key(path):
        return True
    return os.path.abspath(path) == capture.source and capture.key == legacy_capture_key(path)


# --- detection --------------------------------------------------------------------------
# Where the detect stage's band results come from: (frames, settings, units already done as
# (frame, pass, unit), max_pixels, seeds) -> (frame, pass, unit, tiles, detections in native
# frame pixels) for every unit not done. The passes before a frame's seeded passes come
# first: `seeds(frame index)` reads, from what was committed, where a seeded pass looks.
# This process's detector (`detect_here`), or a cluster's workers (gigaface.cluster): the
# stage that commits them is the same.
BandResult = tuple[int, int, int, int, Detections]
Seeds = Callable[[int], np.ndarray]
BandSource = Callable[[list[Frame], Settings, set[tuple[int, int, int]], int, Seeds], Iterator[BandResult]]


def detect_here(detector: Detector | None = None) -> BandSource:
    """Every unit detected in this process, frame by frame, pass by pass, top to bottom."""

    def source(frames: list[Frame], settings: Settings, done: set[tuple[int, int, int]],
               max_pixels: int, seeds: Seeds) -> Iterator[BandResult]:
        nonlocal detector
        detector = detector or CenterFace(settings.tile)
        for fi, frame in enumerate(frames):
            info = probe(frame.path, max_pixels)
            for pi, p in enumerate(plan_passes(frame.width, frame.height, settings)):
                skip = {b for (f, q, b) in done if f == fi and q == pi}
                # Asked for here, when every earlier result was yielded and so committed.
                found = seeds(fi) if p.seeded else None
                for unit, tiles, dets in detect_bands(info, p, detector, settings, skip, found):
                    yield fi, pi, unit, tiles, dets

    return source


def _seeds(library: Library, capture_id: int, frame_index: int, frame: Frame) -> np.ndarray:
    """Centres (frame pixels) of the faces found in a frame so far: where a seeded pass looks.
    Read from the library, so that a resumed scan looks where the first one would have."""
    _, dets = library.captures.detections(capture_id, frame_index)
    return seed_points(dets) - [frame.x, frame.y]


# --- description ------------------------------------------------------------------------
def describe_faces(library: Library, capture: CaptureRecord, settings: Settings,
                   describer: describing.Describer | None, reporter: Reporter, max_pixels: int) -> int:
    """Quality, crop and (for faces big enough) embedding of every face not yet described."""
    pending = library.faces.undescribed(capture.id)
    reporter.stage("describe", len(pending))
    described = 0
    in_flight: deque = deque()

    def drain(limit: int) -> None:
        nonlocal described
        while len(in_flight) > limit:
            future, face_ids = in_flight.popleft()
            library.faces.save_descriptions([(i, q, v, c) for i, (q, v, c) in zip(face_ids, future.result())])
            described += len(face_ids)
            reporter.advance(len(face_ids), faces=len(face_ids))

    batch: list[describing.Region] = []
    ids: list[int] = []

    def flush() -> None:
        if not batch:
            return
        work = list(batch)
        future = describer.submit(work) if describer else _done(describing.describe_regions(work))
        in_flight.append((future, list(ids)))
        batch.clear()
        ids.clear()
        drain(describer.workers if describer else 0)

    by_frame: dict[int, list[Face]] = {}
    for face in pending:
        by_frame.setdefault(face.frame, []).append(face)
    for fi, faces in by_frame.items():
        frame = capture.frames[fi]
        info = probe(frame.path, max_pixels)
        # Faces too big for a native-resolution window are read from a downscaled copy;
        # the chip is 150 px anyway.
        levels: dict[float, list[Face]] = {}
        for face in faces:
            scale = 1.0
            while max(face.box[2:]) * scale > DESCRIBE_NATIVE_MAX:
                scale /= 4
            levels.setdefault(scale, []).append(face)
        for scale, group in sorted(levels.items(), reverse=True):
            for face_id, region in _regions(info, frame, scale, group, settings):
                batch.append(region)
                ids.append(face_id)
                if len(batch) >= describing.EMBED_BATCH:
                    flush()
    flush()
    drain(0)
    return described


def _regions(info, frame: Frame, scale: float, faces: list[Face],
             settings: Settings) -> Iterator[tuple[int, describing.Region]]:
    """The pixels around each face of one frame, read at `scale` through a window of rows
    that slides down the image (a column stripe of it at a time for very wide images)."""
    image, exact = load_scaled(info, scale)
    keep = int(DESCRIBE_NATIVE_MAX * (1 + 2 * describing.REGION_MARGIN)) + 64
    local = []
    for face in faces:
        x, y, w, h = face.box
        box = ((x - frame.x) * exact, (y - frame.y) * exact, w * exact, h * exact)
        local.append((describing.region_box(box)[3], face, box))
    local.sort(key=lambda t: t[0])  # by bottom row: the order the window reaches them
    stripes = describe_stripes(image.width, keep + RowWindow.STEP, image.bands, keep // 2)
    share = image.width / len(stripes)
    for k, (sx0, sx1) in enumerate(stripes):
        if k:  # a sequential read goes down the image once: each stripe reads it again
            image, exact = load_scaled(info, scale)
        view = image if len(stripes) == 1 else image.crop(sx0, 0, sx1 - sx0, image.height)
        window = RowWindow(view, keep=keep, path=frame.path)
        for _, face, box in local:
            x0, y0, x1, y1 = describing.region_box(box)
            if min(len(stripes) - 1, max(0, int((x0 + x1) / 2 // share))) != k:
                continue  # its region is centred in another stripe's share
            x0c, y0c = max(0, x0), max(0, y0)
            region = window.rows(y0c, y1, x0c - sx0, max(x0c, min(image.width, x1)) - sx0)
            rbox = (box[0] - x0c, box[1] - y0c, box[2], box[3])
            lms = (np.array(face.landmarks, np.float32) - [frame.x, frame.y]) * exact - [x0c, y0c]
            big_enough = max(face.box[2], face.box[3]) >= settings.min_embed
            yield face.id, describing.Region(region, rbox, lms, big_enough, exact)


def describe_stripes(width: int, rows: int, bands: int, pad: int) -> list[tuple[int, int]]:
    """Column ranges [x0, x1) whose windows of `rows` rows fit DESCRIBE_WINDOW_BYTES, each
    reaching `pad` beyond its share of the width (so a face region centred in a share fits
    its stripe); one range, the whole width, for all but very wide images. Each range costs
    one more decode of the image: 2 for a 64k-px-wide JPEG, as against 200 MB of rows."""
    share = max(2 * pad, DESCRIBE_WINDOW_BYTES // (rows * bands) - 2 * pad)
    count = max(1, math.ceil(width / share))
    if count == 1:
        return [(0, width)]
    core = width / count
    return [(max(0, math.floor(k * core) - pad), min(width, math.ceil((k + 1) * core) + pad)) for k in range(count)]


class _done:
    """A finished future, for describing in the caller's thread when there is no describer."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# --- the job ----------------------------------------------------------------------------
def scan_path(library: Library, path: str, settings: Settings, *, detector: Detector | None = None,
              describer: describing.Describer | None = None, resume: bool = False,
              reporter: Reporter | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              discard_on_error: bool = True, frames_anywhere: bool = False,
              bands: BandSource | None = None) -> ScanResult:
    """Scan one image (or manifest) into the library; see the module docstring for stages.

    Bands are detected by `bands` (default: `detect_here(detector)`) and faces described by
    `describer` (default: a `Describer` of this process); a cluster passes its own of both.

    One process scans a capture at a time (library/locks.py): a second scan of it waits, saying
    so through `reporter.note`, then finds it scanned. Bad input found mid-way (a truncated
    file) deletes the half-scanned capture, unless `discard_on_error` is False: the service
    keeps it, to show the error on it."""
    reporter = reporter or Reporter()
    kind, frames = frames_of(path, max_pixels, frames_anywhere)
    library.key()  # a missing or wrong key is said now, not after the detection it would waste
    key = capture_key(path, frames)
    while True:
        capture, _ = find_or_add_capture(library, path, key, kind, frames, settings)
        with capture_lock(library.path, capture.id, on_wait=reporter.note):
            try:
                capture = library.captures.get(capture.id)  # as the scan we waited for left it
            except GigafaceError:
                continue  # that scan failed and discarded the capture: make it again
            return _scan_locked(library, capture, path, frames, settings, bands or detect_here(detector), describer,
                                resume, reporter, max_pixels, discard_on_error)


def existing_capture(library: Library, path: str, key: str) -> CaptureRecord | None:
    """The capture of this content: found by its key (`capture_key(path)`), or by the older,
    weaker key of a capture made from this same path, which then gets the full key."""
    capture = library.captures.by_key(key)
    if capture is None:
        legacy = library.captures.by_key(legacy_capture_key(path))
        if legacy is not None and legacy.source == os.path.abspath(path):
            capture = library.captures.rekey(legacy.id, key)
    return capture


def find_or_add_capture(library: Library, path: str, key: str, kind: str, frames: list[Frame],
                        settings: Settings) -> tuple[CaptureRecord, bool]:
    """The capture of this content (existing_capture), or one made now; True when made now.
    The one way a capture comes to be: a scan (`scan_path`) and the service (`add_capture`)."""
    capture = existing_capture(library, path, key)
    if capture is not None:
        return capture, False
    width, height = panorama_size(frames)
    return library.captures.find_or_create(key, os.path.abspath(path), kind, width, height, frames,
                                          settings.to_dict())


def add_capture(library: Library, path: str, settings: Settings,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[CaptureRecord, bool]:
    """Register an image or manifest without scanning it (the service's job scans it later);
    True when the capture is new, False when this content is in the library already."""
    if library.is_own_file(path):
        raise GigafaceError(f"{path}: is the library itself, not an image")
    kind, frames = frames_of(path, max_pixels)
    return find_or_add_capture(library, path, capture_key(path, frames), kind, frames, settings)


def _scan_locked(library: Library, capture: CaptureRecord, path: str, frames: list[Frame], settings: Settings,
                 bands: BandSource, describer, resume: bool, reporter: Reporter, max_pixels: int,
                 discard_on_error: bool) -> ScanResult:
    """scan_path's work on a capture whose lock this process holds."""
    started = time.perf_counter()
    wanted = settings.to_dict()
    if capture.kind == "image" and capture.frames[0].path != frames[0].path:
        capture = library.captures.relocate(capture.id, frames[0].path)  # the same image, moved
    if capture.stage == "done" and capture.settings == wanted:
        return ScanResult(capture, library.faces.count(capture.id), 0, 0.0, skipped=True,
                          stored=library.faces.count(capture.id, include_unlisted=True))
    if not (resume and capture.settings == wanted):
        if resume:
            reporter.note(f"capture {capture.id} was scanned with other settings; starting over")
        capture = library.captures.restart(capture.id, wanted)
    elif capture.stage != "done":
        reporter.note(f"resuming capture {capture.id} at stage '{capture.stage}'")

    try:
        result = _run_stages(library, capture, frames, settings, bands, describer, reporter, max_pixels)
    except GigafaceError:
        if discard_on_error:
            library.captures.delete(capture.id)
        raise
    elapsed = time.perf_counter() - started
    library.captures.set_stage(capture.id, "done", elapsed=elapsed)
    capture = library.captures.get(capture.id)
    result.capture, result.seconds = capture, elapsed
    return result


def _run_stages(library: Library, capture: CaptureRecord, frames: list[Frame], settings: Settings,
                bands: BandSource, describer, reporter: Reporter, max_pixels: int) -> ScanResult:
    result = ScanResult(capture, 0, 0, 0.0, skipped=False)
    t0 = time.perf_counter()
    if capture.stage == "detect":
        done = library.captures.bands_done(capture.id)
        reporter.stage("detect", count_tiles(frames, settings))
        if done:
            reporter.advance(count_tiles(frames, settings, done))

        def seeds(fi: int) -> np.ndarray:
            return _seeds(library, capture.id, fi, frames[fi])

        for fi, pi, band, tiles, dets in bands(frames, settings, done, max_pixels, seeds):
            frame = frames[fi]
            dets = dets.transformed(1.0, frame.x, frame.y)
            library.captures.finish_band(capture.id, fi, pi, band, dets)
            result.tiles += tiles
            reporter.advance(tiles, faces=int(settings.listed(dets.scores, dets.sizes).sum()))
        library.captures.set_stage(capture.id, "merge")
        capture = library.captures.get(capture.id)
    result.detect_seconds = time.perf_counter() - t0
    if capture.stage == "merge":
        frame_of, dets = library.captures.detections(capture.id)
        frame_of, faces = merge(frames, frame_of, dets, settings)
        # A person who asked to be forgotten stays forgotten through a re-scan: a face found
        # where an erased one is is not stored again (the erased row stands for it, blurred
        # and without a template).
        keep = outside_erased(faces, library.faces.erased_boxes(capture.id))
        frame_of, faces = frame_of[keep], faces.select(keep)
        library.faces.replace(capture.id, frame_of, faces, settings.listed(faces.scores, faces.sizes))
        capture = library.captures.get(capture.id)
    t1 = time.perf_counter()
    if capture.stage == "describe":
        with nullcontext(describer) if describer else describing.Describer() as describer:
            result.described = describe_faces(library, capture, settings, describer, reporter, max_pixels)
    result.describe_seconds = time.perf_counter() - t1
    result.faces = library.faces.count(capture.id)
    result.stored = library.faces.count(capture.id, include_unlisted=True)
    return result
