"""Synthetic "stadium panorama" for demos and benchmarks.

A crowd sits in rows of stadium seats; every face is a real face photo from
the data shipped with scikit-image (the LFW subset), and one of them is the
astronaut from ``skimage.data.astronaut()``, planted small in the middle rows
so that a demo can search for her from a separate reference photo.

The panorama can be far larger than RAM, so it is never held whole: the seat
plan (a small table of people) is laid out first, then the image is drawn in
full-width bands, each band drawing every person that overlaps it (cv2 clips
the shapes), and the bands are streamed into libvips' JPEG writer
(``streamed_image.write_streamed``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from skimage import data as skdata

from gigaface.atomic import write_bytes
from gigaface.output.streamed_image import write_streamed

__all__ = ["DemoScene", "build_stadium"]

ASPECT = 1.5                      # width / height
FACE_TOP, FACE_BOTTOM = 15, 60    # face height (px) in the top and bottom rows
ROW_PITCH = 2.15                  # row spacing, in face heights
SEAT_PITCH = 1.9                  # seat spacing along a row, in face heights
FULL = 0.88                       # a sold-out stadium still has empty seats
BLOCK_ROWS = 6                    # rows that share one occupancy per section
BLUR_RATE = 0.25
BAND_PIXELS = 2_000_000           # pixels per band: bounds the working memory
CHUNK_PIXELS = 250_000            # pixels per lighting pass: bounds float temporaries
JPEG_MAX_SIDE = 65_500
# How far a drawn person reaches above and below the face box, in face
# heights (the astronaut's own hair reaches highest).
HEAD_ROOM, BODY_DEPTH = 0.7, 3.2

# The astronaut's face in skimage.data.astronaut() (hairline to chin, checked
# by eye) and the head patch around it, which keeps her own hair.
ASTRO_FACE = (173, 72, 106)       # x, y, size
ASTRO_HEAD = (140, 8, 316, 200)   # x0, y0, x1, y1
ASTRO_SIZES = (36, 48)            # her planted face size range

SKIN = np.array([(238, 200, 172), (226, 180, 142), (206, 152, 112),
                 (178, 122, 86), (138, 92, 62), (100, 68, 48)], np.float32)
SKIN_P = (0.22, 0.26, 0.2, 0.14, 0.1, 0.08)
HAIR = np.array([(28, 24, 22), (56, 40, 30), (96, 66, 44), (122, 64, 38),
                 (186, 156, 102), (150, 148, 144), (206, 202, 196)], np.float32)
HAIR_P = (0.3, 0.25, 0.15, 0.06, 0.1, 0.09, 0.05)
SHORT, LONG, BALD, CAP = range(4)
STYLE_P = (0.55, 0.2, 0.12, 0.13)
SEAT_COLOURS = np.array([(36, 70, 150), (170, 40, 40), (30, 120, 70),
                         (210, 170, 40), (120, 120, 130)], np.float32)
WALL, TREAD, RISER = (70, 70, 74), (150, 148, 142), (104, 102, 98)


@dataclass(frozen=True)
class DemoScene:
    panorama: Path          # the JPEG written
    reference: Path         # a reference photo of the planted target person (JPEG)
    truth: Path             # JSON: {"width","height","faces":[[x,y,w,h],...],"target":[x,y,w,h]}
    width: int
    height: int
    faces: int              # number of planted faces (including the target)
    target_box: tuple[int, int, int, int]   # x, y, w, h of the target face


class _Person(NamedTuple):
    x: int                  # face box (a square), panorama pixels
    y: int
    f: int
    face: int               # LFW index; -1 marks the astronaut
    style: int
    tone: list[float]       # skin colour of the face photo, before lighting
    skin: list[float]       # colours already lit for this person
    hair: list[float]
    shirt: list[float]
    gain: float             # exposure, also applied to the face photo
    gamma: float
    blur: float             # Gaussian sigma on the face, 0 for sharp


@dataclass
class _Layout:
    width: int
    height: int
    row_y: np.ndarray         # face top of each row
    row_f: np.ndarray         # face size of each row
    row_off: np.ndarray       # where each row's seat lattice starts
    aisle_x0: float           # first aisle centre
    aisle_gap: float          # distance between aisles
    seat_colours: np.ndarray  # two, alternating by section
    rows: list[dict[str, np.ndarray]]   # per row, columns of _Person fields, left to right
    target: tuple[int, int]   # (row, seat) of the astronaut

    def seat_kept(self, cx: np.ndarray, f: float) -> np.ndarray:
        """Seats whose centre is clear of the aisles (stairs are never seated)."""
        half = self.aisle_gap / 2
        return np.abs((cx - self.aisle_x0 + half) % self.aisle_gap - half) > (0.6 + SEAT_PITCH / 2) * f

    def people(self, r: int) -> list[_Person]:
        cols = self.rows[r]
        return [_Person._make(p) for p in zip(*(cols[k].tolist() for k in _Person._fields))]


def build_stadium(out_dir: Path, megapixels: float = 150.0, seed: int = 0,
                  on_progress: Callable[[int, int], None] | None = None,
                  occupancy: float = FULL) -> DemoScene:
    """Write a stadium panorama of about `megapixels` MP (stadium.jpg), a
    reference photo of the planted target (stadium_reference.jpg) and the
    ground truth (stadium_truth.json) into `out_dir`.  Deterministic per seed.

    `occupancy` is the mean fraction of seats taken; below FULL, fans gather
    in some blocks of a section and leave others nearly empty, as they do.

    `on_progress(rows_done, rows_total)` is called as bands are produced, from
    a libvips worker thread.
    """
    width = round((megapixels * 1e6 * ASPECT) ** 0.5)
    height = round(width / ASPECT)
    if height < 8 * FACE_BOTTOM or width > JPEG_MAX_SIDE:
        raise ValueError(f"{megapixels} MP gives {width}x{height}, outside what this demo can write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    layout = _lay_out(width, height, rng, occupancy)
    faces = _Faces()

    reference = out_dir / "stadium_reference.jpg"
    write_bytes(reference, faces.reference_jpeg())
    panorama = out_dir / "stadium.jpg"
    renderer = _Renderer(layout, faces, rng)
    write_streamed(panorama, width, height, renderer.bands(), on_progress, Q=90)

    boxes = np.concatenate([np.stack([c["x"], c["y"], c["f"], c["f"]], 1) for c in layout.rows])
    r, seat = layout.target
    target_box = tuple(int(layout.rows[r][k][seat]) for k in ("x", "y", "f", "f"))
    truth = out_dir / "stadium_truth.json"
    write_bytes(truth, _truth_json(width, height, boxes, target_box))
    return DemoScene(panorama, reference, truth, width, height, len(boxes), target_box)


# --- seat plan ----------------------------------------------------------------

def _lay_out(width: int, height: int, rng: np.random.Generator, occupancy: float) -> _Layout:
    row_y, row_f = [], []
    y = 0.6 * FACE_TOP                         # room for the top row's hair
    while True:
        # Perspective: faces (and so rows and seats) grow linearly downwards.
        f = FACE_TOP + (FACE_BOTTOM - FACE_TOP) * y / height
        if y + 1.3 * f > height:
            break
        row_y.append(y)
        row_f.append(f)
        y += ROW_PITCH * f
    aisle_gap = width / max(1, round(width / 1600))
    layout = _Layout(width, height, np.array(row_y), np.array(row_f),
                     rng.uniform(0, SEAT_PITCH, len(row_f)) * row_f,
                     rng.uniform(0, aisle_gap), aisle_gap,
                     SEAT_COLOURS[rng.choice(len(SEAT_COLOURS), 2, replace=False)], [], (-1, -1))
    team = rng.uniform(40, 230, (2, 3)).astype(np.float32)   # home-team shirts
    sections = int(width / aisle_gap) + 2
    if occupancy >= FULL:
        taken = np.full((len(row_f) // BLOCK_ROWS + 1, sections), occupancy)
    else:
        taken = rng.uniform(0, 2 * occupancy, (len(row_f) // BLOCK_ROWS + 1, sections)).clip(0, FULL)

    for row, (ry, f, off) in enumerate(zip(row_y, row_f, layout.row_off)):
        sp = SEAT_PITCH * f
        cx = off + sp * (np.arange(int(width / sp) + 1) + 0.5)
        cx = cx[(cx > f) & (cx < width - f) & layout.seat_kept(cx, f)]
        section = ((cx - layout.aisle_x0) // aisle_gap).astype(int) + 1
        cx = cx[rng.random(len(cx)) < taken[row // BLOCK_ROWS, section]]
        n = len(cx)
        size = np.round(f * rng.uniform(0.9, 1.1, n))
        gain, gamma = rng.uniform(0.8, 1.15, n), rng.uniform(0.85, 1.2, n)
        hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(60, 230, n),
                        rng.uniform(60, 240, n)], 1).astype(np.uint8)
        # cv2 refuses an empty image: a sparse stadium can have a row with nobody in it
        shirt = (cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0] if n else hsv).astype(np.float32)
        fans = rng.random(n) < 0.35
        shirt[fans] = team[rng.integers(0, 2, fans.sum())]
        tone = SKIN[rng.choice(len(SKIN), n, p=SKIN_P)]
        x = np.round(cx + rng.normal(0, 0.08 * f, n) - size / 2)
        # Smaller people sit a little lower; heads bob a little.
        y = np.round(ry + 0.6 * (f - size) + rng.normal(0, 0.05 * f, n))
        layout.rows.append({
            "x": np.clip(x, 0, width - size).astype(np.int32),
            "y": np.clip(y, 0, height - size).astype(np.int32),
            "f": size.astype(np.int32),
            "face": rng.integers(0, 100, n, dtype=np.int32),
            "style": rng.choice(4, n, p=STYLE_P).astype(np.int32),
            "tone": tone,
            "skin": _light(tone, gain, gamma),
            "hair": _light(HAIR[rng.choice(len(HAIR), n, p=HAIR_P)], gain, gamma),
            "shirt": _light(shirt, gain, gamma),
            "gain": gain.astype(np.float32), "gamma": gamma.astype(np.float32),
            "blur": np.where(rng.random(n) < BLUR_RATE, rng.uniform(0.6, 1.4, n), 0).astype(np.float32),
        })

    # The astronaut: one seat, away from the row ends, in a middle row whose
    # faces are near her planted size; she is lit neutrally and kept sharp.
    lo, hi = ASTRO_SIZES
    candidates = [r for r, f in enumerate(row_f) if lo - 2 <= f <= hi - 2 and len(layout.rows[r]["x"]) > 4]
    r = int(candidates[rng.integers(len(candidates))])
    cols = layout.rows[r]
    seat = int(rng.integers(2, len(cols["x"]) - 2))
    f = int(np.clip(round(row_f[r] * rng.uniform(0.95, 1.1)), lo, hi))
    cx = cols["x"][seat] + cols["f"][seat] / 2
    for key, value in (("x", round(cx - f / 2)), ("y", round(row_y[r] + 0.6 * (row_f[r] - f))),
                       ("f", f), ("face", -1), ("style", SHORT), ("skin", (226, 180, 150)),
                       ("gain", 1), ("gamma", 1), ("blur", 0)):
        cols[key][seat] = value
    layout.target = (r, seat)
    return layout


def _light(rgb: np.ndarray, gain: np.ndarray | float, gamma: np.ndarray | float) -> np.ndarray:
    """Per-person exposure (some sit in shade, some in sun); gain/gamma are
    per person, broadcast over the trailing colour axis of `rgb`."""
    gain, gamma = np.asarray(gain, np.float32), np.asarray(gamma, np.float32)
    shape = gain.shape + (1,) * (rgb.ndim - gain.ndim)
    lit = gain.reshape(shape) * 255 * (rgb / np.float32(255)) ** gamma.reshape(shape)
    return np.minimum(lit, 255)


# --- face patches ---------------------------------------------------------------

class _Faces:
    """Face patches at the sizes needed.  Sizes change slowly down the image,
    so the per-build caches stay small and nearly always hit."""

    def __init__(self) -> None:
        self.lfw = skdata.lfw_subset()[:100].astype(np.float32)   # the last 100 are non-faces
        self.astronaut = skdata.astronaut()
        self._gray: dict[tuple[int, int], np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._target: dict[int, tuple[np.ndarray, np.ndarray, int, int]] = {}

    def mask(self, f: int) -> np.ndarray:
        """Soft rounded-square alpha: the photo's corners fade into head and hair."""
        if f not in self._masks:
            u = np.abs((np.arange(f, dtype=np.float32) + 0.5) / f * 2 - 1)
            r = (u[:, None] ** 3 + u[None, :] ** 3) ** (1 / 3)
            self._masks[f] = np.clip((1.05 - r) * f / 3, 0, 1)[..., None]
        return self._masks[f]

    def gray(self, idx: int, f: int) -> np.ndarray:
        """LFW face `idx` at f x f, brightness normalised to 1 mid-face."""
        if (idx, f) not in self._gray:
            if len(self._gray) > 2000:
                self._gray.clear()
            g = self.lfw[idx] / self.lfw[idx, 6:20, 5:20].mean()
            interp = cv2.INTER_AREA if f < g.shape[0] else cv2.INTER_CUBIC
            self._gray[idx, f] = cv2.resize(g, (f, f), interpolation=interp)[..., None]
        return self._gray[idx, f]

    def face(self, p: _Person) -> np.ndarray:
        """RGB face (float, 0..255) for `p`: tinted to its skin, lit, maybe blurred."""
        # Soft contrast: LFW photos are harshly lit, and tinted highlights
        # that clip look painted on.
        shade = np.clip(0.3 + 0.7 * self.gray(p.face, p.f), 0, 1.3)
        rgb = _light(np.minimum(shade * np.float32(p.tone), 255), p.gain, p.gamma)
        if p.blur > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), p.blur)
        return rgb

    def target(self, f: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Astronaut head (RGB, alpha, dx, dy) scaled so her face is f px;
        (dx, dy) places the patch relative to the face box's top-left."""
        if f not in self._target:
            fx, fy, fs = ASTRO_FACE
            x0, y0, x1, y1 = ASTRO_HEAD
            alpha = np.zeros(self.astronaut.shape[:2], np.float32)
            cv2.ellipse(alpha, (228, 84), (66, 66), 0, 0, 360, 1.0, -1)    # hair
            cv2.ellipse(alpha, (225, 128), (44, 54), 0, 0, 360, 1.0, -1)   # face and chin
            alpha = cv2.GaussianBlur(alpha, (0, 0), 2)
            s = f / fs
            size = (round((x1 - x0) * s), round((y1 - y0) * s))
            rgb = cv2.resize(self.astronaut[y0:y1, x0:x1].astype(np.float32), size,
                             interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)[..., None]
            self._target[f] = (rgb, alpha, round((x0 - fx) * s), round((y0 - fy) * s))
        return self._target[f]

    def reference_jpeg(self) -> bytes:
        """Another photo of the same person: looser crop (head and shoulders),
        bigger (face ~175 px), slightly rotated and warmer.  Never mirrored."""
        crop = self.astronaut[0:400, 30:430]
        turn = cv2.getRotationMatrix2D((200, 200), 3.0, 1.0)
        crop = cv2.warpAffine(crop, turn, (400, 400), borderMode=cv2.BORDER_REFLECT)
        crop = cv2.resize(crop, (660, 660), interpolation=cv2.INTER_CUBIC)
        crop = np.clip(crop * np.float32([1.04, 1.0, 0.95]), 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError("could not encode the reference photo")
        return jpeg.tobytes()


# --- drawing ------------------------------------------------------------------

_SHIFT = 4                        # cv2 fixed-point bits: sub-pixel shapes for small people


def _pt(x: float, y: float) -> tuple[int, int]:
    # floor, not int(): rounding must not depend on which band a shape is in
    return math.floor(x * (1 << _SHIFT) + 0.5), math.floor(y * (1 << _SHIFT) + 0.5)


def _ellipse(img: np.ndarray, c: tuple[float, float], axes: tuple[float, float],
             colour: list[float], start: int = 0, end: int = 360) -> None:
    cv2.ellipse(img, _pt(*c), _pt(*axes), 0, start, end, colour, -1, cv2.LINE_AA, _SHIFT)


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: list[float]) -> None:
    cv2.rectangle(img, _pt(x0, y0), _pt(x1, y1), colour, -1, cv2.LINE_AA, _SHIFT)


def _scaled(colour: list[float], k: float) -> list[float]:
    return [c * k for c in colour]


def _blend(band: np.ndarray, x: int, y: int, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """Alpha-blend a patch at (x, y) in band coordinates, clipped to the band."""
    h, w = alpha.shape[:2]
    y0, y1 = max(y, 0), min(y + h, band.shape[0])
    x0, x1 = max(x, 0), min(x + w, band.shape[1])
    if y0 < y1 and x0 < x1:
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
        region = band[y0:y1, x0:x1]
        region[:] = region * (1 - a) + rgb[y0 - y:y1 - y, x0 - x:x1 - x] * a + 0.5


class _Renderer:
    """Draws the panorama band by band into one reused PNG-scanline buffer."""

    def __init__(self, layout: _Layout, faces: _Faces, rng: np.random.Generator) -> None:
        self.layout, self.faces = layout, faces
        self.width, self.height = layout.width, layout.height
        self.band_rows = max(32, BAND_PIXELS // self.width)
        # Sensor grain plus blotchy low-frequency texture, identical in all
        # channels; tiled rather than drawn per band (prime periods, so the
        # repeat does not line up with the seat pattern).
        grain = rng.normal(0, 3.5, (263, 1021)).astype(np.float32)
        grain += cv2.GaussianBlur(rng.normal(0, 25, (263, 1021)).astype(np.float32), (0, 0), 4)
        self.grain = np.repeat(grain[..., None], 3, axis=2)
        self.light_phase = rng.uniform(0, 2 * np.pi, 4)
        self.x = np.arange(self.width, dtype=np.float32)

    def bands(self) -> Iterator[np.ndarray]:
        """The panorama's RGB rows, band by band, in one buffer that the next
        band overwrites."""
        buffer = np.zeros((self.band_rows, self.width, 3), np.uint8)
        for y0 in range(0, self.height, self.band_rows):
            y1 = min(y0 + self.band_rows, self.height)
            band = buffer[:y1 - y0]
            self._background(band, y0)
            self._people(band, y0)
            self._expose(band, y0)
            yield band

    def _background(self, band: np.ndarray, y0: int) -> None:
        """Concrete tiers with a row of seat backs behind each row of people."""
        lay, y1 = self.layout, y0 + band.shape[0]
        band[:] = WALL
        for r, (ry, f) in enumerate(zip(lay.row_y, lay.row_f)):
            end = lay.row_y[r + 1] + 1.15 * lay.row_f[r + 1] if r + 1 < len(lay.row_y) else self.height
            if ry + 1.15 * f >= y1 or end <= y0:
                continue
            seats = self._seat_backs(r)
            step = ry + ROW_PITCH * f
            tread = step + 0.35 * (end - step)
            for a, b, fill in ((ry + 1.15 * f, ry + 1.27 * f, seats * 0.7),   # top rail
                               (ry + 1.27 * f, step, seats),
                               (step, tread, TREAD),                          # step, seen from above
                               (tread, end, RISER)):
                a, b = max(round(a), y0), min(round(b), y1)
                if a < b:
                    band[a - y0:b - y0] = fill

    def _seat_backs(self, r: int) -> np.ndarray:
        """(W, 3) colours along row r: seat backs on the row's seat lattice,
        concrete in the gaps and aisles, colour alternating by section."""
        lay = self.layout
        pos = (self.x - lay.row_off[r]) / (SEAT_PITCH * lay.row_f[r])
        k = np.floor(pos)
        cx = lay.row_off[r] + (k + 0.5) * SEAT_PITCH * lay.row_f[r]
        seat = (pos - k > 0.07) & (pos - k < 0.93) & lay.seat_kept(cx, lay.row_f[r])
        section = np.floor((cx - lay.aisle_x0) / lay.aisle_gap).astype(np.int64) % 2
        return np.where(seat[:, None], lay.seat_colours[section], np.float32(RISER))

    def _people(self, band: np.ndarray, y0: int) -> None:
        """Everyone overlapping the band, back rows first so that the people
        in front cover the bodies behind them."""
        lay, y1 = self.layout, y0 + band.shape[0]
        for r, (ry, f) in enumerate(zip(lay.row_y, lay.row_f)):
            # Row bounds allow for the size and height jitter of its people.
            if ry - 1.0 * f < y1 and ry + 3.8 * f > y0:
                for p in lay.people(r):
                    if p.y - HEAD_ROOM * p.f < y1 and p.y + BODY_DEPTH * p.f > y0:
                        self._person(band, y0, p)

    def _person(self, band: np.ndarray, y0: int, p: _Person) -> None:
        f, cx, top = p.f, p.x + p.f / 2, p.y - y0
        _ellipse(band, (cx, top + 1.8 * f), (1.1 * f, 0.6 * f), p.shirt)          # shoulders
        _rect(band, cx - 1.1 * f, top + 1.8 * f, cx + 1.1 * f, top + BODY_DEPTH * f, _scaled(p.shirt, 0.92))
        if p.style == LONG:
            _ellipse(band, (cx, top + 0.8 * f), (0.68 * f, 0.9 * f), p.hair)
        _rect(band, cx - 0.2 * f, top + 0.8 * f, cx + 0.2 * f, top + 1.3 * f, _scaled(p.skin, 0.8))  # neck
        if p.face < 0:
            rgb, alpha, dx, dy = self.faces.target(f)
            _blend(band, p.x + dx, top + dy, rgb, alpha)
            return
        for side in (-1, 1):                                                        # ears
            _ellipse(band, (cx + side * 0.5 * f, top + 0.52 * f), (0.1 * f, 0.17 * f), _scaled(p.skin, 0.9))
        # A skin-coloured head with hair over the crown only, so the face's
        # soft edge blends into cheeks rather than into a hood of hair.
        _ellipse(band, (cx, top + 0.5 * f), (0.54 * f, 0.6 * f), _scaled(p.skin, 0.9))
        if p.style != BALD:
            _ellipse(band, (cx, top + 0.4 * f), (0.6 * f, 0.6 * f), p.hair, 180, 360)
            _ellipse(band, (cx, top + 0.4 * f), (0.6 * f, 0.22 * f), p.hair)      # sideburns
        if top < band.shape[0] and top + f > 0:
            _blend(band, p.x, top, self.faces.face(p), self.faces.mask(f))
        if p.style == CAP:
            cap = p.shirt[1:] + p.shirt[:1]
            _ellipse(band, (cx, top + 0.12 * f), (0.6 * f, 0.36 * f), cap, 180, 360)
            _ellipse(band, (cx, top + 0.1 * f), (0.64 * f, 0.08 * f), _scaled(cap, 0.8))

    def _lighting(self, y: np.ndarray) -> np.ndarray:
        """Per-channel gain at rows y, as (rows, W, 3): darker under the roof
        at the top, broad floodlight pools, a slight warm/cool drift.  Smooth,
        so it is evaluated every 16 px across and interpolated."""
        w, h, ph = self.width, self.height, self.light_phase
        n = -(-w // 16) + 1
        x = (np.arange(n, dtype=np.float32) + 0.5) * w / n - 0.5   # cv2.resize's sample points
        yy, xx = y[:, None] / h, x[None, :] / w
        pools = (1 + 0.14 * np.sin(2 * np.pi * 1.7 * yy + ph[0]) * np.sin(2 * np.pi * 2.3 * xx + ph[1])
                 + 0.08 * np.sin(2 * np.pi * (3.3 * yy + 5.1 * xx) + ph[2]))
        roof = 0.72 + 0.28 * np.sqrt(np.clip(yy / 0.3, 0, 1))
        warmth = 0.04 * np.sin(2 * np.pi * (1.3 * xx - 0.8 * yy) + ph[3])
        gain = (pools * roof)[..., None] * np.stack([1 + warmth, np.ones_like(warmth), 1 - warmth], -1)
        return cv2.resize(gain.astype(np.float32), (w, len(y)), interpolation=cv2.INTER_LINEAR)

    def _expose(self, band: np.ndarray, y0: int) -> None:
        """Apply lighting and grain in place, in chunks of rows so that the
        float temporaries stay small whatever the width."""
        gh, gw = self.grain.shape[:2]
        step = max(1, CHUNK_PIXELS // self.width)
        for c0 in range(0, band.shape[0], step):
            c1 = min(c0 + step, band.shape[0])
            y = np.arange(y0 + c0, y0 + c1)
            lit = self._lighting(y.astype(np.float32))
            cv2.multiply(band[c0:c1], lit, dst=lit, dtype=cv2.CV_32F)
            grain = np.tile(self.grain[y % gh], (1, -(-self.width // gw), 1))[:, :self.width]
            cv2.add(lit, grain, dst=band[c0:c1], dtype=cv2.CV_8U)     # rounds and saturates


# --- output -------------------------------------------------------------------

def _truth_json(width: int, height: int, boxes: np.ndarray,
                target: tuple[int, int, int, int]) -> bytes:
    # Hand-assembled: json.dumps of hundreds of thousands of small lists is
    # slow and memory-hungry.
    faces = ",".join(f"[{x},{y},{w},{h}]" for x, y, w, h in boxes.tolist())
    return (f'{{"width": {width}, "height": {height}, "faces": [{faces}], '
            f'"target": {json.dumps(list(target))}}}').encode()
