"""dlib's face descriptor as an ONNX graph (`dlib_net.model_bytes`), run by onnxruntime or OpenVINO.

Both take the graph in memory; nothing is written or downloaded. Batches have a fixed
size (the last one is padded), so OpenVINO compiles one static shape and onnxruntime
reuses its buffers.
"""
from __future__ import annotations

import io

import numpy as np

from gigaface.engine.dlib import network as dlib_net
from gigaface.errors import GigafaceError

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")


class Descriptor:
    """(n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32 embeddings, as dlib computes them."""

    def __init__(self, runtime: str = "onnxruntime", threads: int = 1, batch: int = 16,
                 precision: str = "f32", model: bytes | None = None):
        if runtime not in RUNTIMES:
            raise GigafaceError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS or (runtime == "onnxruntime" and precision != "f32"):
            raise GigafaceError(f"precision {precision!r} is not available with {runtime}")
        if batch < 1 or threads < 1:
            raise GigafaceError("batch and threads must be at least 1")
        self.batch = batch
        model = model or dlib_net.model_bytes()
        self._run = (_onnxruntime(model, threads) if runtime == "onnxruntime"
                     else _openvino(model, threads, batch, precision))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (dlib_net.CHIP, dlib_net.CHIP, 3) or chips.dtype != np.uint8:
            raise GigafaceError(f"face chips must be uint8 (n, {dlib_net.CHIP}, {dlib_net.CHIP}, 3), "
                                f"not {chips.dtype} {chips.shape}")
        out = np.zeros((len(chips), 128), np.float32)
        for at in range(0, len(chips), self.batch):
            part = chips[at : at + self.batch]
            padded = np.zeros((self.batch, *part.shape[1:]), np.uint8)
            padded[: len(part)] = part
            out[at : at + len(part)] = self._run(padded)[: len(part)]
        return out


def _onnxruntime(model: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda chips: session.run([dlib_net.OUTPUT], {dlib_net.INPUT: chips})[0]


def openvino_core():
    try:
        import openvino as ov
    except ImportError:
        raise GigafaceError("OpenVINO is not installed (it has wheels for x86-64 and 64-bit ARM only); "
                            "use the onnxruntime runtime") from None
    return ov, ov.Core()


def _openvino(model: bytes, threads: int, batch: int, precision: str):
    ov, core = openvino_core()
    graph = ov.convert_model(io.BytesIO(model))
    graph.reshape({dlib_net.INPUT: [batch, dlib_net.CHIP, dlib_net.CHIP, 3]})
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise GigafaceError("this CPU has no bfloat16 support; use precision f32")
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": precision,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda chips: request.infer({0: chips})[compiled.output(0)].copy()
