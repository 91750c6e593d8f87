"""Average precision the way the WIDER FACE evaluation computes it.

Per image, detections in score order each take the ground-truth face they overlap most;
at IoU >= 0.5 a match to an `invalid` face is neither a hit nor a false positive (it is
dropped), the first match to a valid face is a hit, and any later match to the same face
is a false positive, as is a detection that overlaps nothing enough. Precision and recall
are then swept over the score threshold for all images together and AP is the area under
the precision envelope (VOC all-point interpolation, as in the official eval).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE_BINS = ((0, 10), (10, 16), (16, 32), (32, 64), (64, float("inf")))
SIZE_LABELS = ("<10", "10-16", "16-32", "32-64", ">=64")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of x1,y1,x2,y2 boxes a (N,4) against b (M,4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


@dataclass
class ImageResult:
    """One image's detections judged against its ground truth."""

    scores: np.ndarray  # (D,) of the detections that count (matches to invalid faces dropped)
    hits: np.ndarray  # (D,) bool
    gt_sizes: np.ndarray  # (G,) larger side of each valid face
    gt_best: np.ndarray  # (G,) highest score of a detection that found the face, -inf if none


IOU_CELLS = 2_000_000  # detections x faces compared at a time: a 2-GP mosaic's ~10^5 x 2x10^4 took 24 GB at once


def best_overlaps(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray, cells: int = IOU_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the face it overlaps most and that IoU, a block of detections at a time."""
    best = np.zeros(len(pred_xyxy), np.int64)
    best_iou = np.zeros(len(pred_xyxy))
    step = max(1, cells // max(len(gt_xyxy), 1))
    for start in range(0, len(pred_xyxy), step):
        overlaps = iou_matrix(pred_xyxy[start : start + step], gt_xyxy)
        best[start : start + step] = overlaps.argmax(axis=1)
        best_iou[start : start + step] = overlaps[np.arange(len(overlaps)), best[start : start + step]]
    return best, best_iou


def judge(pred_xyxy: np.ndarray, pred_scores: np.ndarray, gt_xyxy: np.ndarray, gt_invalid: np.ndarray,
          iou: float = 0.5, cells: int = IOU_CELLS) -> ImageResult:
    pred_xyxy = np.asarray(pred_xyxy, np.float64).reshape(-1, 4)
    pred_scores = np.asarray(pred_scores, np.float64).reshape(-1)
    gt_xyxy = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    gt_invalid = np.asarray(gt_invalid, bool).reshape(-1)
    order = np.argsort(-pred_scores, kind="stable")
    pred_xyxy, pred_scores = pred_xyxy[order], pred_scores[order]
    keep = np.ones(len(pred_scores), bool)
    hits = np.zeros(len(pred_scores), bool)
    found = np.full(len(gt_xyxy), -np.inf)
    if len(gt_xyxy) and len(pred_scores):
        best, best_iou = best_overlaps(pred_xyxy, gt_xyxy, cells)
        for d in range(len(pred_scores)):
            if best_iou[d] < iou:
                continue
            g = best[d]
            if gt_invalid[g]:
                keep[d] = False
            elif found[g] == -np.inf:
                found[g] = pred_scores[d]
                hits[d] = True
    valid = ~gt_invalid
    sizes = np.maximum(gt_xyxy[:, 2] - gt_xyxy[:, 0], gt_xyxy[:, 3] - gt_xyxy[:, 1])
    return ImageResult(pred_scores[keep], hits[keep], sizes[valid], found[valid])


@dataclass
class Evaluation:
    ap: float
    faces: int
    detections: int
    precision: np.ndarray  # along descending score
    recall: np.ndarray
    scores: np.ndarray

    def recall_by_size(self, results: list[ImageResult], threshold: float = -np.inf) -> dict[str, tuple[float, int]]:
        """Recall per face-size bin for detections scoring at least `threshold`: label -> (recall, faces)."""
        sizes = np.concatenate([r.gt_sizes for r in results]) if results else np.zeros(0)
        best = np.concatenate([r.gt_best for r in results]) if results else np.zeros(0)
        out = {}
        for label, (lo, hi) in zip(SIZE_LABELS, SIZE_BINS):
            inside = (sizes >= lo) & (sizes < hi)
            n = int(inside.sum())
            found = np.isfinite(best[inside]) & (best[inside] >= threshold)  # -inf: never found
            out[label] = (float(found.mean()) if n else float("nan"), n)
        return out


def evaluate(results: list[ImageResult]) -> Evaluation:
    faces = int(sum(len(r.gt_sizes) for r in results))
    scores = np.concatenate([r.scores for r in results]) if results else np.zeros(0)
    hits = np.concatenate([r.hits for r in results]) if results else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / max(faces, 1)
    return Evaluation(voc_ap(recall, precision), faces, len(scores), precision, recall, scores)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    if not len(recall):
        return 0.0
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
