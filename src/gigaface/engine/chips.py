"""The 150x150 face chip dlib's descriptor expects, cut without dlib.

dlib (`get_face_chip_details`, `extract_image_chip` in `image_transforms/interpolation.h`)
fits a similarity from five template points to the five landmarks, turns it into a
rotated rectangle, and samples the chip from that rectangle with bilinear interpolation
that truncates to integers; when the face is more than twice the chip's size it first
shrinks the image with its pyramid_down<2> (a 5-tap [1 4 6 4 1] filter, integer
arithmetic). `chip` does all of that in numpy; `chip_opencv` is the plain OpenCV warp
onto the same template, kept to measure what that simpler path costs in parity.
"""
from __future__ import annotations

import math

import numpy as np

SIZE = 150
PADDING = 0.25
# dlib's 5-point template (get_face_chip_details): eye corners, then the nose tip
_TEMPLATE = np.array([(0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
                      (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
                      (0.4901123135679, 0.6277975316475)])


def template(size: int = SIZE, padding: float = PADDING) -> np.ndarray:
    """The five landmarks' places in a chip of `size` pixels with dlib's `padding`."""
    return (padding + _TEMPLATE) / (2 * padding + 1) * size


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares scale-rotation-translation (2x2 m, 2 b) taking `source` onto `target`."""
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    sc, tc = s - s.mean(axis=0), t - t.mean(axis=0)
    norm = (sc ** 2).sum()
    a = (sc * tc).sum() / norm
    b = (sc[:, 0] * tc[:, 1] - sc[:, 1] * tc[:, 0]).sum() / norm
    m = np.array([[a, -b], [b, a]])
    return m, t.mean(axis=0) - m @ s.mean(axis=0)


def chip_rect(landmarks: np.ndarray, size: int = SIZE, padding: float = PADDING) -> tuple[np.ndarray, float]:
    """dlib's chip_details: the rectangle (left, top, right, bottom) and angle to sample."""
    m, b = similarity(template(size, padding), landmarks)
    angle = math.atan2(m[1, 0], m[0, 0])
    scale = math.hypot(m[0, 0], m[1, 0])
    cx, cy = m @ np.array([size / 2, size / 2]) + b
    half = (size * scale - 1) / 2  # centered_drect: a width of w spans w - 1 between its corners
    return np.array([cx - half, cy - half, cx + half, cy + half]), angle


def box_rect(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The dlib.rectangle (left, top, right, bottom) gigaface gives the landmark predictor
    for a face box (x, y, w, h): Python's rounding, as `describe.cut_chip` does."""
    x, y, w, h = box
    return int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))


def aligned_chips(regions: list[np.ndarray], boxes: list[tuple[float, float, float, float]],
                  model=None) -> tuple[np.ndarray, np.ndarray]:
    """dlib's alignment without dlib: (n, 150, 150, 3) chips and (n, 5, 2) landmarks of
    one face per RGB region, its box (x, y, w, h) in region pixels. All faces go through
    the landmark trees together."""
    from gigaface.engine.dlib import shape as dlib_shape

    if not len(regions):
        return np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros((0, 5, 2), np.int64)
    model = model or dlib_shape.shape_model()
    rects = np.array([box_rect(b) for b in boxes], np.int64)
    points = dlib_shape.landmarks_in_regions(model, regions, rects)
    return np.stack([chip(r, p) for r, p in zip(regions, points)]), points


def _rotated_corners(rect: np.ndarray, angle: float) -> np.ndarray:
    """tl, tr, bl, br of `rect` turned by `angle` about its centre (dlib's rotate_point)."""
    l, t, r, b = rect
    centre = np.array([(l + r) / 2, (t + b) / 2])
    corners = np.array([(l, t), (r, t), (l, b), (r, b)]) - centre
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * corners[:, 0] - s * corners[:, 1], s * corners[:, 0] + c * corners[:, 1]], 1) + centre


def _rect_down(rect: np.ndarray) -> np.ndarray:
    """pyramid_down<2>'s map of a rectangle into the next level."""
    return rect / 2 - np.array([1.25, 0.75, 1.25, 0.75])


def _area(rect: np.ndarray) -> float:
    w, h = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
    return 0.0 if w <= 0 or h <= 0 else float(w * h)


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2>: [1 4 6 4 1] along rows then columns, every other pixel,
    the sum divided by 256 and rounded down, in integers."""
    rows, cols = image.shape[:2]
    if rows <= 8 or cols <= 8:
        return image[:0, :0]
    x = image.astype(np.uint32)
    out_cols, out_rows = (cols - 3) // 2, (rows - 3) // 2
    taps = (1, 4, 6, 4, 1)
    across = sum(w * x[:, j : j + 2 * out_cols : 2] for j, w in enumerate(taps))
    down = sum(w * across[j : j + 2 * out_rows : 2] for j, w in enumerate(taps))
    return (down // 256).astype(np.uint8)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's interpolate_bilinear at real points: black where the 2x2 neighbourhood is not
    inside the image, otherwise the weighted sum in float64 (in dlib's order of operations),
    truncated to an integer."""
    rows, cols = image.shape[:2]
    flat = image.reshape(rows * cols, -1)
    left, top = np.floor(x).astype(np.int64).ravel(), np.floor(y).astype(np.int64).ravel()
    inside = (left >= 0) & (top >= 0) & (left + 1 < cols) & (top + 1 < rows)
    at = np.where(inside, top * cols + left, 0)

    def neighbour(offset: int) -> np.ndarray:
        # channels first, so that every operation below runs along the points, not along 3 channels
        return flat.take(at + offset, axis=0).T.astype(np.float64)

    tl, tr, bl, br = neighbour(0), neighbour(1), neighbour(cols), neighbour(cols + 1)
    fx, fy = x.ravel() - left, y.ravel() - top
    gx = 1 - fx
    value = (1 - fy) * (gx * tl + fx * tr) + fy * (gx * bl + fx * br)
    value[:, ~inside] = 0
    return value.T.astype(np.uint8).reshape(*x.shape, *image.shape[2:])


def chip(image: np.ndarray, landmarks: np.ndarray, size: int = SIZE, padding: float = PADDING) -> np.ndarray:
    """The (size, size, 3) uint8 chip dlib's get_face_chip cuts for these 5 landmarks
    (as dlib's shape predictor gives them: integer pixels of `image`, RGB)."""
    rect, angle = chip_rect(landmarks, size, padding)
    # Levels needed so that sampling never skips pixels (extract_image_chips)
    depth, grow, r = 0, 2.0, _rect_down(rect)
    while _area(r) > size * size:
        r, depth, grow = _rect_down(r), depth + 1, grow * 2 + 2
    source, rect = _crop_for(image, rect, angle, grow)
    level = source
    for _ in range(depth):
        level, rect = pyramid_down(level), _rect_down(rect)
    tl, tr, bl, _ = _rotated_corners(rect, angle)
    steps = np.arange(size, dtype=np.float64) / (size - 1)
    u, v = steps[None, :], steps[:, None]
    # chip corners onto the rectangle's corners, x and y apart (a trailing axis of 2 is slow)
    x = tl[0] + (tr[0] - tl[0]) * u + (bl[0] - tl[0]) * v
    y = tl[1] + (tr[1] - tl[1]) * u + (bl[1] - tl[1]) * v
    return bilinear(level, x, y)


def _crop_for(image: np.ndarray, rect: np.ndarray, angle: float, grow: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of `image` dlib works on (the turned rectangle grown by `grow`, within the
    image, rounded to pixels), and `rect` in its coordinates: the pyramid's pixel grid
    starts at that crop's corner."""
    corners = _rotated_corners(rect, angle)
    h, w = image.shape[:2]
    lo = np.maximum(corners.min(axis=0) - grow, 0)
    hi = np.minimum(corners.max(axis=0) + grow, [w - 1, h - 1])
    x0, y0 = (int(_lround(v)) for v in lo)
    x1, y1 = (int(_lround(v)) for v in hi)
    if x1 < x0 or y1 < y0:  # the face is outside the image: an all-black chip
        return image[:0, :0], rect
    return image[y0 : y1 + 1, x0 : x1 + 1], rect - np.array([x0, y0, x0, y0])


def _lround(v: float) -> float:
    """C's lround: halves away from zero."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def chip_opencv(image: np.ndarray, landmarks: np.ndarray, size: int = SIZE, padding: float = PADDING,
                dlib_mapping: bool = False) -> np.ndarray:
    """A chip by OpenCV's bilinear warpAffine (rounding, 1/32-pixel positions, no pyramid).

    By default the warp is the similarity from the landmarks onto dlib's template
    (cv2.estimateAffinePartial2D over all five points); with `dlib_mapping` it is the
    map dlib samples with (its rectangle spans size * scale - 1 pixels, not size * scale),
    so that only the interpolation differs from `chip`."""
    import cv2

    if dlib_mapping:
        rect, angle = chip_rect(landmarks, size, padding)
        tl, tr, bl, _ = _rotated_corners(rect, angle)
        to_image = np.column_stack([(tr - tl) / (size - 1), (bl - tl) / (size - 1), tl])
        m = cv2.invertAffineTransform(to_image)
    else:
        m, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32),
                                           template(size, padding).astype(np.float32), method=cv2.LMEDS)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
