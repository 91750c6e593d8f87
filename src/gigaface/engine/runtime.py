"""Where gigaface's two ONNX graphs run: onnxruntime (CPU, or CUDA with onnxruntime-gpu) or
OpenVINO (CPU, f32, or bfloat16 when asked on a CPU that computes it natively).

A `Runtime` names the backend, the device and the precision; `choose` turns what the user
asked for (`--runtime`, `$GIGAFACE_RUNTIME`, `--precision`, `$GIGAFACE_PRECISION`) into one,
and `compile_lanes` turns a graph into lanes: callables taking one fixed-shape uint8 batch
and returning the graph's outputs, each lane usable from its own thread at the same time.

`auto` is what bench/engine_speed.py measured fastest (bench/results/engine_speed.json,
2-core AMD EPYC with AVX512-BF16, no AMX): CenterFace 640x640, two threads, onnxruntime f32
16.4 ms a tile, OpenVINO f32 16.9 ms, OpenVINO bf16 8.1 ms (the two f32 runtimes trade
places from run to run: 20.2 and 19.1 ms on a busier machine); the face descriptor, batch
16, two threads, 1.36 / 1.14 / 0.58 ms a face. So: CUDA when onnxruntime has it; else
OpenVINO where it is installed (as fast for the detector, faster for the descriptor, and
the only one with bf16); else onnxruntime.

In f32, unless bf16 is asked for. bf16 nearly halves the detector's time here and moves WIDER
AP50 by at most 0.001, but its boxes are not f32's (0.4 % shorter on average, noisier), and
dlib's landmarks start from the box: in the identity section with bf16 boxes, genuine 24-px
pairs matched at distance 0.6 fall from 77.8 % to 71.8 % and a few 48-px impostor pairs pass
(bench/report.md, "1 and 4 again, by runtime"). The issue's rule, that bf16 may cost no
accuracy, keeps `auto` in f32. The descriptor computes in f32 whatever is asked
(`Runtime.for_templates`).

OpenVINO reports usage: importing it imports its model converter, which (with the
`openvino-telemetry` package its wheel depends on) writes a client id under ~/intel and
sends an "import" event to Google Analytics unless the user opted out. `import_openvino`
makes that package unimportable first, so the converter falls back to its own stub that
sends nothing; graphs go to OpenVINO from memory through `Core.read_model`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from gigaface.errors import GigafaceError

BACKENDS = ("onnxruntime", "openvino")
CHOICES = ("auto", *BACKENDS)
PRECISIONS = ("auto", "f32", "bf16")
RUNTIME_ENV = "GIGAFACE_RUNTIME"
PRECISION_ENV = "GIGAFACE_PRECISION"

Lane = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Runtime:
    backend: str    # onnxruntime | openvino
    device: str     # cpu | cuda
    precision: str  # f32 | bf16

    def __str__(self) -> str:
        templates = "" if self.precision == "f32" else ", descriptor f32"
        return f"{self.backend} {self.device} {self.precision}{templates}"

    def to_dict(self) -> dict:
        return {"runtime": self.backend, "device": self.device, "precision": self.precision,
                "descriptor_precision": self.for_templates().precision}

    def for_templates(self) -> "Runtime":
        """This runtime for the face descriptor, which always computes in f32: its templates
        are then dlib's to 1e-6 on any machine, so libraries made on different CPUs compare,
        whatever precision the detector runs in."""
        return replace(self, precision="f32")

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


def choose(runtime: str | None = None, precision: str | None = None) -> Runtime:
    """The runtime to use: `runtime` and `precision` as asked (None: the environment's, or
    auto), checked against what this machine has, or one clear error."""
    runtime = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    precision = (precision or os.environ.get(PRECISION_ENV) or "auto").strip().lower()
    if runtime not in CHOICES:
        raise GigafaceError(f"unknown runtime {runtime!r}; choose one of {', '.join(CHOICES)}")
    if precision not in PRECISIONS:
        raise GigafaceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if runtime == "auto":
        runtime = "onnxruntime" if cuda_available() or not openvino_available() else "openvino"
    if runtime == "onnxruntime":
        if precision == "bf16":
            raise GigafaceError("bf16 runs with the openvino runtime only; onnxruntime computes in f32")
        return Runtime("onnxruntime", "cuda" if cuda_available() else "cpu", "f32")
    if not openvino_available():
        raise GigafaceError("the openvino runtime is not installed (its wheels exist for x86-64 and 64-bit ARM): "
                            "pip install openvino, or use --runtime onnxruntime")
    if precision == "bf16" and not cpu_has_bf16():
        raise GigafaceError("this CPU has no bfloat16 arithmetic (AMX or AVX512-BF16); use --precision f32")
    if precision == "auto":
        precision = "f32"  # see the module's docstring: bf16 boxes cost recognition at 24 px
    return Runtime("openvino", "cpu", precision)


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def import_openvino():
    """The openvino module, imported without its telemetry (see the module's docstring)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None: `import` of it raises ImportError
    import openvino

    return openvino


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    try:
        import_openvino()
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    return openvino_available() and "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@lru_cache(maxsize=1)
def _openvino_core():
    return import_openvino().Core()


def compile_lanes(model: bytes, runtime: Runtime, lanes: int = 1, threads: int = 1,
                  input_shape: tuple[int, ...] | None = None) -> list[Lane]:
    """`lanes` callables running `model` (ONNX bytes with one uint8 input), each on `threads`
    threads (CPU), callable from different threads at once. `input_shape` fixes a dynamic
    input for OpenVINO, which compiles one static shape."""
    if lanes < 1 or threads < 1:
        raise GigafaceError("lanes and threads must be at least 1")
    if runtime.backend == "onnxruntime":
        return _onnxruntime_lanes(model, runtime, lanes, threads)
    return _openvino_lanes(model, runtime, lanes, threads, input_shape)


def _onnxruntime_lanes(model: bytes, runtime: Runtime, lanes: int, threads: int) -> list[Lane]:
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if runtime.gpu else ["CPUExecutionProvider"]

    def session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its graph warnings are about the file, not the user
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(model, sess_options=options, providers=providers)

    # On a GPU the lanes share one session (its run is thread-safe), so one lane fills its
    # batch while the other's runs; on a CPU each lane is a session of its own, so a lane
    # slowed by the decoder's thread does not hold back the other's operators.
    shared = session() if runtime.gpu else None
    out = []
    for _ in range(lanes):
        s = shared or session()
        name = s.get_inputs()[0].name
        out.append(lambda batch, s=s, name=name: s.run(None, {name: batch}))
    return out


def _openvino_lanes(model: bytes, runtime: Runtime, lanes: int, threads: int,
                    input_shape: tuple[int, ...] | None) -> list[Lane]:
    ov = import_openvino()
    core = _openvino_core()
    graph = core.read_model(model, ov.Tensor(type=ov.Type.u8, shape=[0]))
    if input_shape is not None:
        graph.reshape({graph.inputs[0].any_name: list(input_shape)})
    # One compiled model with a stream per lane: each infer request runs on its stream's
    # threads, as each onnxruntime lane runs its own session.
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": runtime.precision,
                                                 "NUM_STREAMS": lanes, "INFERENCE_NUM_THREADS": lanes * threads})
    outputs = list(compiled.outputs)

    def lane(request):
        def run(batch: np.ndarray) -> list[np.ndarray]:
            result = request.infer({0: batch})
            return [np.array(result[o]) for o in outputs]  # copies: the request reuses its buffers
        return run

    runs = [lane(compiled.create_infer_request()) for _ in range(lanes)]
    # Each lane's first call from this one thread: OpenVINO's bindings set up their numpy
    # access lazily, and two lanes doing that at once from two threads deadlock (pybind11's
    # call_once waits for the GIL that the other thread holds while it waits on the same
    # once-guard: seen as a `gigaface find` hung for minutes).
    warm = np.zeros(tuple(compiled.inputs[0].shape), np.uint8)
    for run in runs:
        run(warm)
    return runs


def describe_machine() -> dict:
    """What `gigaface doctor` prints: the runtimes this machine has and what auto picks."""
    import onnxruntime as ort

    info = {"onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
            "openvino": None, "cpu_bf16": False, "cpu_count": os.cpu_count()}
    if openvino_available():
        info["openvino"] = import_openvino().get_version()
        info["cpu_bf16"] = cpu_has_bf16()
        info["cpu"] = _openvino_core().get_property("CPU", "FULL_DEVICE_NAME")
    try:
        info["auto"] = str(choose("auto", "auto"))
    except GigafaceError as exc:
        info["auto"] = f"error: {exc}"
    return info
