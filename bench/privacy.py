"""Privacy section: how many labelled faces stay sharp in the anonymised copy.

Each image goes through the scan's own detect and merge stages (`detect_image(...,
blur_too=True)`, the boxes a scan stores) and the real `anonymise` writer. A labelled face
counts as sharp when less than half of its box lies in the blurred mask (`blur_mask`, the
very mask the writer uses).

Three parts:
- the sweep, on tuning images (every 4th WIDER image from the first): labelled faces left
  sharp, boxes blurred and detection time for candidate blur points (score threshold x
  size floor, at native scale only or with a 2x pass for the faces under the listed sizes).
  The presets' blur points in `gigaface/plan.py` were chosen from it.
- before and now, on held-out images (every 8th from the third, none of the tuning ones):
  "before" is what a preset lists and nothing else (what exports blurred until there was a
  blur point), "now" is everything down to the preset's blur point. As a detector's-eye
  check, the `accurate` preset looks at each anonymised copy: how many labelled faces it
  still finds there. Whether the listed faces of "now" are exactly those of "before".
- the Tiny Faces selfie, which has no labels: boxes, what `accurate` still finds in the
  copy, and a sheet of crops written to the work folder for a look by eye (not committed:
  the photo may not be redistributed).

    python -m bench --sections privacy          # the default size, 15 minutes on 2 shared cores
    python -m bench.privacy [--images 30] [--preset balanced]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigaface.privacy.anonymise import anonymise, blur_mask
from gigaface.engine.detections import Detections
from gigaface.engine.detector import CenterFace
from gigaface.engine.frames import Frame
from gigaface.engine.plan import Settings, settings_for
from gigaface.engine.detect import count_tiles, detect_image
from gigaface.engine.source import probe

from .ap import iou_matrix, xywh_to_xyxy
from .data import WiderImage, shared_path, wider_images

SIZE_BUCKETS = ((0, 10), (10, 16), (16, 32), (32, 64), (64, float("inf")))
SIZE_LABELS = ("<10", "10-16", "16-32", "32-64", ">=64")
SHARP_BELOW = 0.5  # share of a labelled box inside the blurred mask under which it counts as sharp
SELFIE = ("tiny_faces_selfie", "selfie.jpg")
MOSAIC_SIZE = (16384, 6272)  # the 100-MP mosaic of sections 2-3, for the cost in tiles
# Candidate blur points: each family (size floor, 2x pass or native scale only) is run once
# at the lowest threshold; a higher threshold keeps exactly the boxes scoring above it
# (NMS visits boxes by score, so dropping the lowest-scoring ones changes nothing above).
SWEEP_THRESHOLDS = (0.45, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)
SWEEP_FAMILIES = ((16.0, False), (10.0, False), (6.0, False), (8.0, True), (4.0, True))


def tuning(images: list[WiderImage], count: int) -> list[WiderImage]:
    """Every 4th image from the first: where the blur points were chosen."""
    return [im for i, im in enumerate(images) if i % 4 == 0][:count]


def held_out(images: list[WiderImage], count: int) -> list[WiderImage]:
    """Every 8th image from the third: none of the tuning images."""
    return [im for i, im in enumerate(images) if i % 8 == 2][:count]


def points(preset: str) -> dict[str, Settings]:
    now = settings_for(preset)
    return {"before": now.listing_only(), "now": now}


def xywh(dets: Detections) -> list[tuple[float, float, float, float]]:
    return [(float(x1), float(y1), float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in dets.boxes]


def covered_share(boxes: list[tuple[float, float, float, float]], width: int, height: int,
                  labelled: np.ndarray) -> np.ndarray:
    """For each labelled box (x, y, w, h), the share of its pixels the anonymiser blurs.

    Counted on the mask's own cells (each blurred or not as a whole), weighted by how many of
    the box's pixels each cell holds: the same counts as a mask at full resolution, without
    one (a 500-MP mosaic's would take gigabytes)."""
    mask, cell, _ = blur_mask(boxes, width, height)
    blurred = mask > 0
    shares = []
    for x, y, w, h in labelled:
        x0, y0 = int(np.clip(np.floor(x), 0, width)), int(np.clip(np.floor(y), 0, height))
        x1, y1 = int(np.clip(np.ceil(x + w), 0, width)), int(np.clip(np.ceil(y + h), 0, height))
        area = (x1 - x0) * (y1 - y0)
        if not area:
            shares.append(1.0)
            continue
        cx, cy = np.arange(x0 // cell, (x1 - 1) // cell + 1), np.arange(y0 // cell, (y1 - 1) // cell + 1)
        across = np.minimum(x1, (cx + 1) * cell) - np.maximum(x0, cx * cell)  # the box's pixels in each cell
        down = np.minimum(y1, (cy + 1) * cell) - np.maximum(y0, cy * cell)
        inside = (np.outer(down, across) * blurred[cy[0] : cy[-1] + 1, cx[0] : cx[-1] + 1]).sum()
        shares.append(inside / area)
    return np.array(shares, np.float64)


def blurred_area(boxes: list[tuple[float, float, float, float]], width: int, height: int) -> float:
    """The share of the whole image the anonymiser blurs: what a false box costs."""
    return float(covered_share(boxes, width, height, np.array([[0, 0, width, height]], np.float64))[0])


def by_size(sizes: np.ndarray, flags: np.ndarray) -> dict[str, list[int]]:
    """label -> [faces flagged, faces] per size bucket."""
    return {label: [int(flags[(sizes >= lo) & (sizes < hi)].sum()), int(((sizes >= lo) & (sizes < hi)).sum())]
            for label, (lo, hi) in zip(SIZE_LABELS, SIZE_BUCKETS)}


def labelled_faces(im: WiderImage) -> np.ndarray:
    return im.boxes[~im.invalid].astype(np.float64)


def face_sizes(labelled: np.ndarray) -> np.ndarray:
    return labelled[:, 2:].max(axis=1) if len(labelled) else np.zeros(0)


# --- the sweep ---------------------------------------------------------------------------
def family_settings(preset: str, floor: float, upscale: bool) -> Settings:
    return settings_for(preset, blur_score_threshold=min(SWEEP_THRESHOLDS), blur_min_face=floor, small_face_pass=upscale)


def sweep(images: list[WiderImage], preset: str, detector: CenterFace, log=print) -> list[dict]:
    """One row per candidate point: labelled faces left sharp by size, boxes, cost."""
    sizes = np.concatenate([face_sizes(labelled_faces(im)) for im in images])
    rows = []
    for floor, upscale in SWEEP_FAMILIES:
        settings = family_settings(preset, floor, upscale)
        sharp = {t: [] for t in SWEEP_THRESHOLDS}
        boxes = dict.fromkeys(SWEEP_THRESHOLDS, 0)
        area = {t: [] for t in SWEEP_THRESHOLDS}
        seconds = 0.0
        for im in images:
            info = probe(str(im.path))
            start = time.perf_counter()
            dets = detect_image(str(im.path), settings, detector, blur_too=True)
            seconds += time.perf_counter() - start
            for t in SWEEP_THRESHOLDS:
                kept = xywh(dets.select(dets.scores > t))
                sharp[t].append(covered_share(kept, info.width, info.height, labelled_faces(im)) < SHARP_BELOW)
                boxes[t] += len(kept)
                area[t].append(blurred_area(kept, info.width, info.height))
        tiles = count_tiles([Frame("mosaic", 0, 0, *MOSAIC_SIZE)], settings)
        for t in SWEEP_THRESHOLDS:
            flags = np.concatenate(sharp[t])
            rows.append({"threshold": t, "min_face": floor, "upscale": upscale,
                         "sharp": by_size(sizes, flags), "sharp_total": int(flags.sum()),
                         "boxes_per_image": round(boxes[t] / len(images), 1),
                         "blurred_area": round(float(np.mean(area[t])), 4),
                         "detect_s_per_image": round(seconds / len(images), 3), "tiles_100mp": tiles})
        log(f"  privacy sweep: floor {floor:g}{' + 2x' if upscale else ''}: "
            + ", ".join(f"{r['threshold']:g}: {r['sharp_total']}" for r in rows[-len(SWEEP_THRESHOLDS):])
            + f" sharp of {len(sizes)}; {seconds / len(images):.2f} s/image")
    return rows


# --- before and now ----------------------------------------------------------------------
@dataclass
class Anonymised:
    """One image anonymised at one operating point."""

    dets: Detections
    listed: np.ndarray  # bool per box
    seconds: float  # detect and merge, detector loaded
    blurred_share: float  # of the image's area
    shares: np.ndarray  # per labelled face: share of its box inside the mask
    copy: Path


def anonymised(path: Path, settings: Settings, detector: CenterFace, out: Path,
               labelled: np.ndarray) -> Anonymised:
    start = time.perf_counter()
    dets = detect_image(str(path), settings, detector, blur_too=True)
    seconds = time.perf_counter() - start
    info = probe(str(path))
    boxes = xywh(dets)
    anonymise(str(path), boxes, str(out))
    return Anonymised(dets, settings.listed(dets.scores, dets.sizes), seconds,
                      blurred_area(boxes, info.width, info.height),
                      covered_share(boxes, info.width, info.height, labelled), out)


def found_again(path: Path, detector: CenterFace, labelled: np.ndarray) -> tuple[int, np.ndarray]:
    """(faces `accurate` lists in the image, which labelled faces it finds at IoU 0.5)."""
    dets = detect_image(str(path), settings_for("accurate"), detector)
    if not len(dets) or not len(labelled):
        return len(dets), np.zeros(len(labelled), bool)
    return len(dets), (iou_matrix(xywh_to_xyxy(labelled), dets.boxes.astype(np.float64)) >= 0.5).any(axis=1)


def same_boxes(a: Detections, b: Detections) -> bool:
    order = lambda d: d.boxes[np.lexsort(d.boxes.T[::-1])]  # noqa: E731
    return len(a) == len(b) and np.allclose(order(a), order(b), atol=1e-3)


def before_and_now(images: list[WiderImage], preset: str, detector: CenterFace, work: Path, log=print) -> dict:
    sizes, seen_in_original = [], []
    rows = {name: {"sharp": [], "found": [], "boxes": 0, "listed": 0, "seconds": 0.0, "area": []}
            for name in points(preset)}
    listed_same = True
    for k, im in enumerate(images):
        labelled = labelled_faces(im)
        sizes.append(face_sizes(labelled))
        seen_in_original.append(found_again(im.path, detector, labelled)[1])
        done = {}
        for name, settings in points(preset).items():
            result = done[name] = anonymised(im.path, settings, detector, work / f"wider-{k:03d}-{name}.jpg", labelled)
            row = rows[name]
            row["sharp"].append(result.shares < SHARP_BELOW)
            row["found"].append(found_again(result.copy, detector, labelled)[1])
            row["boxes"] += len(result.dets)
            row["listed"] += int(result.listed.sum())
            row["seconds"] += result.seconds
            row["area"].append(result.blurred_share)
        listed_same &= same_boxes(done["before"].dets, done["now"].dets.select(done["now"].listed))
        if (k + 1) % 10 == 0:
            log(f"  privacy: {k + 1}/{len(images)} held-out images")
    sizes = np.concatenate(sizes)
    out = {"images": len(images), "faces": int(len(sizes)), "listed_same": bool(listed_same),
           "accurate_finds_in_original": by_size(sizes, np.concatenate(seen_in_original)), "points": {}}
    for name, row in rows.items():
        settings = points(preset)[name]
        sharp, found = np.concatenate(row["sharp"]), np.concatenate(row["found"])
        out["points"][name] = {
            "threshold": settings.detect_score_threshold, "min_face": settings.detect_min_face,
            "upscale": settings.small_face_pass,
            "sharp": by_size(sizes, sharp), "sharp_total": int(sharp.sum()),
            "accurate_finds": by_size(sizes, found), "accurate_finds_total": int(found.sum()),
            "boxes_per_image": round(row["boxes"] / len(images), 1),
            "listed_per_image": round(row["listed"] / len(images), 1),
            "blurred_area": round(float(np.mean(row["area"])), 4),
            "detect_s_per_image": round(row["seconds"] / len(images), 3),
        }
    return out


def run_selfie(preset: str, detector: CenterFace, work: Path) -> dict:
    path = shared_path(*SELFIE)
    info = probe(str(path))
    original, _ = found_again(path, detector, np.zeros((0, 4)))
    result = {"size": f"{info.width}x{info.height}", "accurate_finds_in_original": original, "points": {}}
    copies = {}
    for name, settings in points(preset).items():
        done = anonymised(path, settings, detector, work / f"selfie-{name}.jpg", np.zeros((0, 4)))
        copies[name] = done.copy
        result["points"][name] = {"boxes": len(done.dets), "listed": int(done.listed.sum()),
                                  "detect_s": round(done.seconds, 2), "blurred_area": round(done.blurred_share, 4),
                                  "accurate_finds": found_again(done.copy, detector, np.zeros((0, 4)))[0]}
    result["crops"] = str(crop_sheet(path, copies, work / "selfie-crops.png"))
    return result


def crop_sheet(original: Path, copies: dict[str, Path], out: Path) -> Path:
    """Three regions of the original and of each copy, side by side, for a look by eye."""
    import cv2

    images = [cv2.imread(str(original))] + [cv2.imread(str(p)) for p in copies.values()]
    h, w = images[0].shape[:2]
    regions = [(int(w * fx), int(h * fy), 320, 220) for fx, fy in ((0.1, 0.15), (0.45, 0.35), (0.7, 0.6))]
    rows = [np.hstack([im[y : y + ch, x : x + cw] for im in images]) for x, y, cw, ch in regions]
    cv2.imwrite(str(out), np.vstack(rows))
    return out


def cost_in_tiles(preset: str) -> dict:
    """Tiles a scan of the 100-MP mosaic runs at each point: the detect stage's cost."""
    frames = [Frame("mosaic", 0, 0, *MOSAIC_SIZE)]
    return {name: count_tiles(frames, settings) for name, settings in points(preset).items()}


def run(work: Path, images: int = 30, preset: str = "balanced", log=print) -> dict:
    work = work / "privacy"
    work.mkdir(parents=True, exist_ok=True)
    detector = CenterFace()
    wider = wider_images()
    result = {"preset": preset, "sharp_below": SHARP_BELOW,
              "sweep": {"images": min(images, len(tuning(wider, images))),
                        "rows": sweep(tuning(wider, images), preset, detector, log)}}
    result["wider"] = before_and_now(held_out(wider, images), preset, detector, work, log)
    result["mosaic_tiles"] = cost_in_tiles(preset)
    log(f"privacy: {json.dumps(result['wider']['points'])}")
    result["selfie"] = run_selfie(preset, detector, work)
    log(f"privacy selfie: {json.dumps(result['selfie']['points'])}")
    return result


# --- the report --------------------------------------------------------------------------
def _point(p: dict) -> str:
    return f"> {p['threshold']:g}, {p['min_face']:g} px{' + 2x' if p['upscale'] else ''}"


def markdown(section: dict) -> str:
    return "\n".join([sweep_table(section), "", before_now_table(section), "", selfie_line(section)])


def sweep_table(section: dict) -> str:
    rows = section["sweep"]["rows"]
    faces = sum(n for _, n in rows[0]["sharp"].values())
    lines = [f"Sweep on {section['sweep']['images']} tuning images ({faces} labelled faces): labelled faces "
             "left sharp (boxes blurred per image) at each score threshold.", "",
             "| size floor | " + " | ".join(f"> {t:g}" for t in SWEEP_THRESHOLDS) + " | detect s / image | tiles at 100 MP |",
             "|---" * (len(SWEEP_THRESHOLDS) + 3) + "|"]
    for floor, upscale in SWEEP_FAMILIES:
        family = [r for r in rows if r["min_face"] == floor and r["upscale"] == upscale]
        if not family:
            continue
        cells = " | ".join(f"{r['sharp_total']} ({r['boxes_per_image']:g})" for r in family)
        lines.append(f"| {floor:g} px{' + 2x pass' if upscale else ', native only'} | {cells} "
                     f"| {family[0]['detect_s_per_image']:.2f} | {family[0]['tiles_100mp']:,} |")
    return "\n".join(lines)


def before_now_table(section: dict) -> str:
    wider, points_ = section["wider"], section["wider"]["points"]
    labels = " | ".join(f"{k} ({wider['accurate_finds_in_original'][k][1]})" for k in SIZE_LABELS)
    lines = [f"Held out: {wider['images']} other images, {wider['faces']} labelled faces. Sharp faces by size "
             f"(faces in the bucket); the listed faces of both points are {'the same' if wider['listed_same'] else 'NOT the same'}.", "",
             f"| point (score, size floor) | sharp: {labels} | all | boxes / image (listed) | blurred area "
             "| `accurate` finds in the copy | detect s / image |",
             "|---" * (7 + len(SIZE_LABELS) - 1) + "|"]
    for name, p in points_.items():
        sharp = " | ".join(f"{p['sharp'][k][0]}" for k in SIZE_LABELS)
        lines.append(f"| {name} ({_point(p)}) | {sharp} | **{p['sharp_total']}** "
                     f"({100 * p['sharp_total'] / max(wider['faces'], 1):.1f} %) | {p['boxes_per_image']} "
                     f"({p['listed_per_image']}) | {100 * p['blurred_area']:.1f} % | {p['accurate_finds_total']} "
                     f"| {p['detect_s_per_image']:.2f} |")
    original = sum(v[0] for v in wider["accurate_finds_in_original"].values())
    lines.append(f"| (the original) | {' | '.join(str(v[0]) for v in wider['accurate_finds_in_original'].values())} "
                 f"| | | | {original} | |")
    return "\n".join(lines)


def selfie_line(section: dict) -> str:
    s, tiles = section["selfie"], section["mosaic_tiles"]
    b, n = s["points"]["before"], s["points"]["now"]
    return (f"The Tiny Faces selfie ({s['size']}, no labels): `accurate` finds {s['accurate_finds_in_original']} faces "
            f"in the original, {b['accurate_finds']} in the copy blurred before ({b['boxes']} boxes, "
            f"{100 * b['blurred_area']:.1f} % of the image, detection {b['detect_s']} s) and {n['accurate_finds']} "
            f"now ({n['boxes']} boxes, {n['listed']} of them listed, {100 * n['blurred_area']:.1f} %, "
            f"detection {n['detect_s']} s). A scan of the 100-MP mosaic runs {tiles['before']:,} tiles before, "
            f"{tiles['now']:,} now ({tiles['now'] / tiles['before']:.2f}x the detection).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    section = run(args.work, args.images, args.preset)
    print(markdown(section))


if __name__ == "__main__":
    main()
