"""The one data type passed between detection stages: a batch of face boxes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Faces as parallel numpy arrays, in whatever pixel frame the producer says.

    boxes: (N, 4) float32 x1, y1, x2, y2; scores: (N,) float32;
    landmarks: (N, 5, 2) float32 x, y of left eye, right eye, nose, mouth left, mouth right
    (left/right as seen in the image).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: np.ndarray) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    def transformed(self, scale: float, dx: float = 0.0, dy: float = 0.0) -> "Detections":
        """Map p -> p * scale + (dx, dy), for tile-to-panorama and scale changes."""
        offset = np.array([dx, dy], np.float32)
        boxes = self.boxes * scale + np.tile(offset, 2)
        return Detections(boxes.astype(np.float32), self.scores,
                          (self.landmarks * scale + offset).astype(np.float32))

    def mirrored(self, width: float) -> "Detections":
        """Detections of a horizontally mirrored image, mapped back to the original.

        Left and right swap in a mirror, so the eye and mouth-corner landmarks swap too.
        """
        boxes = self.boxes.copy()
        boxes[:, 0], boxes[:, 2] = width - self.boxes[:, 2], width - self.boxes[:, 0]
        landmarks = self.landmarks[:, [1, 0, 2, 4, 3]].copy()
        landmarks[:, :, 0] = width - landmarks[:, :, 0]
        return Detections(boxes, self.scores, landmarks)

    def reweighted(self, weight: float) -> "Detections":
        """Scores times `weight`, kept within [0, 1]."""
        if weight == 1.0:
            return self
        return Detections(self.boxes, np.minimum(self.scores * weight, 1.0).astype(np.float32), self.landmarks)

    def clipped(self, width: float, height: float) -> "Detections":
        """Boxes cut to the image; a face at the border keeps only its visible part."""
        boxes = self.boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return Detections(boxes, self.scores, self.landmarks)

    @property
    def sizes(self) -> np.ndarray:
        """Face size in pixels: the larger side of the box."""
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    @property
    def centres(self) -> np.ndarray:
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(dets: Detections, iou: float = 0.4, cell: float = 256.0, first: np.ndarray | None = None) -> Detections:
    return dets.select(nms_indices(dets, iou, cell, first))


def nms_indices(dets: Detections, iou: float = 0.4, cell: float = 256.0,
                first: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression that scales to a whole panorama; kept rows in order.

    Boxes are bucketed on a grid so that each box is compared only with kept boxes
    in neighbouring cells; boxes larger than a cell go to a coarser grid of their own.
    With `first` (a bool per box), those boxes are visited before all others whatever
    their scores: what survives among them is what NMS over them alone keeps, and the
    others only fill the places they leave.
    """
    n = len(dets)
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    if first is None:
        order = np.argsort(-dets.scores, kind="stable")
    else:
        order = np.lexsort((-dets.scores, ~np.asarray(first, bool)))  # stable, like the above
    boxes = dets.boxes.astype(np.float64)
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cell = max(cell, 1.0)
    # Grid level per box: cell * 2**level is at least the box size, so a box
    # can only overlap kept boxes in the 3x3 neighbourhood at each level.
    levels = np.maximum(0, np.ceil(np.log2(np.maximum(sizes, 1.0) / cell))).astype(int)
    max_level = int(levels.max())
    grids: list[dict[tuple[int, int], list[int]]] = [dict() for _ in range(max_level + 1)]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep: list[int] = []
    for i in order:
        cx, cy = centres[i]
        suppressed = False
        for level, grid in enumerate(grids):
            if not grid:
                continue
            size = cell * (2**level)
            gx, gy = int(cx // size), int(cy // size)
            # A kept box at this level may be as large as `size`; the
            # current box may be larger, so widen the search by its own extent.
            reach = 1 + int(sizes[i] // size)
            cand = [
                k
                for ox in range(-reach, reach + 1)
                for oy in range(-reach, reach + 1)
                for k in grid.get((gx + ox, gy + oy), ())
            ]
            if cand and (iou_one_to_many(boxes[i], boxes[cand]) > iou).any():
                suppressed = True
                break
        if suppressed:
            continue
        keep.append(int(i))
        size = cell * (2 ** levels[i])
        grids[levels[i]].setdefault((int(cx // size), int(cy // size)), []).append(int(i))
    return np.array(sorted(keep), dtype=np.int64)
