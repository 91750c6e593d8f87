"""The merge stage: all passes and frames of a capture into one face set, in panorama pixels."""
from __future__ import annotations

import numpy as np

from gigaface.engine.detections import Detections, nms_indices
from gigaface.engine.frames import Frame
from gigaface.engine.plan import Settings


def merge(frames: list[Frame], frame_of: np.ndarray, dets: Detections, settings: Settings
          ) -> tuple[np.ndarray, Detections]:
    """All passes and frames into one face set, in panorama pixels: every face down to the
    blur point (`settings.listed` tells which are listed)."""
    if len(frames) > 1 and len(dets):
        keep = owned_by_frame(frames, frame_of, dets.centres)
        frame_of, dets = frame_of[keep], dets.select(keep)
    # Boxes under the detection floor were kept only to say where a seeded pass should look.
    keep = (dets.sizes >= settings.detect_min_face) & (dets.scores > settings.detect_score_threshold)
    frame_of, dets = frame_of[keep], dets.select(keep)
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
