"""The gigapixel mosaic section: gigaface's full scan, search for planted people, the
detector floor, and the side-by-side with SAHI and the plain whole-image pass.

Every tool runs in a fresh process so that its time and peak memory are its own; the full
scan runs through the real CLI, as a user would.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gigaface.engine.plan import settings_for
from gigaface.search import DEFAULT_MATCH_THRESHOLD

from .ap import evaluate, iou_matrix, judge, xywh_to_xyxy
from .mosaic import Mosaic
from .peers import DEFAULT_PEERS, compare, measured_with_timeout


def xyxy(faces) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 of library faces, whose boxes are x, y, w, h."""
    return xywh_to_xyxy([f.box for f in faces])


def tile_latency(repeats: int = 30) -> float:
    """Median seconds for one 640x640 tile: the detector alone, one session on every core."""
    from gigaface.engine.detector import CenterFace

    detector = CenterFace(streams=1)
    tile = np.random.default_rng(0).integers(0, 255, (1, 640, 640, 3), dtype=np.uint8)
    for _ in range(3):
        detector.detect(tile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.detect(tile)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gigaface_detect(image_path: str, preset: str) -> dict:
    """Detection only (the scan's detect and merge stages), for the side-by-side with peers."""
    from gigaface.engine.detect import detect_image

    dets = detect_image(image_path, settings_for(preset), blur_too=True)
    return {"boxes": dets.boxes, "scores": dets.scores}


def side_by_side(mosaic: Mosaic, presets: tuple[str, ...], peers: tuple[str, ...] = DEFAULT_PEERS,
                 timeout_s: float | None = 3600, log=print) -> list[dict]:
    """gigaface (detection only, each preset, on the JPEG and the tiled TIFF) and each peer on
    the same image, the same model and the same machine."""
    rows = []
    sources = [("JPEG", mosaic.jpeg)] + ([("tiled TIFF", mosaic.tiff)] if mosaic.tiff else [])
    for preset in presets:
        for label, path in sources if preset == "balanced" else sources[:1]:
            outcome = measured_with_timeout("bench.panorama:gigaface_detect",
                                            {"image_path": str(path), "preset": preset}, timeout_s)
            row = {"name": f"gigaface {preset} ({label})", "skipped": None}
            if isinstance(outcome, str):
                row.update(skipped=outcome, wall_s=float("nan"), peak_rss_mb=float("nan"), ap=float("nan"), detections=0)
            else:
                value, row["wall_s"], row["peak_rss_mb"] = outcome
                judged = [judge(value["boxes"], value["scores"], mosaic.boxes, mosaic.invalid)]
                row["ap"] = evaluate(judged).ap
                row["detections"] = len(value["scores"])
                row["recall"] = recall_by_size(judged, settings_for(preset).blur_score_threshold)
            rows.append(row)
            log(_row_line(row))
    for row in compare(str(mosaic.jpeg), mosaic.boxes, mosaic.invalid, configs=peers, timeout_s=timeout_s):
        rows.append(row)
        log(_row_line(row))
    return rows


def _row_line(row: dict) -> str:
    if row.get("skipped"):
        return f"{row['name']}: skipped ({row['skipped']})"
    return (f"{row['name']}: {row['wall_s']:.1f} s, peak {row['peak_rss_mb']:.0f} MB, AP50 {row['ap']:.3f}, "
            f"{row['detections']:,} detections")


def ratios(rows: list[dict]) -> list[dict]:
    """gigaface / peer for time and peak memory, and the AP difference, for every pair."""
    ours = [r for r in rows if r["name"].startswith("gigaface") and not r.get("skipped")]
    theirs = [r for r in rows if not r["name"].startswith("gigaface") and not r.get("skipped")]
    return [{"ours": a["name"], "peer": b["name"],
             "time": a["wall_s"] / b["wall_s"], "memory": a["peak_rss_mb"] / b["peak_rss_mb"],
             "ap_delta": a["ap"] - b["ap"]} for a in ours for b in theirs]


def full_scan(mosaic: Mosaic, db: Path, preset: str = "balanced") -> dict:
    """`gigaface scan` of the mosaic in its own process; AP from the faces it stored."""
    from gigaface.library.store import Library

    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).with_name("gigaface")), "scan", str(mosaic.jpeg), "--db", str(db),
           "--preset", preset, "--json", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (summary,) = json.loads(done.stdout)
    library = Library(str(db))
    faces = library.faces.all(library.captures.all()[-1].id, include_unlisted=True)  # what is blurred
    boxes = xyxy(faces)
    scores = np.array([f.score for f in faces])
    judged = [judge(boxes, scores, mosaic.boxes, mosaic.invalid)]
    ev = evaluate(judged)
    settings = settings_for(preset)
    listed = [judge(boxes[[f.listed for f in faces]], scores[[f.listed for f in faces]], mosaic.boxes, mosaic.invalid)]
    mp = mosaic.width * mosaic.height / 1e6
    return {
        "preset": preset, "megapixels": round(mp, 1), "size": f"{mosaic.width}x{mosaic.height}",
        "faces_truth": int((~mosaic.invalid).sum()), "faces": summary["faces"], "embedded": summary["embedded"],
        "wall_s": round(wall, 1), "detect_s": summary["detect_seconds"], "describe_s": summary["describe_seconds"],
        "mp_per_s": round(mp / max(summary["detect_seconds"], 1e-9), 2),
        "embedded_per_s": round(summary["embedded"] / max(summary["describe_seconds"], 1e-9), 1),
        "peak_main_mb": summary["peak_rss_mb"], "runtime": " ".join(summary["runtime"].values()),
        "ap": round(ev.ap, 4), "db": str(db), "stored": summary["stored"],
        "recall_listed": recall_by_size(listed), "recall_stored": recall_by_size(judged, settings.blur_score_threshold),
        "blurred": blurred_by_size([f.box for f in faces], mosaic),
    }


def blurred_by_size(stored: list[tuple[float, float, float, float]], mosaic: Mosaic) -> dict:
    """label -> [share, faces]: the valid faces at least half blurred in an anonymised copy
    made from the `stored` boxes (x, y, w, h): the privacy section's yardstick, which a box
    too loose or too tight for IoU 0.5 still meets."""
    from .privacy import SHARP_BELOW, by_size, covered_share

    truth = mosaic.boxes[~mosaic.invalid].astype(np.float64)
    labelled = np.c_[truth[:, :2], truth[:, 2:] - truth[:, :2]]
    covered = covered_share(stored, mosaic.width, mosaic.height, labelled) >= SHARP_BELOW
    return {label: [round(blurred / faces, 3) if faces else float("nan"), faces]
            for label, (blurred, faces) in by_size(labelled[:, 2:].max(axis=1), covered).items()}


def recall_by_size(judged: list, threshold: float = -np.inf) -> dict:
    """label -> [recall, faces] of the judged detections scoring at least `threshold`."""
    return {k: [round(v, 3), n] for k, (v, n) in evaluate(judged).recall_by_size(judged, threshold).items()}


def floor(mosaic: Mosaic, detect_s: float, latency: float, preset: str = "balanced") -> dict:
    from gigaface.engine.frames import Frame
    from gigaface.engine.detect import count_tiles

    tiles = count_tiles([Frame(str(mosaic.jpeg), 0, 0, mosaic.width, mosaic.height)], settings_for(preset))
    return {"tiles": tiles, "latency_ms": round(latency * 1000, 1), "floor_s": round(tiles * latency, 1),
            "detect_s": detect_s, "ratio": round(tiles * latency / detect_s, 3)}


def search(mosaic: Mosaic, db: Path, threshold: float = DEFAULT_MATCH_THRESHOLD) -> list[dict]:
    """For each planted person and each *other* photo of them: the planted face's rank and
    how many other faces fall under the threshold."""
    from gigaface.api import references
    from gigaface.engine.detector import CenterFace
    from gigaface.library.store import Library
    from gigaface.search import rank

    library = Library(str(db))
    capture = library.captures.all()[-1].id
    faces = library.faces.all(capture)
    boxes = xyxy(faces)
    detector = CenterFace()
    rows = []
    for planted in mosaic.planted:
        overlap = iou_matrix(np.array([planted.box], np.float64), boxes)[0] if len(boxes) else np.zeros(0)
        hit = int(overlap.argmax()) if len(overlap) and overlap.max() >= 0.3 else None
        face = faces[hit] if hit is not None else None
        size = round(planted.box[3] - planted.box[1])
        for query in planted.queries:
            row = {"identity": planted.identity.split(":", 1)[1], "planted": planted.photo.name,
                   "query": query.name, "face_px": size}
            if face is None or not face.embedded:
                row.update(rank=None, distance=None, others_under=None,
                           why="not detected" if face is None else "detected, too small to embed")
            else:
                (ref,) = references([str(query)], detector)
                matches = rank(library, [ref], [capture])
                position = next(m for m in matches if m.face.id == face.id)
                row.update(rank=position.rank, distance=round(position.distance, 3),
                           others_under=sum(1 for m in matches if m.match and m.face.id != face.id), why="")
            rows.append(row)
    return rows
