"""The actor on each node: one worker slot (a CPU core, or a GPU), its models loaded once.

Made a Ray actor by the pool (`ray.remote(FaceWorker)`), so this module needs no Ray to be
imported, and Ray finds the class by its module path on every node: gigaface must be
installed there. Every method is the engine's code on what the driver sends or names:

    detect_unit   one unit (a band of a stripe) the driver read and shipped through the
                  object store
    detect_bands  units this worker reads itself from a file every node sees (a frame, or
                  rows of a tiled TIFF)
    describe      a batch of face regions: landmarks, chip, quality, crop, embedding

A CPU slot runs one single-threaded detector lane, as each lane of a local scan does, so
its boxes are the local scan's to the bit. A GPU slot batches tiles on CUDA when the
node's onnxruntime has it.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable

import numpy as np

from gigaface import process
from gigaface.engine.describe import Region, describe_regions
from gigaface.engine.detect import PassGrid, Unit, detect_bands, detect_unit
from gigaface.engine.detector import CenterFace
from gigaface.engine.embedder import Descriptor
from gigaface.engine.plan import Pass, Settings
from gigaface.engine.runtime import Runtime, choose, openvino_available
from gigaface.engine.source import probe
from gigaface.errors import GigafaceError
from gigaface.cluster import versions


def slot_runtime(chosen: Runtime, has_gpu: bool, on_cpu: Callable[[], Runtime]) -> tuple[Runtime, str | None]:
    """The runtime one slot runs on, from `choose()`'s answer on its node, and a note when
    that is not what the slot was given.

    A CPU slot on a node with CUDA leaves the GPUs to the GPU slots (Ray hides them from
    it anyway): it runs on `on_cpu()`. A GPU slot whose runtime has no CUDA runs on the
    CPU and says why."""
    if chosen.gpu and not has_gpu:
        return on_cpu(), None
    if has_gpu and not chosen.gpu:
        why = ("the openvino runtime runs on the CPU" if chosen.backend == "openvino"
               else "onnxruntime here has no CUDA provider (pip install onnxruntime-gpu)")
        return chosen, f"given a GPU, but {why}: detecting on the CPU"
    return chosen, None


class FaceWorker:
    def __init__(self, runtime: str | None, precision: str | None, tile: int, cpus: int):
        process.configure_process()
        import ray

        self.gpus = [str(g) for g in ray.get_gpu_ids()]
        self.runtime, self.note = slot_runtime(
            choose(runtime, precision), bool(self.gpus),
            lambda: choose("openvino", precision) if openvino_available() else Runtime("onnxruntime", "cpu", "f32"))
        self.cpus = max(1, cpus)
        # CPU: one lane per core given, each single-threaded (a local scan's lanes);
        # GPU: CenterFace's own batches on two lanes.
        self.detector = (CenterFace(tile, runtime=self.runtime) if self.runtime.gpu
                         else CenterFace(tile, runtime=self.runtime, streams=self.cpus, threads=1))
        self.descriptor: Descriptor | None = None  # loaded at the first faces
        self.node = ray.get_runtime_context().get_node_id()

    def report(self) -> dict:
        """Where this slot runs and on what: the driver checks versions and prints it."""
        return {"node": self.node, "host": socket.gethostname(), "pid": os.getpid(), "gpus": self.gpus,
                "cpus": self.cpus, "runtime": self.runtime.to_dict(), "note": self.note,
                "versions": versions.report()}

    def check_files(self, files: list[tuple[str, int]]) -> list[str]:
        """Problems with the input files as this node sees them (each should be there, the
        same size as the driver saw it)."""
        problems = []
        for path, size in files:
            try:
                seen = os.stat(path).st_size
            except OSError as exc:
                problems.append(f"{path}: {(exc.strerror or 'cannot read').lower()}")
                continue
            if seen != size:
                problems.append(f"{path}: {seen:,} bytes here, {size:,} where the scan started")
            elif not os.access(path, os.R_OK):
                problems.append(f"{path}: not readable")
        return problems

    def detect_unit(self, unit: Unit, grid: PassGrid, p: Pass, settings: Settings,
                    seeds: np.ndarray | None = None) -> list[tuple[int, int, object]]:
        tiles, dets = detect_unit(unit, grid, p, self.detector, settings, seeds)
        return [(unit.id, tiles, dets)]

    def detect_bands(self, path: str, max_pixels: int, p: Pass, settings: Settings,
                     wanted: list[int], count: int, seeds: np.ndarray | None = None) -> list[tuple[int, int, object]]:
        try:
            info = probe(path, max_pixels)
        except GigafaceError as exc:
            raise GigafaceError(f"{exc} (on node {socket.gethostname()}: every node must see the input files "
                                "at the same path)") from None
        skip = set(range(count)) - set(wanted)
        return list(detect_bands(info, p, self.detector, settings, skip, seeds))

    def describe(self, regions: list[Region]) -> list:
        if self.descriptor is None:
            # f32 whatever the detector runs in, as a local scan's describer: templates compare
            # across machines (Runtime.for_templates).
            self.descriptor = Descriptor(self.runtime.for_templates(), threads=1 if self.runtime.gpu else self.cpus)
        return describe_regions(regions, self.descriptor)
