"""Describe a face: dlib 5-point alignment, a 150x150 chip, a quality record, a 128-d embedding.

The models are the files that `face-recognition-models` installs. Landmarks and the chip are
dlib's; the descriptor is dlib's network read from its .dat and run on gigaface's runtime
(engine/embedder.py, engine/runtime.py), about a millisecond a face instead of dlib-bin's 75.
"""
from __future__ import annotations

import importlib.util
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from gigaface.engine.embedder import Descriptor
from gigaface.engine.runtime import Runtime, choose
from gigaface.errors import GigafaceError

CHIP_SIZE = 150
CHIP_PADDING = 0.25
CROP_SIDE = 96  # px, the stored thumbnail of each face
REGION_MARGIN = 0.6  # region cut around a box for landmarks and the chip, in box sizes


def model_file(name: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise GigafaceError("the face models come from the 'face-recognition-models' package, which is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "models", name)
    if not os.path.isfile(path):
        raise GigafaceError(f"{name} not found inside the installed 'face-recognition-models' package")
    return path


@lru_cache(maxsize=1)
def shape_predictor():
    import dlib

    return dlib.shape_predictor(model_file("shape_predictor_5_face_landmarks.dat"))


@lru_cache(maxsize=1)
def recogniser():
    import dlib

    return dlib.face_recognition_model_v1(model_file("dlib_face_recognition_resnet_model_v1.dat"))


@dataclass
class Chip:
    """A face cut out of its source, ready to be embedded."""

    chip: np.ndarray  # (150, 150, 3) uint8 RGB, aligned the way dlib's descriptor expects
    quality: dict
    crop: bytes  # JPEG thumbnail


def region_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Rows/cols (x0, y0, x1, y1) to read around a face box (x, y, w, h) to describe it."""
    x, y, w, h = box
    m = REGION_MARGIN * max(w, h)
    return int(np.floor(x - m)), int(np.floor(y - m)), int(np.ceil(x + w + m)), int(np.ceil(y + h + m))


def cut_chip(region: np.ndarray, box_in_region: tuple[float, float, float, float],
             landmarks_in_region: np.ndarray) -> Chip:
    """Align and measure one face; `region` is RGB pixels around it, coordinates are local."""
    import dlib

    x, y, w, h = box_in_region
    rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
    region = np.ascontiguousarray(region)
    shape = shape_predictor()(region, rect)
    chip = dlib.get_face_chip(region, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    return Chip(np.asarray(chip), quality(region, box_in_region, landmarks_in_region), thumbnail(region, box_in_region))


def quality(region: np.ndarray, box: tuple[float, float, float, float], landmarks: np.ndarray) -> dict:
    """Size, sharpness and frontalness: what decides whether a face can be recognised."""
    x, y, w, h = box
    x0, y0 = max(0, int(x)), max(0, int(y))
    face = region[y0 : int(y + h) + 1, x0 : int(x + w) + 1]
    sharpness = 0.0
    if face.size:
        grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        # On a fixed-size copy, so a small face upscaled reads as soft, as it is to a recogniser.
        grey = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_LINEAR)
        sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return {"size": round(float(max(w, h)), 1), "sharpness": round(sharpness, 1),
            "frontalness": round(frontalness(landmarks), 3)}


def frontalness(landmarks: np.ndarray) -> float:
    """1 for a face looking at the camera, towards 0 as it turns away (from eyes and nose)."""
    left, right, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_vec = right - left
    eye_dist = float(np.hypot(*eye_vec))
    if eye_dist < 1e-3:
        return 0.0
    # Offset of the nose from the eyes' midpoint, along the eye line, in eye distances.
    offset = float(np.dot(nose - (left + right) / 2, eye_vec / eye_dist)) / eye_dist
    return float(np.clip(1 - 2 * abs(offset), 0, 1))


def thumbnail(region: np.ndarray, box: tuple[float, float, float, float]) -> bytes:
    x, y, w, h = box
    m = 0.25 * max(w, h)
    x0, y0 = max(0, int(x - m)), max(0, int(y - m))
    x1, y1 = min(region.shape[1], int(x + w + m) + 1), min(region.shape[0], int(y + h + m) + 1)
    face = region[y0:y1, x0:x1]
    if face.size == 0:
        face = np.zeros((8, 8, 3), np.uint8)
    side = max(face.shape[:2])
    if side > CROP_SIDE:
        f = CROP_SIDE / side
        face = cv2.resize(face, (max(1, round(face.shape[1] * f)), max(1, round(face.shape[0] * f))),
                          interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes()


EMBED_BATCH = 32  # faces the scan hands over at a time: two of the descriptor's CPU batches


@lru_cache(maxsize=4)
def descriptor(batch: int = 1, runtime: Runtime | None = None, threads: int = 1):
    """A descriptor of this process: dlib's network read from its .dat and run on `runtime`
    (`choose()`'s when None). Parity with dlib-bin: bench/results/parity.json (f32: at most
    4.5e-7 a component over 374 real faces)."""
    return Descriptor((runtime or choose()).for_templates(), threads=threads, batch=batch)


def embed(chips: np.ndarray) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> (n, 128) float32 embeddings, in this process: one
    chip (a reference photo) at a time, more in the descriptor's batches."""
    if len(chips) == 0:
        return np.zeros((0, 128), np.float32)
    return descriptor(1 if len(chips) == 1 else None).embed(np.ascontiguousarray(chips))


def embed_with_dlib(chips: np.ndarray) -> np.ndarray:
    """The same embeddings computed by dlib-bin itself: the reference the parity tests and
    benchmarks measure `embed` against."""
    if len(chips) == 0:
        return np.zeros((0, 128), np.float32)
    vectors = recogniser().compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.array([np.array(v) for v in vectors], np.float32)


@dataclass
class Region:
    """Pixels around one face and where the face is in them: a unit of work for a describer."""

    pixels: np.ndarray
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    embed: bool  # False for faces too small to recognise: quality and crop only
    scale: float = 1.0  # of `pixels` relative to the source, so quality reports source pixels


def describe_regions(regions: list[Region], descriptor: Descriptor | None = None
                     ) -> list[tuple[dict, np.ndarray | None, bytes]]:
    """(quality, embedding or None, JPEG crop) for each region."""
    qualities, crops, chips = [], [], []
    vectors: list[np.ndarray | None] = [None] * len(regions)
    for r in regions:
        if r.embed:
            chip = cut_chip(r.pixels, r.box, r.landmarks)
            chips.append(chip.chip)
            q, crop = chip.quality, chip.crop
        else:
            q, crop = quality(r.pixels, r.box, r.landmarks), thumbnail(r.pixels, r.box)
        q["size"] = round(max(r.box[2], r.box[3]) / r.scale, 1)
        qualities.append(q)
        crops.append(crop)
    if chips:
        embedded = iter(descriptor.embed(np.stack(chips)) if descriptor else embed(np.stack(chips)))
        vectors = [next(embedded) if r.embed else None for r in regions]
    return list(zip(qualities, vectors, crops))


class Describer:
    """Describes face regions in this process, one batch behind the caller.

    Landmarks and the chip are dlib's (about 1 ms a face, holding the GIL); the descriptor
    runs batched on every core and releases the GIL, as do the caller's pixel reads. One
    worker thread takes the batches, so the scan reads the next faces' pixels meanwhile.
    Worker processes are not needed any more: `make demo` described its 3,739 faces in
    15.7 s with two of them (onnxruntime, a thread each) and describes its 3,975 in 6.4 s
    this way (OpenVINO f32, 2 cores); and without them the Python API works from a plain
    script, as nothing is spawned.
    """

    def __init__(self, runtime: Runtime | None = None, threads: int | None = None):
        self.runtime = runtime or choose()
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.descriptor = Descriptor(self.runtime.for_templates(), threads=self.threads)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="describe")
        self.workers = 1  # batches in flight beyond the one being filled

    def submit(self, regions: list[Region]) -> Future:
        return self.executor.submit(describe_regions, regions, self.descriptor)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Describer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
