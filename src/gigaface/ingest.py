"""The scan job: detect in bands, merge, describe, each stage resumable from the library.

Stages and their unit of resume:
  detect    one band of one pass of one frame, committed with its detections
  merge     all-or-nothing (it is quick): raw detections become faces
  describe  a batch of faces, committed with their quality, crop and embedding

Detection looks down to the settings' blur point (a lower score, smaller faces) and the
merge keeps everything it found: faces at the listing point are `listed`, the rest are
boxes stored only so that every published image blurs them too.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from gigaface.engine import describe as describing
from gigaface.engine.detections import Detections, nms_indices
from gigaface.engine.detector import CenterFace, Detector
from gigaface.errors import GigafaceError
from gigaface.library.records import CaptureRecord, Face, Frame
from gigaface.library.store import Library
from gigaface.engine.manifest import is_manifest, read_manifest
from gigaface.paths import require_regular_file
from gigaface.engine.plan import Pass, Settings, plan_passes, tile_columns
from gigaface.library.locks import capture_lock
from gigaface.engine.source import DEFAULT_MAX_PIXELS, Band, ImageInfo, RowWindow, bands, load_scaled, probe

DESCRIBE_NATIVE_MAX = 320  # px: larger faces are described from a downscaled read
EMBED_BATCH = 8


class Reporter:
    """Receives progress; gigaface.progress draws bars from it. Every method is optional to override.

    A reporter is also a context manager, so a caller can hold any reporter open around a
    scan (bars need starting and stopping; this one does nothing).
    """

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None: ...

    def stage(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1, faces: int = 0) -> None: ...
    def note(self, message: str) -> None: ...


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


def capture_key(path: str, frames: list[Frame] | None = None) -> str:
    """What makes two scans the same capture: the content, not the path or the file's mtime.

    For an image, the SHA-256 of all of it: two files that differ anywhere are two
    captures (reading the file costs a fraction of decoding it); for a manifest, its
    location, its content and the SHA-256 of each of its frames (`frames`, when the
    caller has read the manifest already).
    """
    if not is_manifest(path):
        return f"image:sha256:{file_sha256(path)}"
    require_regular_file(path, "manifest")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read())
    if frames is None:  # the key only names the content: where frames may be is frames_of's to check
        frames = read_manifest(path, 2**62, frames_anywhere=True)
    for frame in frames:
        digest.update(bytes.fromhex(file_sha256(frame.path)))
    return f"manifest:sha256:{os.path.realpath(path)}:{digest.hexdigest()}"


def file_sha256(path: str) -> str:
    require_regular_file(path, "image")  # a FIFO would block the read forever
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def legacy_capture_key(path: str) -> str:
    """The key gigaface gave captures before schema 4: the size and the first and last MiB
    of an image (so two images differing only in the middle collided), or a manifest's
    location and text. Used only to find such captures and give them their full key."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if is_manifest(path):
            digest.update(f.read())
            return f"manifest:{os.path.realpath(path)}:{digest.hexdigest()[:24]}"
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            digest.update(f.read())
    return f"image:{size}:{digest.hexdigest()[:24]}"


def is_capture_of(path: str, capture: CaptureRecord) -> bool:
    """Whether the file at `path` is still what `capture` was made from (full key, or the
    older key of a capture made from this very path)."""
    if capture.key == capture_key(path):
        return True
    return os.path.abspath(path) == capture.source and capture.key == legacy_capture_key(path)


def frames_of(path: str, max_pixels: int, frames_anywhere: bool = False) -> tuple[str, list[Frame]]:
    """The kind of input and its frames; a manifest's frames must lie in its folder unless
    `frames_anywhere`."""
    if is_manifest(path):
        return "manifest", read_manifest(path, max_pixels, frames_anywhere=frames_anywhere)
    info = probe(path, max_pixels)
    return "image", [Frame(os.path.abspath(path), 0, 0, info.width, info.height)]


# --- detection ------------------------------------------------------------------------
def detect_bands(info: ImageInfo, p: Pass, detector: Detector, settings: Settings,
                 skip: set[int] = frozenset()) -> Iterator[tuple[int, int, Detections]]:
    """(band index, tiles run, detections in native frame pixels) for each band of one pass,
    down to the settings' detection floor (the blur point)."""
    up = round(p.scale) if p.upscale_tiles else 1  # tiles enlarged one by one from native rows
    image, scale = load_scaled(info, 1.0 if up > 1 else p.scale)
    width, height = image.width * up, image.height * up  # the pass's pixel grid
    columns = tile_columns(width, p)
    count = (height + p.core - 1) // p.core
    start = next((i for i in range(count) if i not in skip), count)
    T = p.tile
    for band in bands(image, p.core // up, p.margin // up, start=start, path=info.path):
        if band.index in skip:
            continue
        core_top, core_bottom = band.core_top * up, band.core_bottom * up
        oy = core_top - p.margin

        def fill(job: tuple[tuple[int, int], bool], out: np.ndarray, band=band, oy=oy) -> None:
            (x0, _), mirrored = job
            ox = x0 - p.margin
            if up == 1:
                cut_tile(band, ox, oy, out)
            else:
                small = np.empty((T // up, T // up, 3), np.uint8)
                cut_tile(band, ox // up, oy // up, small)
                cv2.resize(small, (T, T), dst=out, interpolation=cv2.INTER_LINEAR)
            if mirrored:
                out[:] = out[:, ::-1]

        jobs = [(column, mirrored) for column in columns for mirrored in ((False, True) if p.flip else (False,))]
        found = []
        for ((cx0, cx1), mirrored), dets in zip(jobs, detector.detect_jobs(jobs, fill, settings.detect_threshold)):
            if not len(dets):
                continue
            if mirrored:
                dets = dets.mirrored(T)
            dets = dets.transformed(1.0, cx0 - p.margin, oy)
            cx, cy = dets.centres[:, 0], dets.centres[:, 1]
            native_sizes = dets.sizes / (scale * up)
            keep = ((cx >= cx0) & (cx < cx1) & (cy >= core_top) & (cy < core_bottom)
                    & (native_sizes >= p.min_size) & (native_sizes < p.max_size))
            found.append(dets.select(keep).reweighted(p.weight))
        dets = Detections.concat(found)
        native = dets.clipped(width, height).transformed(1.0 / (scale * up))
        # Faces that will be listed outrank the rest, so a low-scoring box seen only to be
        # blurred never suppresses one; among them, NMS keeps what it kept before.
        keep = nms_indices(dets, settings.nms_iou, cell=2 * p.margin, first=settings.listed(native.scores, native.sizes))
        yield band.index, len(jobs), native.select(keep)


def cut_tile(band: Band, ox: int, oy: int, out: np.ndarray) -> None:
    """The square of `band`'s image at (ox, oy) into `out`, black beyond the image's edges."""
    T = out.shape[0]
    width = band.pixels.shape[1]
    sx0, sx1 = max(0, ox), min(width, ox + T)
    sy0, sy1 = max(0, oy), min(band.top + band.pixels.shape[0], oy + T)
    if (sx0 - ox, sy0 - oy, sx1 - ox, sy1 - oy) != (0, 0, T, T):
        out[:] = 0
    out[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = band.pixels[sy0 - band.top : sy1 - band.top, sx0:sx1]


def detect_image(path: str, settings: Settings, detector: Detector | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, blur_too: bool = False) -> Detections:
    """The listed faces in one image (with `blur_too`, also those only blurred), held nowhere
    but in the detections: the scan's detect and merge stages without a library, for photos
    and for measuring the detector."""
    settings = settings if blur_too else settings.listing_only()
    info = probe(path, max_pixels)
    detector = detector or CenterFace(settings.tile)
    found = [dets for p in plan_passes(info.width, info.height, settings)
             for _, _, dets in detect_bands(info, p, detector, settings)]
    dets = Detections.concat(found)
    frame = Frame(path, 0, 0, info.width, info.height)
    return merge([frame], np.zeros(len(dets), np.int64), dets, settings)[1]


def count_tiles(frames: list[Frame], settings: Settings) -> int:
    total = 0
    for frame in frames:
        for p in plan_passes(frame.width, frame.height, settings):
            w, h = round(frame.width * p.scale), round(frame.height * p.scale)
            total += -(-w // p.core) * -(-h // p.core) * p.looks
    return total


def merge(frames: list[Frame], frame_of: np.ndarray, dets: Detections, settings: Settings
          ) -> tuple[np.ndarray, Detections]:
    """All passes and frames into one face set, in panorama pixels: every face down to the
    blur point (`settings.listed` tells which are listed)."""
    if len(frames) > 1 and len(dets):
        keep = owned_by_frame(frames, frame_of, dets.centres)
        frame_of, dets = frame_of[keep], dets.select(keep)
    keep_size = dets.sizes >= settings.detect_min_face
    frame_of, dets = frame_of[keep_size], dets.select(keep_size)
    index = nms_indices(dets, settings.nms_iou, first=settings.listed(dets.scores, dets.sizes))
    return frame_of[index], dets.select(index)


def owned_by_frame(frames: list[Frame], frame_of: np.ndarray, centres: np.ndarray,
                   chunk: int = 4096) -> np.ndarray:
    """Where frames overlap, a face belongs to the frame whose centre is nearest to it."""
    fc = np.array([(f.x + f.width / 2, f.y + f.height / 2) for f in frames])
    lo = np.array([(f.x, f.y) for f in frames])
    hi = lo + np.array([(f.width, f.height) for f in frames])
    owner = np.empty(len(centres), np.int64)
    for s in range(0, len(centres), chunk):  # faces x frames at a time, bounded
        c = centres[s : s + chunk, None, :]
        inside = ((c >= lo[None]) & (c < hi[None])).all(axis=2)
        dist = np.linalg.norm(c - fc[None], axis=2)
        dist[~inside] = np.inf
        owner[s : s + chunk] = dist.argmin(axis=1)
    return owner == frame_of


def outside_erased(dets: Detections, erased: np.ndarray) -> np.ndarray:
    """Which faces are not where an erased face is: their centre outside every erased box
    (rows of x, y, w, h)."""
    boxes = dets.boxes.astype(np.float64)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    keep = np.ones(len(dets), bool)
    for x, y, w, h in erased:  # few: the faces people asked to have forgotten
        keep &= ~((x <= cx) & (cx <= x + w) & (y <= cy) & (cy <= y + h))
    return keep


# --- description ------------------------------------------------------------------------
def describe_faces(library: Library, capture: CaptureRecord, settings: Settings,
                   pool: describing.EmbeddingPool | None, reporter: Reporter, max_pixels: int) -> int:
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
        future = pool.submit(work) if pool else _done(describing.describe_regions(work))
        in_flight.append((future, list(ids)))
        batch.clear()
        ids.clear()
        drain(2 * (pool.workers if pool else 0) + 1)

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
            image, exact = load_scaled(info, scale)
            window = RowWindow(image, keep=int(DESCRIBE_NATIVE_MAX * (1 + 2 * describing.REGION_MARGIN)) + 64,
                               path=frame.path)
            local = []
            for face in group:
                x, y, w, h = face.box
                box = ((x - frame.x) * exact, (y - frame.y) * exact, w * exact, h * exact)
                local.append((describing.region_box(box)[3], face, box))
            local.sort(key=lambda t: t[0])
            for _, face, box in local:
                x0, y0, x1, y1 = describing.region_box(box)
                x0c, y0c = max(0, x0), max(0, y0)
                region = window.rows(y0c, y1, x0c, max(x0c, min(image.width, x1)))
                rbox = (box[0] - x0c, box[1] - y0c, box[2], box[3])
                lms = (np.array(face.landmarks, np.float32) - [frame.x, frame.y]) * exact - [x0c, y0c]
                big_enough = max(face.box[2], face.box[3]) >= settings.min_embed
                batch.append(describing.Region(region, rbox, lms, big_enough, exact))
                ids.append(face.id)
                if len(batch) >= EMBED_BATCH:
                    flush()
    flush()
    drain(0)
    return described


class _done:
    """A finished future, for embedding in-process when there is no pool."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# --- the job ----------------------------------------------------------------------------
def scan_path(library: Library, path: str, settings: Settings, *, detector: Detector | None = None,
              pool: describing.EmbeddingPool | None = None, resume: bool = False,
              reporter: Reporter | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              discard_on_error: bool = True, frames_anywhere: bool = False) -> ScanResult:
    """Scan one image (or manifest) into the library; see the module docstring for stages.

    One process scans a capture at a time (scan_lock.py): a second scan of it waits, saying
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
            return _scan_locked(library, capture, path, frames, settings, detector, pool, resume, reporter,
                                max_pixels, discard_on_error)


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
    width = max(f.x + f.width for f in frames)
    height = max(f.y + f.height for f in frames)
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
                 detector: Detector | None, pool, resume: bool, reporter: Reporter, max_pixels: int,
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
        result = _run_stages(library, capture, frames, settings, detector, pool, reporter, max_pixels)
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
                detector: Detector | None, pool, reporter: Reporter, max_pixels: int) -> ScanResult:
    result = ScanResult(capture, 0, 0, 0.0, skipped=False)
    t0 = time.perf_counter()
    if capture.stage == "detect":
        detector = detector or CenterFace(settings.tile)
        done = library.captures.bands_done(capture.id)
        reporter.stage("detect", count_tiles(frames, settings))
        for fi, frame in enumerate(frames):
            info = probe(frame.path, max_pixels)
            for pi, p in enumerate(plan_passes(frame.width, frame.height, settings)):
                skip = {b for (f, q, b) in done if f == fi and q == pi}
                if skip:
                    image_h = round(frame.height * p.scale)
                    cols = len(tile_columns(round(frame.width * p.scale), p))
                    reporter.advance(len([b for b in skip if b * p.core < image_h]) * cols)
                for band, tiles, dets in detect_bands(info, p, detector, settings, skip):
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
        result.described = describe_faces(library, capture, settings, pool, reporter, max_pixels)
    result.describe_seconds = time.perf_counter() - t1
    result.faces = library.faces.count(capture.id)
    result.stored = library.faces.count(capture.id, include_unlisted=True)
    return result
