"""Parity of gigaface's own dlib runtime with dlib-bin, on real faces of ../shared/data.

    python -m bench.parity [--per-image 25] [--out bench/results/parity.json]

Faces are detected as gigaface detects reference photos (`search.detect_whole`) and cut
as `describe` cuts them (the region around the box). For each face dlib-bin gives the
reference: its 5 landmarks, its chip and its descriptor. Against it this measures
- the descriptor as an ONNX graph on dlib's chips (onnxruntime f32; OpenVINO bf16 when
  installed): per-chip |e - e_dlib|, and |d(a, b) - d_dlib(a, b)| over all pairs;
- the landmarks of the numpy shape predictor (pixels), chips cut by numpy and by OpenCV
  from dlib's landmarks, and the whole path without dlib (numpy landmarks, numpy chip,
  ONNX descriptor): the embedding's distance to dlib's end-to-end result;
- match decisions at distance 0.6: every pair of faces, and the pairs of the labelled
  single-person photos of the identity sets (identities.csv).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data import MissingData, shared_path

THRESHOLD = 0.6
MIN_FACE = 20  # px: as plan.Settings.min_embed, smaller faces are never embedded
OUT = Path(__file__).resolve().parent / "results" / "parity.json"
# (folder, glob, at most this many images): identity sets whole, crowds sampled
SOURCES = (("deepface_identities", "*.jpg", None), ("face_recognition_examples", "**/*.*", None),
           ("insightface_samples", "**/*.*", None), ("dlib_faces", "*.jpg", None),
           ("wider_face_val_subset", "WIDER_val/images/*/*.jpg", 12), ("ultralight_face_imgs", "imgs/*.jpg", 10))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class Face:
    source: str  # folder/file
    identity: str | None  # the labelled person, for the largest face of a labelled photo
    region: np.ndarray  # RGB pixels around the face
    box: tuple[float, float, float, float]  # x, y, w, h in the region


def labels(folder: str) -> dict[str, str]:
    """file -> person, for single-person photos of a folder's identities.csv."""
    try:
        path = shared_path(folder, "identities.csv")
    except MissingData:
        return {}
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            label = (row.get("identities") or row.get("identity_cluster") or row.get("identity") or "").strip()
            label = label.replace("(expected)", "").strip()
            if label and label != "unlabelled" and ";" not in label:
                out[row["file"]] = f"{folder}:{label}"
    return out


def images() -> list[tuple[str, Path]]:
    found = []
    for folder, pattern, limit in SOURCES:
        base = shared_path(folder)
        paths = sorted(p for p in base.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES
                       and "detection" not in p.name)  # pictures with boxes drawn on them
        found += [(folder, p) for p in paths[:limit]]
    return found


def collect_faces(per_image: int, sources: list[tuple[str, Path]] | None = None, log=print) -> list[Face]:
    """The largest faces (at least MIN_FACE px) of each image of `sources` (default: `images()`)."""
    from gigaface.engine import describe
    from gigaface.engine.detector import CenterFace
    from gigaface.errors import GigafaceError
    from gigaface.references import detect_whole

    detector, faces, known = CenterFace(), [], {}
    for folder, path in sources if sources is not None else images():
        known.setdefault(folder, labels(folder))
        name = path.relative_to(shared_path(folder)).as_posix()
        try:
            pixels, dets = detect_whole(str(path), detector)
        except GigafaceError as exc:
            log(f"  skipped {folder}/{name}: {exc}")
            continue
        sizes = np.maximum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        order = [i for i in np.argsort(-sizes) if sizes[i] >= MIN_FACE][:per_image]
        for rank, i in enumerate(order):
            x1, y1, x2, y2 = map(float, dets.boxes[i])
            x0, y0, rx1, ry1 = describe.region_box((x1, y1, x2 - x1, y2 - y1))
            x0, y0 = max(0, x0), max(0, y0)
            identity = known[folder].get(name) if rank == 0 else None
            faces.append(Face(f"{folder}/{name}", identity, np.ascontiguousarray(pixels[y0:ry1, x0:rx1]),
                              (x1 - x0, y1 - y0, x2 - x1, y2 - y1)))
    return faces


def dlib_reference(faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
    """dlib-bin's (n, 5, 2) landmarks and (n, 150, 150, 3) chips, as `describe.cut_chip`."""
    import dlib

    from gigaface.engine import chips as chipping
    from gigaface.engine import describe

    predictor, points, cut = describe.shape_predictor(), [], []
    for f in faces:
        shape = predictor(f.region, dlib.rectangle(*chipping.box_rect(f.box)))
        points.append([(p.x, p.y) for p in shape.parts()])
        cut.append(np.asarray(dlib.get_face_chip(f.region, shape, size=150, padding=0.25)))
    return np.array(points, np.int64), np.stack(cut)


def pair_stats(e: np.ndarray, ref: np.ndarray, pairs: np.ndarray) -> dict:
    """|d - d_dlib| over the pairs and how many match decisions at THRESHOLD differ."""
    d = np.linalg.norm(e[pairs[:, 0]] - e[pairs[:, 1]], axis=1)
    d_ref = np.linalg.norm(ref[pairs[:, 0]] - ref[pairs[:, 1]], axis=1)
    gap = np.abs(d - d_ref)
    return {"pairs": int(len(pairs)), "max": float(gap.max(initial=0)),
            "p99": float(np.percentile(gap, 99)) if len(gap) else 0.0, "mean": float(gap.mean()) if len(gap) else 0.0,
            "decisions_differ": int(((d <= THRESHOLD) != (d_ref <= THRESHOLD)).sum()),
            "matches_dlib": int((d_ref <= THRESHOLD).sum())}


def chip_stats(e: np.ndarray, ref: np.ndarray) -> dict:
    """Per-chip |e - e_dlib| (largest element) and ||e - e_dlib||."""
    worst, dist = np.abs(e - ref).max(axis=1), np.linalg.norm(e - ref, axis=1)
    return {"max_abs": float(worst.max()), "median_abs": float(np.median(worst)),
            "l2_max": float(dist.max()), "l2_p99": float(np.percentile(dist, 99)), "l2_median": float(np.median(dist))}


def embedding_variants(faces: list[Face], points: np.ndarray, dlib_chips: np.ndarray, log=print) -> dict:
    from gigaface.engine import chips as chipping
    from gigaface.engine import describe
    from gigaface.engine.embedder import Descriptor
    from gigaface.engine.runtime import choose
    from gigaface.errors import GigafaceError

    onnx = Descriptor(choose("onnxruntime"), threads=2, batch=16)
    t = time.perf_counter()
    own_chips, own_points = chipping.aligned_chips([f.region for f in faces], [f.box for f in faces])
    log(f"  numpy landmarks and chips: {(time.perf_counter() - t) / len(faces) * 1e3:.2f} ms a face")
    cut = {"numpy_from_dlib_landmarks": np.stack([chipping.chip(f.region, p) for f, p in zip(faces, points)]),
           "opencv_template_from_dlib_landmarks": np.stack([chipping.chip_opencv(f.region, p)
                                                             for f, p in zip(faces, points)]),
           "opencv_dlib_mapping_from_dlib_landmarks": np.stack([chipping.chip_opencv(f.region, p, dlib_mapping=True)
                                                                 for f, p in zip(faces, points)]),
           "numpy_landmarks_and_chip": own_chips}
    e = {"dlib": describe.embed_with_dlib(dlib_chips), "onnx_f32": onnx.embed(dlib_chips)}
    for precision in ("f32", "bf16"):
        try:
            e[f"openvino_{precision}"] = Descriptor(choose("openvino", precision), threads=2, batch=16).embed(dlib_chips)
        except GigafaceError as exc:
            log(f"  OpenVINO {precision} left out: {exc}")
    for name, c in cut.items():
        e[f"chip:{name}"] = onnx.embed(c)
    return {"embeddings": e, "chips": cut, "own_points": own_points}


def measure(faces: list[Face], log=print) -> dict:
    points, dlib_chips = dlib_reference(faces)
    v = embedding_variants(faces, points, dlib_chips, log)
    e, ref = v["embeddings"], v["embeddings"]["dlib"]
    n = len(faces)
    all_pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], np.int64).reshape(-1, 2)
    labelled = [i for i, f in enumerate(faces) if f.identity]
    id_pairs = np.array([(i, j) for a, i in enumerate(labelled) for j in labelled[a + 1:]], np.int64).reshape(-1, 2)
    same = np.array([faces[i].identity == faces[j].identity for i, j in id_pairs], bool)
    gap = np.abs(v["own_points"] - points).max(axis=(1, 2))
    out = {"faces": n, "images": len({f.source for f in faces}), "labelled_faces": len(labelled),
           "identity_pairs": {"genuine": int(same.sum()), "impostor": int((~same).sum())},
           "landmarks_numpy_vs_dlib": {"faces_identical": int((gap == 0).sum()), "max_px": int(gap.max(initial=0)),
                                       "mean_px": float(np.abs(v["own_points"] - points).mean())},
           "chips_vs_dlib": {name: {"identical": int((c == dlib_chips).all(axis=(1, 2, 3)).sum()),
                                    "mean_abs_px": float(np.abs(c.astype(np.int16) - dlib_chips).mean()),
                                    "max_abs_px": int(np.abs(c.astype(np.int16) - dlib_chips).max())}
                             for name, c in v["chips"].items()},
           "embeddings_vs_dlib": {}}
    for name, emb in e.items():
        if name != "dlib":
            out["embeddings_vs_dlib"][name] = {"per_chip": chip_stats(emb, ref),
                                               "all_pairs": pair_stats(emb, ref, all_pairs),
                                               "identity_pairs": pair_stats(emb, ref, id_pairs)}
    return out


def render(r: dict) -> str:
    lines = [f"{r['faces']} faces from {r['images']} images ({r['labelled_faces']} labelled: "
             f"{r['identity_pairs']['genuine']} genuine, {r['identity_pairs']['impostor']} impostor pairs)",
             f"landmarks numpy vs dlib: {r['landmarks_numpy_vs_dlib']['faces_identical']}/{r['faces']} faces identical, "
             f"max {r['landmarks_numpy_vs_dlib']['max_px']} px"]
    for name, c in r["chips_vs_dlib"].items():
        lines.append(f"chip {name}: {c['identical']}/{r['faces']} identical, mean |px| {c['mean_abs_px']:.3f}, "
                     f"max {c['max_abs_px']}")
    lines.append(f"{'embedding vs dlib':48s} {'chip max|e|':>11s} {'chip L2 p99':>11s} {'pair max':>9s} "
                 f"{'pair p99':>9s} {'flips all':>9s} {'flips id':>8s}")
    for name, s in r["embeddings_vs_dlib"].items():
        lines.append(f"{name:48s} {s['per_chip']['max_abs']:11.2e} {s['per_chip']['l2_p99']:11.2e} "
                     f"{s['all_pairs']['max']:9.2e} {s['all_pairs']['p99']:9.2e} "
                     f"{s['all_pairs']['decisions_differ']:9d} {s['identity_pairs']['decisions_differ']:8d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--per-image", type=int, default=25, help="largest faces kept per image")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        faces = collect_faces(args.per_image)
    except MissingData as exc:
        print(f"parity benchmark skipped: {exc}", file=sys.stderr)
        return 2
    result = measure(faces)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = "python -m bench.parity " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"\n{result['seconds']} s; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
