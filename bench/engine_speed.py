"""Speed of the descriptor and the detector on this machine's CPU, by runtime.

    python -m bench.engine_speed [--repeat 5] [--out bench/results/engine_speed.json]

- alignment: dlib-bin's 5-point landmarks and get_face_chip against the numpy path
  (`chips.aligned_chips`), ms a face over the crowd photo's faces;
- dlib's descriptor: dlib-bin (one core) against the ONNX graph read from the same file
  (`dlib_net`) under onnxruntime f32 and OpenVINO f32 / bf16, batch 1, 16, 64, 1 and 2
  threads; ms a face, best of `--repeat` runs of 64 chips (a shared machine is noisy: the
  load average is recorded beside each number);
- CenterFace (`detector.prepared_model(1, 640, 640)`): ms a 640x640 tile under the same
  runtimes, the largest difference of each output map against onnxruntime's on real
  tiles, and the detections of a real crowd photo under each;
- tile size: the scan's detector (`detector.CenterFace`, a lane a core) on square tiles of
  640 to 1024 px cut from the Tiny Faces selfie, under OpenVINO f32 and bf16: ms a tile,
  ms a megapixel of tile, and ms a megapixel of *image* at the native pass's margin (a
  larger tile overlaps its neighbours less), with the detector's own peak RSS from a fresh
  process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "engine_speed.json"
FACES = 64
CROWD = ("ultralight_face_imgs", "imgs", "17.jpg")
SELFIE = ("tiny_faces_selfie", "selfie.jpg")  # 2048x1150: room for 1024-px tiles
TILE_SIZES = (640, 768, 1024)


def best_ms(run, repeat: int) -> float:
    run()  # warm-up: first-call allocations and, for OpenVINO, lazy kernel choices
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def crowd_faces(n: int) -> tuple[list[np.ndarray], list[tuple]]:
    """Regions and boxes (as `describe` cuts them) of up to n faces of the crowd photo."""
    from bench.data import shared_path
    from gigaface.engine import describe
    from gigaface.references import detect_whole

    pixels, dets = detect_whole(str(shared_path(*CROWD)))
    regions, boxes = [], []
    for x1, y1, x2, y2 in dets.boxes[:n]:
        x0, y0, rx1, ry1 = describe.region_box((x1, y1, x2 - x1, y2 - y1))
        x0, y0 = max(0, x0), max(0, y0)
        regions.append(np.ascontiguousarray(pixels[y0:ry1, x0:rx1]))
        boxes.append((x1 - x0, y1 - y0, x2 - x1, y2 - y1))
    return regions, boxes


def alignment_speeds(regions: list[np.ndarray], boxes: list[tuple], repeat: int) -> list[dict]:
    """ms a face for dlib-bin's landmarks + get_face_chip against the numpy path."""
    import dlib

    from gigaface.engine import chips
    from gigaface.engine import describe
    from gigaface.engine.dlib import shape as dlib_shape

    predictor, model = describe.shape_predictor(), dlib_shape.shape_model()

    def with_dlib():
        for region, box in zip(regions, boxes):
            shape = predictor(region, dlib.rectangle(*chips.box_rect(box)))
            dlib.get_face_chip(region, shape, size=150, padding=0.25)

    def landmarks_only():
        dlib_shape.landmarks_in_regions(model, regions, [chips.box_rect(b) for b in boxes])

    n = len(regions)
    return [{"path": name, "ms_per_face": best_ms(run, repeat) / n, "faces": n, "load": os.getloadavg()[0]}
            for name, run in (("dlib-bin landmarks + chip", with_dlib),
                              ("numpy landmarks + chip", lambda: chips.aligned_chips(regions, boxes)),
                              ("numpy landmarks only", landmarks_only))]


def descriptor_speeds(chips: np.ndarray, repeat: int, log=print) -> list[dict]:
    from gigaface.engine import describe
    from gigaface.engine.embedder import Descriptor
    from gigaface.errors import GigafaceError

    rows = [{"runtime": "dlib-bin", "precision": "f32", "batch": 16, "threads": 1,
             "ms_per_face": best_ms(lambda: describe.embed_with_dlib(chips[:16]), max(1, repeat // 2)) / 16,
             "load": os.getloadavg()[0]}]
    log(f"  {rows[-1]}")
    for runtime in runtimes():
        for threads in (1, 2):
            for batch in (1, 16, 64):
                try:
                    d = Descriptor(runtime, threads=threads, batch=batch)
                except GigafaceError as exc:
                    log(f"  {runtime}: {exc}")
                    break
                ms = best_ms(lambda: d.embed(chips), repeat) / len(chips)
                rows.append({"runtime": runtime.backend, "precision": runtime.precision, "batch": batch,
                             "threads": threads, "ms_per_face": ms, "load": os.getloadavg()[0]})
                log(f"  {rows[-1]}")
    return rows


def runtimes() -> list:
    """onnxruntime f32, and OpenVINO f32 and bf16 where this machine has them."""
    from gigaface.engine.runtime import choose
    from gigaface.errors import GigafaceError

    found = [choose("onnxruntime")]
    for precision in ("f32", "bf16"):
        try:
            found.append(choose("openvino", precision))
        except GigafaceError:
            pass
    return found


class LaneCenterFace:
    """CenterFace's prepared graph on one lane of a runtime, behind gigaface's Detector protocol."""

    def __init__(self, runtime, threads: int, tile: int = 640):
        from gigaface.engine.detector import prepared_model
        from gigaface.engine.runtime import compile_lanes

        self.tile = tile
        (self.run,) = compile_lanes(prepared_model(1, tile, tile), runtime, 1, threads, (1, tile, tile, 3))
        self.buffer = np.zeros((1, tile, tile, 3), np.uint8)

    def infer(self, tile: np.ndarray) -> list[np.ndarray]:
        self.buffer[0] = tile
        return [o[0] for o in self.run(self.buffer)]

    def detect_tiles(self, jobs, fill, threshold: float = 0.35):
        from gigaface.engine.detector import decode

        out = []
        for job in jobs:
            fill(job, self.buffer[0])
            out.append(decode(*self.infer(self.buffer[0]), score_threshold=threshold))
        return out


def real_tiles() -> list[np.ndarray]:
    from bench.data import shared_path
    from gigaface.engine.source import as_rgb8, open_sequential

    pixels = as_rgb8(open_sequential(str(shared_path(*CROWD)))).numpy()
    return [np.ascontiguousarray(pixels[y : y + 640, x : x + 640]) for y, x in ((0, 0), (200, 900))]


def detector_speeds(repeat: int, log=print) -> dict:
    from gigaface.engine.plan import settings_for
    from gigaface.engine.detect import detect_image
    from bench.data import shared_path

    tiles = real_tiles()
    ort = runtimes()[0]
    reference = LaneCenterFace(ort, 1)
    ref_maps = [reference.infer(t) for t in tiles]
    photo = str(shared_path(*CROWD))
    ref_dets = detect_image(photo, settings_for("balanced"), reference)
    rows, agreement = [], {}
    for runtime in runtimes():
        for threads in (1, 2):
            engine = LaneCenterFace(runtime, threads)
            rows.append({"runtime": runtime.backend, "precision": runtime.precision, "threads": threads,
                         "ms_per_tile": best_ms(lambda: engine.infer(tiles[0]), repeat), "load": os.getloadavg()[0]})
            log(f"  {rows[-1]}")
        if runtime != ort:
            maps = [engine.infer(t) for t in tiles]
            agreement[f"{runtime.backend} {runtime.precision}"] = {
                "max_abs_heatmap": float(max(np.abs(m[0] - r[0]).max() for m, r in zip(maps, ref_maps))),
                "max_abs_any_output": float(max(np.abs(a - b).max() for m, r in zip(maps, ref_maps)
                                                for a, b in zip(m, r))),
                **same_detections(detect_image(photo, settings_for("balanced"), engine), ref_dets)}
            log(f"  {runtime} vs onnxruntime: {agreement[f'{runtime.backend} {runtime.precision}']}")
    return {"tiles": rows, "openvino_vs_onnxruntime": agreement, "crowd_photo": "/".join(CROWD),
            "faces_onnxruntime": int(len(ref_dets))}


def tile_size_speeds(repeat: int, log=print) -> list[dict]:
    """The scan's detector on tiles of each size: what a megapixel of image costs at the
    native pass's margin, and what the detector holds in memory."""
    from bench.data import shared_path
    from bench.measure import measured
    from gigaface.engine.detector import CenterFace
    from gigaface.engine.plan import NATIVE_MARGIN
    from gigaface.engine.runtime import choose
    from gigaface.engine.source import as_rgb8, open_sequential
    from gigaface.errors import GigafaceError

    pixels = as_rgb8(open_sequential(str(shared_path(*SELFIE)))).numpy()
    margin = NATIVE_MARGIN["balanced"]
    rows = []
    for precision in ("f32", "bf16"):
        try:
            runtime = choose("openvino", precision)
        except GigafaceError:
            continue
        for tile in TILE_SIZES:
            detector = CenterFace(tile, runtime=runtime)
            # As many pixels per run whatever the size: 16 tiles of 640, from all over the photo.
            count = max(2, round(16 * (640 / tile) ** 2))
            ys = np.linspace(0, pixels.shape[0] - tile, count).astype(int)
            xs = np.linspace(0, pixels.shape[1] - tile, count).astype(int)[::-1]
            tiles = np.stack([pixels[y : y + tile, x : x + tile] for y, x in zip(ys, xs)])
            ms = best_ms(lambda: detector.detect(tiles, 0.05), repeat) / count
            per_mp = ms / (tile * tile / 1e6)
            overlap = (tile / (tile - 2 * margin)) ** 2
            peak = measured("bench.engine_speed:detector_at_work", tile, precision).peak_rss_mb
            rows.append({"runtime": runtime.backend, "precision": precision, "tile": tile,
                         "lanes": len(detector.streams), "ms_per_tile": ms, "ms_per_tile_mp": per_mp,
                         "native_margin": margin, "overlap": overlap, "ms_per_image_mp": per_mp * overlap,
                         "detector_peak_rss_mb": round(peak), "load": os.getloadavg()[0]})
            log(f"  {rows[-1]}")
    return rows


def detector_at_work(tile: int, precision: str) -> None:
    """The scan's detector made and run on two tiles: the body whose peak `tile_size_speeds`
    measures in a fresh process."""
    from gigaface.engine.detector import CenterFace
    from gigaface.engine.runtime import choose

    CenterFace(tile, runtime=choose("openvino", precision)).detect(np.zeros((2, tile, tile, 3), np.uint8))


def same_detections(dets, ref) -> dict:
    """How many faces each found, and how many of onnxruntime's have a twin (IoU 0.5, 0.9)."""
    a, b = dets.boxes, ref.boxes
    if not len(a) or not len(b):
        return {"faces": int(len(a)), "matched_iou_0.5": 0, "matched_iou_0.9": 0}
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area_a, area_b = ((x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1]) for x in (a, b))
    best = (inter / (area_a[:, None] + area_b[None, :] - inter)).max(axis=0)
    return {"faces": int(len(a)), "matched_iou_0.5": int((best >= 0.5).sum()), "matched_iou_0.9": int((best >= 0.9).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # dlib-bin on one core, as describe's workers run it
    from bench.data import MissingData

    try:
        from gigaface.engine.chips import aligned_chips

        regions, boxes = crowd_faces(FACES)
        chips = aligned_chips(regions, boxes)[0]
        result = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_at_start": os.getloadavg()[0],
                  "alignment": alignment_speeds(regions, boxes, args.repeat),
                  "descriptor": descriptor_speeds(chips[np.arange(FACES) % len(chips)], args.repeat),
                  "centerface": detector_speeds(args.repeat),
                  "centerface_tile_sizes": tile_size_speeds(args.repeat)}
    except MissingData as exc:
        print(f"engine speed benchmark skipped: {exc}", file=sys.stderr)
        return 2
    result["command"] = "python -m bench.engine_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
