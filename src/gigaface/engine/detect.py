"""The detect stage: every band of every pass of a frame through the detector, tiles cut
from full-width bands, faces kept by the tile and size range that own them."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from gigaface.engine.detections import Detections, nms_indices
from gigaface.engine.detector import CenterFace, Detector
from gigaface.engine.frames import Frame
from gigaface.engine.merge import merge
from gigaface.engine.plan import Pass, Settings, plan_passes, tile_columns
from gigaface.engine.source import DEFAULT_MAX_PIXELS, Band, ImageInfo, bands, load_scaled, probe


@dataclass(frozen=True)
class PassGrid:
    """One pass laid over one image: the pixel grid its tiles are cut from.

    `scale` is the exact scale of the image that is read (native when `up` > 1: tiles are
    then enlarged one by one); `width` x `height` is the pass's grid, `columns` its tile
    columns and `bands` how many bands of `core` rows cover it."""

    scale: float
    up: int
    width: int
    height: int
    columns: tuple[tuple[int, int], ...]
    bands: int


def read_pass(info: ImageInfo, p: Pass, skip: set[int] = frozenset(), prefetch: bool = True
              ) -> tuple[PassGrid, Iterator[Band]]:
    """The pass's grid and its bands, read top to bottom, but for those in `skip`: reading
    starts at the first band wanted and stops after the last one (a tiled TIFF is then read
    only there; a JPEG is decoded from its top whatever the start)."""
    up = round(p.scale) if p.upscale_tiles else 1  # tiles enlarged one by one from native rows
    image, scale = load_scaled(info, 1.0 if up > 1 else p.scale)
    width, height = image.width * up, image.height * up  # the pass's pixel grid
    count = (height + p.core - 1) // p.core
    grid = PassGrid(scale, up, width, height, tuple(tile_columns(width, p)), count)
    wanted = [i for i in range(count) if i not in skip]
    if not wanted:
        return grid, iter(())
    produced = bands(image, p.core // up, p.margin // up, start=wanted[0], stop=wanted[-1] + 1,
                     path=info.path, prefetch=prefetch)
    return grid, (band for band in produced if band.index not in skip)


def detect_band(band: Band, grid: PassGrid, p: Pass, detector: Detector, settings: Settings
                ) -> tuple[int, Detections]:
    """(tiles run, detections in native frame pixels) for one band of a pass, down to the
    settings' detection floor (the blur point)."""
    up, scale, T = grid.up, grid.scale, p.tile
    core_top, core_bottom = band.core_top * up, band.core_bottom * up
    oy = core_top - p.margin

    def fill(look: tuple[tuple[int, int], bool], out: np.ndarray) -> None:
        (x0, _), mirrored = look
        ox = x0 - p.margin
        if up == 1:
            cut_tile(band, ox, oy, out)
        else:
            small = np.empty((T // up, T // up, 3), np.uint8)
            cut_tile(band, ox // up, oy // up, small)
            cv2.resize(small, (T, T), dst=out, interpolation=cv2.INTER_LINEAR)
        if mirrored:
            out[:] = out[:, ::-1]

    looks = [(column, mirrored) for column in grid.columns for mirrored in ((False, True) if p.flip else (False,))]
    found = []
    for ((cx0, cx1), mirrored), dets in zip(looks, detector.detect_tiles(looks, fill, settings.detect_score_threshold)):
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
    native = dets.clipped(grid.width, grid.height).transformed(1.0 / (scale * up))
    # Faces that will be listed outrank the rest, so a low-scoring box seen only to be
    # blurred never suppresses one; among them, NMS keeps what it kept before.
    keep = nms_indices(dets, settings.nms_iou, cell=2 * p.margin, first=settings.listed(native.scores, native.sizes))
    return len(looks), native.select(keep)


def detect_bands(info: ImageInfo, p: Pass, detector: Detector, settings: Settings,
                 skip: set[int] = frozenset()) -> Iterator[tuple[int, int, Detections]]:
    """(band index, tiles run, detections in native frame pixels) for each band of one pass
    not in `skip`, down to the settings' detection floor (the blur point)."""
    grid, produced = read_pass(info, p, skip)
    for band in produced:
        tiles, dets = detect_band(band, grid, p, detector, settings)
        yield band.index, tiles, dets


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
