"""Gigapixel mosaic: a panorama of real WIDER FACE images with their ground truth carried over.

    python -m bench.mosaic --size 100 --out bench/out/mosaic-100mp [--seed 0] [--no-tiff]

The panorama is a grid of equal cells, wider than tall.  Each cell holds one WIDER image,
randomly mirrored and shrunk (never enlarged, so the official boxes stay as tight as they
were) and placed at random in the cell on a neutral background; the images are dealt from
reshuffled decks, so each is used about equally often however big the mosaic.  A few cells
instead hold an identity photo from face_recognition_examples or deepface_identities,
scaled so that its face is 24-80 px tall: the search benchmark queries with *another*
photo of that person and reports the rank of the planted face.

The image is drawn one row of cells at a time and streamed into libvips, so memory stays
bounded by one row whatever the size.  Outputs (mosaic.jpg, mosaic.tif, mosaic_truth.json)
appear only when complete; the truth file is written last and makes the folder a cache:
building again with the same size, seed and plant count returns it without redrawing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pyvips

from bench.data import WiderImage, identity_photos, shared_path, wider_images
from gigaface.engine.detector import CenterFace
from gigaface.engine.plan import settings_for
from gigaface.references import detect_whole
from gigaface.engine.source import as_rgb8, open_sequential
from gigaface.atomic import temporary_beside, write_bytes
from gigaface.output.streamed_image import write_streamed

__all__ = ["Cell", "Mosaic", "Planted", "build_mosaic", "load_mosaic"]

VERSION = 1                      # bump when the layout changes: old caches are then rebuilt
CELL_W, CELL_H = 1024, 896       # every WIDER image is 1024 wide; most are under 896 tall
SCALES = (0.75, 1.0)             # random shrink of a WIDER image
MIN_BOX = 2.0                    # carried-over faces smaller than this (either side) are dropped
FACE_SIZES = (24, 80)            # planted face height range, px
ASPECT = (2.0, 3.0)              # panorama width / height
BACKGROUND = (128, 128, 128)
JPEG_MAX_SIDE = 65_500
JPEG_Q = 90
DETECT_MAX_SIDE = 1280           # identity photos are detected on a copy this size at most
# Two photos with this many geometrically consistent ORB matches are the same picture
# (a copy, rescale, crop, letterbox or mirror of it).  Measured on the identity sets:
# copies score 140+, different photos of one person 37 at most.
SAME_PICTURE_INLIERS = 70

JPEG_NAME, TIFF_NAME, TRUTH_NAME = "mosaic.jpg", "mosaic.tif", "mosaic_truth.json"


@dataclass(frozen=True)
class Planted:
    identity: str                              # e.g. "face_recognition_examples:Barack Obama"
    photo: Path                                # the photo drawn into the mosaic
    box: tuple[float, float, float, float]     # its face, x1, y1, x2, y2 in panorama pixels
    queries: list[Path]                        # other photos of the person, no copy of `photo`


@dataclass(frozen=True)
class Cell:
    source: Path                               # the picture drawn in the cell
    crop: tuple[int, int, int, int]            # the part of it drawn, x0, y0, x1, y1
    place: tuple[int, int, int, int]           # where it lies in the panorama, x0, y0, x1, y1
    flip: bool                                 # mirrored left-right
    faces: tuple[int, int]                     # its faces are Mosaic.boxes[faces[0]:faces[1]]


@dataclass
class Mosaic:
    jpeg: Path
    tiff: Path | None
    truth_json: Path
    width: int
    height: int
    megapixels: float                          # as asked for; width * height is close to it
    seed: int
    boxes: np.ndarray                          # (N, 4) float32 x1, y1, x2, y2
    invalid: np.ndarray                        # (N,) bool: WIDER's flag, or a bystander in a planted photo
    planted: list[Planted]
    cells: list[Cell] = field(repr=False)


def build_mosaic(out_dir: Path, megapixels: float = 100, seed: int = 0, planted: int = 6,
                 tiff: bool = True, on_progress: Callable[[int, int], None] | None = None) -> Mosaic:
    """Write mosaic.jpg (and mosaic.tif), then mosaic_truth.json, into `out_dir`.
    Deterministic per seed; a finished mosaic of the same size, seed and plant count is
    reused.  `on_progress(rows_done, height)` is called from a libvips thread."""
    out_dir = Path(out_dir)
    cached = load_mosaic(out_dir)
    if cached and (cached.megapixels, cached.seed, len(cached.planted)) == (megapixels, seed, planted):
        if tiff and cached.tiff is None:
            cached.tiff = _write_tiff(cached.jpeg, out_dir / TIFF_NAME)
            write_bytes(cached.truth_json, _truth_json(cached))
        return cached

    out_dir.mkdir(parents=True, exist_ok=True)
    # The old truth goes first: with it, a half-replaced folder would pass for a cache.
    (out_dir / TRUTH_NAME).unlink(missing_ok=True)
    (out_dir / TIFF_NAME).unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = _grid(megapixels)
    cells, boxes, invalid = _deal_wider(rows, cols, rng)
    patches, people = _plant(cells, boxes, invalid, planted, rng)
    width, height = cols * CELL_W, rows * CELL_H
    jpeg = out_dir / JPEG_NAME
    write_streamed(jpeg, width, height, _bands(cells, patches, rows, cols), on_progress, Q=JPEG_Q)
    tiff_path = _write_tiff(jpeg, out_dir / TIFF_NAME) if tiff else None
    # Rounded as the truth file stores them, so that a reloaded mosaic is equal to this one.
    all_boxes = np.round(np.concatenate(boxes), 2).astype(np.float32)
    mosaic = Mosaic(jpeg, tiff_path, out_dir / TRUTH_NAME, width, height, megapixels, seed,
                    all_boxes, np.concatenate(invalid), people, cells)
    write_bytes(mosaic.truth_json, _truth_json(mosaic))
    return mosaic


def load_mosaic(out_dir: Path) -> Mosaic | None:
    """The finished mosaic in `out_dir`, or None when there is none (or an older layout's).
    Paths into the shared data are resolved again, so MissingData can be raised."""
    out_dir = Path(out_dir)
    try:
        truth = json.loads((out_dir / TRUTH_NAME).read_text())
    except (OSError, ValueError):
        return None
    tiff = out_dir / truth["tiff"] if truth.get("tiff") else None
    if truth.get("version") != VERSION or not (out_dir / truth["jpeg"]).is_file() or (tiff and not tiff.is_file()):
        return None
    return Mosaic(
        out_dir / truth["jpeg"], tiff, out_dir / TRUTH_NAME, truth["width"], truth["height"],
        truth["megapixels"], truth["seed"],
        np.array(truth["boxes"], np.float32).reshape(-1, 4), np.array(truth["invalid"], bool),
        [Planted(p["identity"], _shared(p["photo"]), tuple(p["box"]), [_shared(q) for q in p["queries"]])
         for p in truth["planted"]],
        [Cell(_shared(c["source"]), tuple(c["crop"]), tuple(c["place"]), c["flip"], tuple(c["faces"]))
         for c in truth["cells"]])


# --- layout -------------------------------------------------------------------

def _grid(megapixels: float) -> tuple[int, int]:
    """Rows and columns of cells: closest to the asked size, penalised outside ASPECT."""
    want = megapixels * 1e6 / (CELL_W * CELL_H)
    best = None
    for rows in range(1, JPEG_MAX_SIDE // CELL_H + 1):
        for cols in {math.floor(want / rows), math.ceil(want / rows)}:
            if not 1 <= cols <= JPEG_MAX_SIDE // CELL_W:
                continue
            aspect = cols * CELL_W / (rows * CELL_H)
            cost = abs(rows * cols / want - 1) + max(0.0, ASPECT[0] - aspect, aspect - ASPECT[1])
            if best is None or cost < best[0]:
                best = (cost, rows, cols)
    if best is None or not 0.5 <= best[1] * best[2] / want <= 2:
        raise ValueError(f"cannot lay out {megapixels} MP in {CELL_W}x{CELL_H} cells within "
                         f"the JPEG limit of {JPEG_MAX_SIDE} px a side")
    return best[1], best[2]


@lru_cache(maxsize=1)
def _wider_sized() -> list[tuple[WiderImage, int, int]]:
    # Header sizes, from the same raw pixel frame cv2 decodes with IGNORE_ORIENTATION.
    return [(im, *_header_size(im.path)) for im in wider_images()]


def _header_size(path: Path) -> tuple[int, int]:
    image = pyvips.Image.new_from_file(str(path))
    return image.width, image.height


def _deal_wider(rows: int, cols: int, rng: np.random.Generator
                ) -> tuple[list[Cell], list[np.ndarray], list[np.ndarray]]:
    """A WIDER image for every cell, with its boxes (one array per cell) in panorama pixels."""
    images = _wider_sized()
    n = rows * cols
    deck = np.concatenate([rng.permutation(len(images)) for _ in range(-(-n // len(images)))])[:n]
    cells, boxes, invalid, first = [], [], [], 0
    for i, k in enumerate(deck.tolist()):
        im, w, h = images[k]
        s = min(rng.uniform(*SCALES), CELL_W / w, CELL_H / h)    # tall images shrink further to fit
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        flip = bool(rng.random() < 0.5)
        x0 = (i % cols) * CELL_W + int(rng.integers(0, CELL_W - nw + 1))
        y0 = (i // cols) * CELL_H + int(rng.integers(0, CELL_H - nh + 1))
        b = im.boxes.astype(np.float64)
        b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1) * [nw / w, nh / h, nw / w, nh / h]
        if flip:
            b[:, [0, 2]] = nw - b[:, [2, 0]]
        b, keep = _clip(b, nw, nh)
        boxes.append(b + [x0, y0, x0, y0])
        invalid.append(im.invalid[keep])
        cells.append(Cell(im.path, (0, 0, w, h), (x0, y0, x0 + nw, y0 + nh), flip, (first, first + len(b))))
        first += len(b)
    return cells, boxes, invalid


def _clip(boxes: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to a w x h picture, and which were kept (at least MIN_BOX a side)."""
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX)
    return boxes[keep], keep


# --- planted identities -------------------------------------------------------

def _plant(cells: list[Cell], boxes: list[np.ndarray], invalid: list[np.ndarray], count: int,
           rng: np.random.Generator) -> tuple[dict[int, np.ndarray], list[Planted]]:
    """Replace `count` random cells by photos of distinct people, in place; returns the
    drawn pixels per replaced cell and the planted people."""
    if count <= 0:
        return {}, []
    albums: dict[str, list[Path]] = defaultdict(list)
    for photo in identity_photos():
        albums[photo.identity].append(photo.path)
    people = sorted(name for name, photos in albums.items() if len(photos) >= 2)
    if count > len(cells):
        raise ValueError(f"cannot plant {count} photos in {len(cells)} cells")
    where = sorted(rng.choice(len(cells), count, replace=False).tolist())
    # A local detector: its memory (a few hundred MB) is given back before drawing starts.
    detector = CenterFace(settings_for("balanced").tile)
    patches: dict[int, np.ndarray] = {}
    planted: list[Planted] = []
    for name in rng.permutation(people).tolist():
        if len(planted) == count:
            break
        for k in rng.permutation(len(albums[name])).tolist():
            photo = albums[name][k]
            queries = _distinct([q for q in albums[name] if q != photo and not _same_picture(q, photo)])
            faces = _faces(photo, detector) if queries else np.zeros((0, 4))
            if not len(faces) or faces[0, 3] - faces[0, 1] < FACE_SIZES[0]:
                continue
            i = where[len(planted)]
            patches[i], face = _plant_cell(i, photo, faces, cells, boxes, invalid, rng)
            planted.append(Planted(name, photo, face, queries))
            break
    if len(planted) < count:
        raise ValueError(f"only {len(planted)} people can be planted (asked for {count})")
    # Boxes were replaced per cell; renumber every cell's slice of the concatenation.
    first = 0
    for i, cell in enumerate(cells):
        cells[i] = Cell(cell.source, cell.crop, cell.place, cell.flip, (first, first + len(boxes[i])))
        first += len(boxes[i])
    return patches, planted


def _plant_cell(i: int, photo: Path, faces: np.ndarray, cells: list[Cell],
                boxes: list[np.ndarray], invalid: list[np.ndarray], rng: np.random.Generator
                ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Put `photo` (faces largest first) in cell i, cropped around its face to fit the cell."""
    pixels = _photo_pixels(photo)
    h, w = pixels.shape[:2]
    fx1, fy1, fx2, fy2 = faces[0]
    s = rng.uniform(FACE_SIZES[0], min(FACE_SIZES[1], fy2 - fy1)) / (fy2 - fy1)
    cw, ch = min(w, math.floor(CELL_W / s)), min(h, math.floor(CELL_H / s))
    # A window of the photo that holds the whole face, at a random place around it.
    x0 = _around(math.ceil(fx2) - cw, min(math.floor(fx1), w - cw), rng)
    y0 = _around(math.ceil(fy2) - ch, min(math.floor(fy1), h - ch), rng)
    nw, nh = max(1, round(cw * s)), max(1, round(ch * s))
    patch = cv2.resize(pixels[y0:y0 + ch, x0:x0 + cw], (nw, nh), interpolation=cv2.INTER_AREA)
    cell_x, cell_y = cells[i].place[0] // CELL_W * CELL_W, cells[i].place[1] // CELL_H * CELL_H
    px = cell_x + int(rng.integers(0, CELL_W - nw + 1))
    py = cell_y + int(rng.integers(0, CELL_H - nh + 1))
    b = (faces.astype(np.float64) - [x0, y0, x0, y0]) * [nw / cw, nh / ch, nw / cw, nh / ch]
    b, keep = _clip(b, nw, nh)
    # The person is the first face; anyone else caught in the photo is a bystander that
    # neither counts as a miss nor as a false positive.
    bystander = np.ones(len(faces), bool)
    bystander[0] = False
    boxes[i], invalid[i] = b + [px, py, px, py], bystander[keep]
    cells[i] = Cell(photo, (x0, y0, x0 + cw, y0 + ch), (px, py, px + nw, py + nh), False, (0, 0))
    return patch, tuple(round(float(v), 2) for v in boxes[i][0])


def _around(lo: int, hi: int, rng: np.random.Generator) -> int:
    lo = max(0, lo)
    return int(rng.integers(lo, max(lo, hi) + 1))


def _photo_pixels(photo: Path) -> np.ndarray:
    # detect_whole's decoding, so that boxes and pixels share one frame.
    return as_rgb8(open_sequential(str(photo))).numpy()


_FACES: dict[Path, np.ndarray] = {}


def _faces(photo: Path, detector) -> np.ndarray:
    """Face boxes (x1, y1, x2, y2) of an identity photo, largest first; cached.
    Detection runs on a copy no bigger than DETECT_MAX_SIDE: portrait faces stay far
    above the detector's minimum, and the big photos take a tenth of the time."""
    if photo not in _FACES:
        pixels = _photo_pixels(photo)
        h, w = pixels.shape[:2]
        k = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = cv2.resize(pixels, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "photo.png"
            cv2.imwrite(str(copy), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            _, dets = detect_whole(str(copy), detector)
        back = np.array([w / small.shape[1], h / small.shape[0]] * 2)
        boxes = np.clip(dets.boxes.astype(np.float64).reshape(-1, 4) * back, 0, [w, h, w, h])
        _FACES[photo] = boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")]
    return _FACES[photo]


def _distinct(photos: list[Path]) -> list[Path]:
    """The photos less copies of an earlier one (e.g. obama-480p after obama-240p)."""
    kept: list[Path] = []
    for photo in photos:
        if not any(_same_picture(photo, other) for other in kept):
            kept.append(photo)
    return kept


def _same_picture(a: Path, b: Path) -> bool:
    """Whether two files show the same picture, rescaled, cropped, padded or mirrored:
    many ORB matches agree on one similarity transform.  Names alone miss most of these
    (obama-1080p.jpg is obama.jpg letterboxed, test_images/32bit.png is obama2.jpg)."""
    if a == b:
        return True
    (pb, db), (pa, da), (pm, dm) = _orb(b, False), _orb(a, False), _orb(a, True)
    return max(_agreeing(pa, da, pb, db), _agreeing(pm, dm, pb, db)) >= SAME_PICTURE_INLIERS


@lru_cache(maxsize=256)
def _orb(path: Path, mirror: bool) -> tuple[np.ndarray, np.ndarray | None]:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    k = 640 / max(gray.shape)
    gray = cv2.resize(gray, (round(gray.shape[1] * k), round(gray.shape[0] * k)), interpolation=cv2.INTER_AREA)
    if mirror:
        gray = np.ascontiguousarray(gray[:, ::-1])
    points, descriptors = cv2.ORB_create(1000).detectAndCompute(gray, None)
    return np.float32([p.pt for p in points]).reshape(-1, 2), descriptors


def _agreeing(pa: np.ndarray, da: np.ndarray | None, pb: np.ndarray, db: np.ndarray | None) -> int:
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [m for m, *rest in pairs if rest and m.distance < 0.75 * rest[0].distance]
    if len(good) < 3:
        return 0
    _, inliers = cv2.estimateAffinePartial2D(pa[[m.queryIdx for m in good]], pb[[m.trainIdx for m in good]],
                                             method=cv2.RANSAC, ransacReprojThreshold=4.0)
    return 0 if inliers is None else int(inliers.sum())


# --- drawing and output -------------------------------------------------------

def _bands(cells: list[Cell], patches: dict[int, np.ndarray], rows: int, cols: int) -> Iterator[np.ndarray]:
    """One row of cells at a time, in a buffer the next row overwrites.  (No cache of
    decoded images: the deck spreads repeats of an image far apart.)"""
    band = np.empty((CELL_H, cols * CELL_W, 3), np.uint8)
    for r in range(rows):
        band[:] = BACKGROUND
        for i in range(r * cols, (r + 1) * cols):
            x0, y0, x1, y1 = cells[i].place
            band[y0 - r * CELL_H:y1 - r * CELL_H, x0:x1] = patches[i] if i in patches else _draw_wider(cells[i])
        yield band


def _draw_wider(cell: Cell) -> np.ndarray:
    bgr = cv2.imread(str(cell.source), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or (bgr.shape[1], bgr.shape[0]) != cell.crop[2:]:
        raise RuntimeError(f"{cell.source}: unreadable, or not the size its header gave")
    x0, y0, x1, y1 = cell.place
    out = cv2.resize(bgr, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    if cell.flip:
        out = out[:, ::-1]
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _write_tiff(jpeg: Path, path: Path) -> Path:
    with temporary_beside(str(path), suffix=".tif") as tmp:
        pyvips.Image.new_from_file(str(jpeg), access="sequential").tiffsave(
            tmp, tile=True, tile_width=512, tile_height=512, compression="jpeg", Q=JPEG_Q, bigtiff=True)
        os.replace(tmp, path)
    return path


def _shared(relative: str) -> Path:
    return shared_path(relative)


def _relative(path: Path) -> str:
    return Path(path).relative_to(shared_path()).as_posix()


def _truth_json(m: Mosaic) -> bytes:
    truth = {
        "version": VERSION, "megapixels": m.megapixels, "seed": m.seed,
        "width": m.width, "height": m.height, "cell": [CELL_W, CELL_H],
        "jpeg": m.jpeg.name, "tiff": m.tiff.name if m.tiff else None,
        "boxes": np.round(m.boxes.astype(np.float64), 2).tolist(), "invalid": m.invalid.astype(int).tolist(),
        "planted": [{"identity": p.identity, "photo": _relative(p.photo), "box": list(p.box),
                     "queries": [_relative(q) for q in p.queries]} for p in m.planted],
        "cells": [{"source": _relative(c.source), "crop": list(c.crop), "place": list(c.place),
                   "flip": c.flip, "faces": list(c.faces)} for c in m.cells],
    }
    return json.dumps(truth, separators=(",", ":")).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mosaic", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=float, default=100, help="megapixels (default 100)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planted", type=int, default=6, help="identity photos to plant")
    parser.add_argument("--no-tiff", action="store_true", help="write the JPEG only")
    args = parser.parse_args(argv)

    def progress(done: int, total: int) -> None:
        print(f"\r  {done / total:4.0%} drawn", end="", file=sys.stderr, flush=True)

    start = time.perf_counter()
    m = build_mosaic(args.out, args.size, args.seed, args.planted, not args.no_tiff, progress)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    print(f"{m.jpeg}: {m.width}x{m.height} ({m.width * m.height / 1e6:.1f} MP), {len(m.boxes)} faces "
          f"({int(m.invalid.sum())} invalid), {len(m.planted)} planted, {len(m.cells)} cells")
    if m.tiff:
        print(f"{m.tiff}: tiled TIFF")
    for p in m.planted:
        x1, y1, x2, y2 = p.box
        print(f"  planted {p.identity} ({p.photo.name}) face {y2 - y1:.0f} px at {x1:.0f},{y1:.0f}; "
              f"{len(p.queries)} query photos")
    print(f"took {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
