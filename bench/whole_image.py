"""CenterFace once on a whole image, no tiles: the plain baseline of the benchmarks and
the per-slice model of the SAHI wrapper."""
from __future__ import annotations

import numpy as np

from gigaface.engine.detections import Detections
from gigaface.engine.detector import TILES_INPUT, decode, prepared_model


def session(height: int, width: int, threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime session taking one (height, width) RGB uint8 input; `threads=None`
    leaves onnxruntime's own choice."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(prepared_model(1, height, width), sess_options=options,
                                providers=providers or ["CPUExecutionProvider"])


def padded(n: int, multiple: int = 32) -> int:
    return -(-n // multiple) * multiple


def detect(model, rgb: np.ndarray, threshold: float) -> Detections:
    """Detections in `rgb`'s pixels (before NMS); `rgb` is zero-padded to the session's input,
    which must be at least as large."""
    _, height, width, _ = model.get_inputs()[0].shape
    tiles = np.zeros((1, height, width, 3), np.uint8)
    tiles[0, : rgb.shape[0], : rgb.shape[1]] = rgb
    heat, scale, offset, lms = model.run(None, {TILES_INPUT: tiles})
    return decode(heat[0], scale[0], offset[0], lms[0], threshold)
