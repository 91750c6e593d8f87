"""dlib's face descriptor as an ONNX graph (`dlib_net.model_bytes`), run on a `Runtime`.

The graph is built in memory from dlib's own .dat; nothing is written or downloaded.
Batches have a fixed size (the last one is padded), so OpenVINO compiles one static shape
and onnxruntime reuses its buffers.
"""
from __future__ import annotations

import numpy as np

from gigaface.engine.dlib import network as dlib_net
from gigaface.engine.runtime import Runtime, choose, compile_lanes
from gigaface.errors import GigafaceError

CPU_BATCH = 16  # measured best with two threads on OpenVINO (bench/results/engine_speed.json)
GPU_BATCH = 64


class Descriptor:
    """(n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32 embeddings, as dlib computes them."""

    def __init__(self, runtime: Runtime | None = None, threads: int = 1, batch: int | None = None,
                 model: bytes | None = None):
        self.runtime = runtime or choose()
        self.batch = (GPU_BATCH if self.runtime.gpu else CPU_BATCH) if batch is None else batch
        if self.batch < 1 or threads < 1:
            raise GigafaceError("batch and threads must be at least 1")
        model = model or dlib_net.model_bytes()
        (self._run,) = compile_lanes(model, self.runtime, 1, threads,
                                     (self.batch, dlib_net.CHIP, dlib_net.CHIP, 3))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (dlib_net.CHIP, dlib_net.CHIP, 3) or chips.dtype != np.uint8:
            raise GigafaceError(f"face chips must be uint8 (n, {dlib_net.CHIP}, {dlib_net.CHIP}, 3), "
                                f"not {chips.dtype} {chips.shape}")
        out = np.zeros((len(chips), 128), np.float32)
        padded = np.zeros((self.batch, *chips.shape[1:]), np.uint8)
        for at in range(0, len(chips), self.batch):
            part = chips[at : at + self.batch]
            padded[: len(part)] = part
            padded[len(part):] = 0
            out[at : at + len(part)] = self._run(padded)[0][: len(part)]
        return out
