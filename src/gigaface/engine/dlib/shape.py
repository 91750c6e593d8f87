"""dlib's 5-point shape predictor, read from its `.dat` file and run in numpy over many faces.

The model (`dlib/image_processing/shape_predictor.h`) is a cascade of ensembles of
regression trees (Kazemi and Sullivan, 2014). Each cascade level looks at a few hundred
pixels placed relative to the current shape: each pixel is anchored to a landmark of the
mean shape with an offset, the offset is turned and scaled by the similarity transform
from the mean shape to the current one, and the face box maps the unit square onto the
image. Each tree compares two of those pixels' intensities with a threshold at every
split, and the leaf it reaches adds a correction to the shape. This follows dlib's
arithmetic where it decides a result: float32 shapes, pixel positions rounded to the
nearest integer, intensity (r + g + b) / 3 in integers, 0 outside the image, leaf values
added one tree after the other.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from gigaface.engine.dlib.format import DlibReader, reals_from
from gigaface.engine.model_cache import derived, read_model_file
from gigaface.errors import GigafaceError

MODEL_NAME = "shape_predictor_5_face_landmarks.dat"
FACES_PER_STEP = 256  # faces walked through the trees together; bounds the leaf gather's memory


@dataclass
class ShapeModel:
    initial: np.ndarray  # (parts, 2) float32, the mean shape in the unit square of the box
    split_a: np.ndarray  # (cascades, trees, splits) indices into that level's feature pixels
    split_b: np.ndarray
    thresholds: np.ndarray  # (cascades, trees, splits) float32
    leaves: np.ndarray  # (cascades, trees, leaves, parts * 2) float32
    anchors: np.ndarray  # (cascades, pixels) the landmark each feature pixel follows
    deltas: np.ndarray  # (cascades, pixels, 2) float32, its offset from that landmark

    @property
    def parts(self) -> int:
        return len(self.initial)


def read_shape_model(data: bytes, name: str = MODEL_NAME) -> ShapeModel:
    r = DlibReader(data, name)
    r.expect_integer("shape predictor version", 1)
    initial = r.float_vector()
    if initial.size < 4 or initial.size % 2:
        raise r.fail(f"a mean shape of {initial.size} values")
    cascades = r.count(1000)
    if cascades == 0:
        raise r.fail("a shape predictor without cascade levels")
    forests = [_read_forest(r, initial.size) for _ in range(cascades)]
    if len({(f[0].shape, f[3].shape) for f in forests}) != 1:
        raise r.fail("cascade levels whose trees differ in shape")
    split_a, split_b, thresholds, leaves = (np.stack(parts) for parts in zip(*forests))
    r.expect_integer("number of anchor lists", cascades)
    anchors = [r.integers(r.count(1 << 20)) for _ in range(cascades)]
    r.expect_integer("number of offset lists", cascades)
    deltas = [r.reals(2 * r.count(1 << 20)).reshape(-1, 2) for _ in range(cascades)]
    r.expect_end()
    if len({len(a) for a in anchors} | {len(d) for d in deltas}) != 1:
        raise r.fail("cascade levels with different numbers of feature pixels")
    anchors, deltas = np.stack(anchors), np.stack(deltas)
    model = ShapeModel(initial.reshape(-1, 2), split_a, split_b, thresholds, leaves, anchors, deltas)
    _check(r, model)
    return model


def _read_forest(r: DlibReader, dims: int) -> tuple[np.ndarray, ...]:
    """One cascade level: its trees, all of one depth, decoded in one run of integers.

    A tree is its splits (a count, then per split two pixel indices and a float threshold)
    and its leaves (a count, then per leaf a column vector: rows, columns, floats)."""
    trees = r.count(1 << 20)
    start = r.pos
    splits = r.count(1 << 16)
    r.pos = start
    leaves = splits + 1
    per_tree = 1 + 4 * splits + 1 + leaves * (2 + 2 * dims)
    run = r.integers(trees * per_tree).reshape(trees, per_tree)
    heads = run[:, 2 + 4 * splits :].reshape(trees, leaves, 2 + 2 * dims)[:, :, :2]
    if (np.any(run[:, 0] != splits) or np.any(run[:, 1 + 4 * splits] != leaves)
            or np.any(np.abs(heads) != (dims, 1))):
        raise r.fail("a regression tree whose layout differs from the others")
    s = run[:, 1 : 1 + 4 * splits].reshape(trees, splits, 4)
    values = run[:, 2 + 4 * splits :].reshape(trees, leaves, 2 + 2 * dims)[:, :, 2:].reshape(-1, 2)
    leaf_values = reals_from(r, values[:, 0], values[:, 1]).reshape(trees, leaves, dims)
    return s[..., 0], s[..., 1], reals_from(r, s[..., 2], s[..., 3]), leaf_values


def _check(r: DlibReader, m: ShapeModel) -> None:
    splits, leaves = m.split_a.shape[2], m.leaves.shape[2]
    if leaves & (leaves - 1) or leaves != splits + 1:
        raise r.fail(f"trees with {splits} splits and {leaves} leaves are not complete binary trees")
    pixels = m.anchors.shape[1]
    if m.deltas.shape[1] != pixels or min(m.split_a.min(), m.split_b.min(), m.anchors.min()) < 0:
        raise r.fail("feature pixels that do not match their anchors")
    if max(m.split_a.max(), m.split_b.max()) >= pixels or m.anchors.max() >= m.parts:
        raise r.fail("a split or anchor that points past the end of its list")


_MODELS: dict[str, ShapeModel] = {}


def shape_model(path: str | None = None) -> ShapeModel:
    """The shape predictor in `path` (default: the installed 5-point model), read once per
    file content per process and kept in the model cache between processes."""
    from gigaface.engine.describe import model_file

    path = path or model_file(MODEL_NAME)
    data = read_model_file(path, "landmark model")
    key = hashlib.sha256(data).hexdigest()
    if key not in _MODELS:
        def build() -> bytes:
            arrays = io.BytesIO()
            model = read_shape_model(data, path)
            np.savez(arrays, **{name: getattr(model, name) for name in ShapeModel.__dataclass_fields__})
            return arrays.getvalue()

        with np.load(io.BytesIO(derived(data, "shape-predictor", build, (__name__,)))) as z:
            _MODELS[key] = ShapeModel(**{name: z[name] for name in ShapeModel.__dataclass_fields__})
    return _MODELS[key]


def intensity(rgb: np.ndarray) -> np.ndarray:
    """dlib's grey level of an RGB pixel: (r + g + b) / 3, rounded down."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8, copy=False)
    return (rgb.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)


def landmarks(model: ShapeModel, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n, parts, 2) integer landmarks of the faces in `boxes` (n, 4: left, top, right,
    bottom, inclusive integer pixels, as a dlib.rectangle) of one RGB or grey image."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    return _predict_all(model, [image], np.zeros(len(boxes), np.int64), boxes)


def landmarks_in_regions(model: ShapeModel, images: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """Like `landmarks`, with one image (a region around the face) per box."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    if len(images) != len(boxes):
        raise GigafaceError(f"{len(images)} images for {len(boxes)} face boxes")
    return _predict_all(model, images, np.arange(len(boxes)), boxes)


def _predict_all(model: ShapeModel, images: list[np.ndarray], image_of: np.ndarray,
                 boxes: np.ndarray) -> np.ndarray:
    pixels = _Pixels([intensity(im) for im in images])
    out = np.zeros((len(boxes), model.parts, 2), np.int64)
    for at in range(0, len(boxes), FACES_PER_STEP):
        step = slice(at, at + FACES_PER_STEP)
        out[step] = _predict(model, pixels, image_of[step], boxes[step])
    return out


class _Pixels:
    """Grey images in one flat buffer, read at many points of many faces at once."""

    def __init__(self, images: list[np.ndarray]):
        sizes = np.array([im.size for im in images], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.heights = np.array([im.shape[0] for im in images], np.int64)
        self.widths = np.array([im.shape[1] for im in images], np.int64)
        self.flat = np.concatenate([im.reshape(-1) for im in images] + [np.zeros(1, np.uint8)])

    def read(self, image_of: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Values at integer points (faces, points), each face in its image; 0 outside it."""
        w, h = self.widths[image_of, None], self.heights[image_of, None]
        inside = (x >= 0) & (y >= 0) & (x < w) & (y < h)
        index = np.where(inside, self.offsets[image_of, None] + y * w + x, len(self.flat) - 1)
        return self.flat[index].astype(np.float32)


def _predict(model: ShapeModel, pixels: _Pixels, image_of: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    n = len(boxes)
    shape = np.broadcast_to(model.initial, (n, model.parts, 2)).astype(np.float32)
    origin = boxes[:, None, :2].astype(np.float64)  # the box maps the unit square onto the image
    extent = (boxes[:, None, 2:] - boxes[:, None, :2]).astype(np.float64)
    for level in range(len(model.anchors)):
        m = _similarity(model.initial, shape)  # (n, 2, 2) float32
        d = model.deltas[level]
        anchor = shape[:, model.anchors[level]]
        # float32 as in dlib: the turned offset, plus its landmark
        px = m[:, None, 0, 0] * d[None, :, 0] + m[:, None, 0, 1] * d[None, :, 1] + anchor[..., 0]
        py = m[:, None, 1, 0] * d[None, :, 0] + m[:, None, 1, 1] * d[None, :, 1] + anchor[..., 1]
        x = _round(origin[..., 0] + extent[..., 0] * px)
        y = _round(origin[..., 1] + extent[..., 1] * py)
        shape = _apply_trees(model, level, pixels.read(image_of, x, y), shape)
    return np.stack([_round(origin[..., 0] + extent[..., 0] * shape[..., 0]),
                     _round(origin[..., 1] + extent[..., 1] * shape[..., 1])], axis=-1)


def _round(v: np.ndarray) -> np.ndarray:
    """dlib's conversion of a real point to a pixel: floor(v + 0.5)."""
    return np.floor(v + 0.5).astype(np.int64)


def _similarity(source: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The 2x2 scale-and-rotation of the least-squares similarity from `source` (parts, 2)
    to each of `shapes` (n, parts, 2), computed in float64 and given as float32 (dlib
    solves it with Umeyama's SVD; in 2-d the same least squares has this closed form)."""
    f = source.astype(np.float64) - source.astype(np.float64).mean(axis=0)
    t = shapes.astype(np.float64) - shapes.astype(np.float64).mean(axis=1, keepdims=True)
    norm = (f ** 2).sum()
    a = (f[None, :, 0] * t[..., 0] + f[None, :, 1] * t[..., 1]).sum(axis=1) / norm
    b = (f[None, :, 0] * t[..., 1] - f[None, :, 1] * t[..., 0]).sum(axis=1) / norm
    return np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], axis=1).astype(np.float32)


def _apply_trees(model: ShapeModel, level: int, features: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Walk every tree of one cascade level for every face; add the leaves in tree order."""
    split_a, split_b = model.split_a[level].ravel(), model.split_b[level].ravel()
    thresholds = model.thresholds[level].ravel()
    trees, splits = model.split_a.shape[1:]
    leaves = model.leaves[level].reshape(-1, model.parts * 2)
    first = np.arange(trees, dtype=np.int64) * splits  # each tree's root in the flat arrays
    node = np.zeros((len(features), trees), np.int64)
    for _ in range((splits + 1).bit_length() - 1):  # complete trees: every path has this many splits
        at = first + node
        a = np.take_along_axis(features, split_a.take(at), axis=1)
        b = np.take_along_axis(features, split_b.take(at), axis=1)
        node = 2 * node + 2 - ((a - b) > thresholds.take(at))  # left child 2i+1, right 2i+2
    steps = leaves.take((node - splits) + np.arange(trees) * (splits + 1), axis=0)  # (faces, trees, parts*2)
    # dlib adds one tree's leaf after the other in float32; cumsum adds in that order too
    total = np.cumsum(np.concatenate([shape.reshape(len(shape), 1, -1), steps], axis=1), axis=1,
                      dtype=np.float32)[:, -1]
    return total.reshape(shape.shape)
