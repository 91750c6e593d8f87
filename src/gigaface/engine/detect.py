"""The detect stage: every band of every pass of a frame through the detector, tiles cut
from bands (full-width, or of a column stripe for very wide images), faces kept by the tile
and size range that own them."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from gigaface.engine.detections import Detections, nms_indices
from gigaface.engine.detector import CenterFace, Detector
from gigaface.engine.frames import Frame
from gigaface.engine.merge import merge
from gigaface.engine.plan import SEED_MAX_SIZE, SEED_SCORE, Pass, Settings, plan_passes, tile_columns
from gigaface.engine.source import DEFAULT_MAX_PIXELS, Band, ImageInfo, bands, load_scaled, probe


# A band's pixels are at most this many bytes: a wider image is read in column stripes, each
# a band-by-band walk of its own (a JPEG is decoded once more for each). Measured at 60,000 px
# wide: full-width native bands held 2 x 115 MB, beside libvips' own ~190 MB of decoded lines,
# which no reader can avoid for a sequential JPEG (and a JPEG is at most 65,535 px wide).
STRIPE_BYTES = 48 << 20


@dataclass(frozen=True)
class Stripe:
    """Tile columns of one pass read together, top to bottom."""
    index: int
    columns: list[tuple[int, int]]  # (core_x0, core_x1) at pass scale

    @property
    def x0(self) -> int:
        return self.columns[0][0]

    @property
    def x1(self) -> int:
        return self.columns[-1][1]


def stripes(width: int, p: Pass) -> list[Stripe]:
    """The pass's tile columns grouped so that each stripe's band fits STRIPE_BYTES."""
    up = p.up
    band_rows = (p.core + 2 * p.margin) // up
    columns = tile_columns(width, p)
    per_column = (p.core // up) * band_rows * 3
    per_stripe = max(1, min(len(columns), STRIPE_BYTES // max(1, per_column)))
    count = -(-len(columns) // per_stripe)
    per_stripe = -(-len(columns) // count)  # as even as the columns allow
    return [Stripe(i, columns[i * per_stripe : (i + 1) * per_stripe]) for i in range(count)]


def units(width: int, height: int, p: Pass) -> list[tuple[int, int]]:
    """(unit id, tiles) of each unit of work of one pass over a frame of this native size:
    a band of a stripe. Ids are what detect_bands yields and a library stores as done."""
    w, h = round(width * p.scale), round(height * p.scale)
    count = -(-h // p.core)
    return [(s.index * count + band, len(s.columns) * p.looks) for s in stripes(w, p) for band in range(count)]


@dataclass(frozen=True)
class PassGrid:
    """One pass laid over one image: the pixel grid its tiles are cut from.

    `scale` is the exact scale of the image that is read (native when `up` > 1: tiles are
    then enlarged one by one); `width` x `height` is the pass's grid, `stripes` its groups of
    tile columns and `bands` how many bands of `core` rows each stripe has. A unit of work
    is a band of a stripe, id `stripe * bands + band`."""

    scale: float
    up: int
    width: int
    height: int
    stripes: tuple[Stripe, ...]
    bands: int

    @property
    def units(self) -> range:
        return range(len(self.stripes) * self.bands)


@dataclass
class Unit:
    """One band of one stripe, read: what a detector works on."""
    id: int
    stripe: Stripe
    left: int  # first column of `band.pixels` in the rows read
    band: Band


def read_pass(info: ImageInfo, p: Pass, skip: set[int] = frozenset(), prefetch: bool = True
              ) -> tuple[PassGrid, Iterator[Unit]]:
    """The pass's grid and its units, stripe by stripe, each read top to bottom, but for
    those in `skip`: a stripe's reading starts at its first unit wanted and stops after its
    last (a tiled TIFF is then read only there; a JPEG is decoded from its top whatever the
    start). Nothing is decoded until the units are asked for."""
    up = p.up
    image, scale = load_scaled(info, 1.0 if up > 1 else p.scale)
    width, height = image.width * up, image.height * up  # the pass's pixel grid
    grid = PassGrid(scale, up, width, height, tuple(stripes(width, p)), (height + p.core - 1) // p.core)
    return grid, _read_units(info, p, grid, skip, prefetch)


def _read_units(info: ImageInfo, p: Pass, grid: PassGrid, skip: set[int], prefetch: bool) -> Iterator[Unit]:
    up, count = grid.up, grid.bands
    for stripe in grid.stripes:
        ids = range(stripe.index * count, (stripe.index + 1) * count)
        wanted = [i - ids[0] for i in ids if i not in skip]
        if not wanted:
            continue
        # A sequential reader reads once, top to bottom: a new one for each stripe.
        image, _ = load_scaled(info, 1.0 if up > 1 else p.scale)
        # The stripe's columns and margins, in the rows read (native for an upscaled pass)
        left = max(0, (stripe.x0 - p.margin) // up)
        right = min(image.width, -(-(stripe.x1 + p.margin) // up))
        view = image if (left, right) == (0, image.width) else image.crop(left, 0, right - left, image.height)
        for band in bands(view, p.core // up, p.margin // up, start=wanted[0], stop=wanted[-1] + 1,
                          path=info.path, prefetch=prefetch):
            if ids[band.index] not in skip:
                yield Unit(ids[band.index], stripe, left, band)


def detect_unit(unit: Unit, grid: PassGrid, p: Pass, detector: Detector, settings: Settings,
                seeds: np.ndarray | None = None) -> tuple[int, Detections]:
    """(tiles planned, detections in native frame pixels) of one unit of a pass, down to the
    settings' detection floor (the blur point). A seeded pass runs only the tiles near
    `seeds`, the (N, 2) centres in native frame pixels of faces the passes before it found
    (`seed_points`, `seeded_tiles`)."""
    columns = unit.stripe.columns
    up, band = grid.up, unit.band
    if p.seeded:
        columns = seeded_tiles(columns, band.core_top * up, band.core_bottom * up, grid.scale * up,
                               np.zeros((0, 2)) if seeds is None else seeds)
    return len(unit.stripe.columns) * p.looks, _detect_band(band, unit.left, columns, p, up, grid.scale, grid.width,
                                                            grid.height, detector, settings)


def detect_bands(info: ImageInfo, p: Pass, detector: Detector, settings: Settings,
                 skip: set[int] = frozenset(), seeds: np.ndarray | None = None
                 ) -> Iterator[tuple[int, int, Detections]]:
    """(unit id, tiles planned, detections in native frame pixels) for each unit of one pass
    not in `skip` (read_pass, detect_unit)."""
    grid, produced = read_pass(info, p, skip)
    for unit in produced:
        tiles, dets = detect_unit(unit, grid, p, detector, settings, seeds)
        yield unit.id, tiles, dets


# How far beyond a tile's core (native pixels) a face found by an earlier pass makes a seeded
# pass look in that tile. Tiny faces sit in crowds: on the WIDER images, running the 2x pass
# only on tiles with a face found at native scale (plan.SEED_SCORE) within their core lost
# no face of 10-32 px, growing the core by 0 or 64 px alike.
SEED_GROW = 32


def seed_points(dets: Detections) -> np.ndarray:
    """Centres of the found faces that seed a small-face pass (plan.SEED_SCORE, SEED_MAX_SIZE)."""
    return dets.select((dets.scores > SEED_SCORE) & (dets.sizes < SEED_MAX_SIZE)).centres


def seeded_tiles(columns: list[tuple[int, int]], core_top: int, core_bottom: int, scale: float,
                 seeds: np.ndarray) -> list[tuple[int, int]]:
    """The tile columns of one band (pass pixels) whose core, grown by SEED_GROW native
    pixels, holds a seed (native pixels)."""
    if not len(seeds):
        return []
    x, y = seeds[:, 0] * scale, seeds[:, 1] * scale
    grow = SEED_GROW * scale
    rows = (y >= core_top - grow) & (y < core_bottom + grow)
    x = x[rows]
    return [(x0, x1) for x0, x1 in columns if ((x >= x0 - grow) & (x < x1 + grow)).any()]


def _detect_band(band: Band, left: int, columns: list[tuple[int, int]], p: Pass, up: int, scale: float, width: int,
                 height: int, detector: Detector, settings: Settings) -> Detections:
    """The faces one band of a stripe owns in the tiles of `columns`, in native frame pixels."""
    core_top, core_bottom = band.core_top * up, band.core_bottom * up
    oy = core_top - p.margin
    T = p.tile

    def fill(look: tuple[tuple[int, int], bool], out: np.ndarray) -> None:
        (x0, _), mirrored = look
        ox = x0 - p.margin
        if up == 1:
            cut_tile(band, ox - left, oy, out)
        else:
            small = np.empty((T // up, T // up, 3), np.uint8)
            cut_tile(band, ox // up - left, oy // up, small)
            cv2.resize(small, (T, T), dst=out, interpolation=cv2.INTER_LINEAR)
        if mirrored:
            out[:] = out[:, ::-1]

    looks = [(column, mirrored) for column in columns for mirrored in ((False, True) if p.flip else (False,))]
    found = []
    # Thresholds apply to scores as the merge sees them, after the pass's weight.
    threshold = (settings.detect_score_threshold if p.seeded else settings.decode_score_threshold) / p.weight
    for ((cx0, cx1), mirrored), dets in zip(looks, detector.detect_tiles(looks, fill, threshold)):
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
    return native.select(keep)


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
    found = detect_passes(info, plan_passes(info.width, info.height, settings), detector, settings)
    return _merged(info, found, settings)


def detect_largest(path: str, settings: Settings, detector: Detector | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Detections:
    """The listed faces of a photo when what counts is its largest face (a reference photo).
    The downscaled passes run first; when the largest face they find is beyond every size the
    finer passes keep, none of those could find a larger one, and they are skipped: a portrait
    takes one or a few inferences instead of 5-40. The faces then returned are those of the
    downscaled passes only (none under their floor). The largest is the one `detect_image`
    gives unless a finer pass's smaller box of the same face would have outscored it in the
    merge; on the 64 photos of the identity benchmark, every box and landmark was the same."""
    settings = settings.listing_only()
    info = probe(path, max_pixels)
    detector = detector or CenterFace(settings.tile)
    passes = plan_passes(info.width, info.height, settings)
    coarse = [p for p in passes if p.scale < 1 and not p.seeded]
    finer = [p for p in passes if p not in coarse]
    found = detect_passes(info, coarse, detector, settings)
    dets = _merged(info, found, settings)
    if len(dets) and dets.sizes.max() >= max((p.max_size for p in finer), default=0.0):
        return dets
    # The same passes as detect_image's, in another order: the seeded ones still come after
    # all the others, so the faces are the same.
    return _merged(info, detect_passes(info, finer, detector, settings, found), settings)


def detect_passes(info: ImageInfo, passes: list[Pass], detector: Detector, settings: Settings,
                  found: list[Detections] = ()) -> list[Detections]:
    """`found` and each unit's detections of the passes, in order (a seeded pass is seeded
    by all found before it): the detect stage without a library, one pass at a time if
    wanted (bench.passes times them so)."""
    found = list(found)
    for p in passes:
        seeds = seed_points(Detections.concat(found)) if p.seeded else None
        found += [dets for _, _, dets in detect_bands(info, p, detector, settings, seeds=seeds)]
    return found


def _merged(info: ImageInfo, found: list[Detections], settings: Settings) -> Detections:
    dets = Detections.concat(found)
    frame = Frame(info.path, 0, 0, info.width, info.height)
    return merge([frame], np.zeros(len(dets), np.int64), dets, settings)[1]


def count_tiles(frames: list[Frame], settings: Settings, done: set[tuple[int, int, int]] | None = None) -> int:
    """Detection tiles of every unit of the frames' passes, or of those in `done` (frame,
    pass, unit): where a resumed scan's progress starts."""
    return sum(tiles for fi, frame in enumerate(frames)
               for pi, p in enumerate(plan_passes(frame.width, frame.height, settings))
               for unit, tiles in units(frame.width, frame.height, p) if done is None or (fi, pi, unit) in done)
