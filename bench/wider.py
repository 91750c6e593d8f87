"""WIDER FACE section: AP50 and recall by face size for each preset and for the plain detector.

Every image goes through the engine's own detection (`gigaface.engine.detect.detect_image`,
the passes, tiles and merge a scan uses), timed per image with the detector already
loaded. The plain baseline is what `deface` does: CenterFace once on the whole image at
its own resolution.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gigaface.engine.detections import Detections, nms
from gigaface.engine.detector import CenterFace
from gigaface.engine.plan import PRESETS, settings_for
from gigaface.engine.detect import detect_image

from . import whole_image
from .ap import ImageResult, evaluate, judge, xywh_to_xyxy
from .data import WiderImage, wider_images

PLAIN_THRESHOLD = 0.05  # the plain pass reports everything; AP sweeps the threshold anyway


def run_preset(images: list[WiderImage], preset: str, detector: CenterFace,
               log=print) -> tuple[list[ImageResult], list[float]]:
    settings = settings_for(preset)
    results, seconds = [], []
    for k, im in enumerate(images):
        if k and k % 50 == 0:
            log(f"  {preset}: {k}/{len(images)} images, {np.mean(seconds):.2f} s/image so far")
        start = time.perf_counter()
        dets = detect_image(str(im.path), settings, detector, blur_too=True)
        seconds.append(time.perf_counter() - start)
        results.append(judge(dets.boxes, dets.scores, xywh_to_xyxy(im.boxes), im.invalid))
    return results, seconds


BUCKET = 256  # inputs are padded up to a multiple of this, so a few sessions serve all images


class PlainPass:
    """CenterFace on a whole image in one inference.

    One session per padded input shape, and only the latest two kept: each holds an
    arena sized to its input, and one per WIDER image shape grew the process to 11 GB.
    """

    def __init__(self, keep: int = 2):
        self._sessions: dict[tuple[int, int], object] = {}
        self._keep = keep

    def _session(self, shape: tuple[int, int]):
        if shape not in self._sessions:
            while len(self._sessions) >= self._keep:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[shape] = whole_image.session(*shape)
        return self._sessions[shape]

    def __call__(self, rgb: np.ndarray, threshold: float = PLAIN_THRESHOLD) -> Detections:
        h, w = rgb.shape[:2]
        model = self._session((whole_image.padded(h, BUCKET), whole_image.padded(w, BUCKET)))
        return nms(whole_image.detect(model, rgb, threshold).clipped(w, h), 0.4)


def run_plain(images: list[WiderImage]) -> tuple[list[ImageResult], list[float]]:
    import cv2
    import pyvips

    plain = PlainPass()
    results, seconds = [], []
    # Visit images grouped by padded shape, so each session is made once.
    headers = [pyvips.Image.new_from_file(str(im.path)) for im in images]
    shapes = [(whole_image.padded(h.height, BUCKET), whole_image.padded(h.width, BUCKET)) for h in headers]
    order = sorted(range(len(images)), key=lambda i: shapes[i])
    by_index: dict[int, ImageResult] = {}
    for i in order:
        im = images[i]
        start = time.perf_counter()
        rgb = cv2.cvtColor(cv2.imread(str(im.path)), cv2.COLOR_BGR2RGB)
        dets = plain(rgb)
        seconds.append(time.perf_counter() - start)
        by_index[i] = judge(dets.boxes, dets.scores, xywh_to_xyxy(im.boxes), im.invalid)
    results = [by_index[i] for i in range(len(images))]
    return results, seconds


def summarise(name: str, results: list[ImageResult], seconds: list[float], operating: float,
              blur: float | None = None) -> dict:
    """AP over every detection; recall by face size at the listing point (`operating`) and,
    for a preset, at its blur point: what is listed, and what is blurred."""
    ev = evaluate(results)
    by_size = ev.recall_by_size(results, operating)
    at_blur = ev.recall_by_size(results, blur) if blur is not None else {}
    return {
        "name": name, "ap50": round(ev.ap, 4), "faces": ev.faces, "images": len(results),
        "recall_at_operating": {k: (round(v, 3), n) for k, (v, n) in by_size.items()},
        "operating_threshold": operating,
        "recall_at_blur": {k: (round(v, 3), n) for k, (v, n) in at_blur.items()},
        "blur_threshold": blur,
        "seconds_per_image": round(float(np.mean(seconds)), 3),
        "curve": {"recall": ev.recall[:: max(1, len(ev.recall) // 400)].round(4).tolist(),
                  "precision": ev.precision[:: max(1, len(ev.precision) // 400)].round(4).tolist()},
    }


def run(presets: tuple[str, ...] = PRESETS, limit: int | None = None, log=print) -> list[dict]:
    images = wider_images()[:limit]
    rows = []
    results, seconds = run_plain(images)
    rows.append(summarise("plain CenterFace, whole image at 1x (deface)", results, seconds, 0.5))
    log(_line(rows[-1]))
    detector = CenterFace()
    for preset in presets:
        results, seconds = run_preset(images, preset, detector, log)
        settings = settings_for(preset)
        rows.append(summarise(f"gigaface --preset {preset}", results, seconds, settings.score_threshold,
                              settings.blur_score_threshold))
        log(_line(rows[-1]))
    return rows


def _line(row: dict) -> str:
    sizes = ", ".join(f"{k} {v[0]:.2f}" for k, v in row["recall_at_operating"].items())
    blurred = ", ".join(f"{k} {v[0]:.2f}" for k, v in row.get("recall_at_blur", {}).items())
    return (f"{row['name']}: AP50 {row['ap50']:.3f}, {row['seconds_per_image']:.2f} s/image; recall by size listed: "
            f"{sizes}" + (f"; blurred: {blurred}" if blurred else ""))


def markdown(rows: list[dict]) -> str:
    """Recall by size at each row's listing point (and, under it, at its blur point)."""
    labels = list(rows[0]["recall_at_operating"])  # older results have the bins of their day
    head = " | ".join(f"recall {k} ({rows[0]['recall_at_operating'][k][1]})" for k in labels)
    lines = [f"| detector | point | AP50 | s / image | {head} |", "|---" * (4 + len(labels)) + "|"]
    for r in rows:
        rec = " | ".join(f"{r['recall_at_operating'][k][0]:.3f}" for k in labels)
        lines.append(f"| {r['name']} | listed (score {r['operating_threshold']:g}) | **{r['ap50']:.3f}** "
                     f"| {r['seconds_per_image']:.2f} | {rec} |")
        if r.get("recall_at_blur"):
            rec = " | ".join(f"{r['recall_at_blur'][k][0]:.3f}" for k in labels)
            lines.append(f"| | blurred (score {r['blur_threshold']:g}) | | | {rec} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = run(tuple(args.presets.split(",")), args.limit)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
