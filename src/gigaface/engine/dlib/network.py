"""dlib's face descriptor, read from its `.dat` file and rebuilt as an ONNX graph.

The file (`dlib_face_recognition_resnet_model_v1.dat` from `face-recognition-models`) is
dlib's `anet_type` of `examples/dnn_face_recognition_ex.cpp` serialised: a loss layer,
then one version number per layer from the output down to the input (the nesting of
dlib's layer templates), then each layer's parameters from the input up. Tag and skip
layers store nothing but their version, so which tag a skip or an add_prev refers to is
not in the file: it is the network definition, `ARCHITECTURE` below, and the file is
checked against it layer by layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gigaface.engine.dlib.format import DlibReader
from gigaface.engine.model_cache import derived, read_model_file
from gigaface.errors import GigafaceError

MODEL_NAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP = 150
INPUT, OUTPUT = "chips", "embeddings"


def _block(n: int, stride: int) -> list[tuple]:
    return [("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]


def _ares(n: int) -> list[tuple]:
    return [("tag", 1), *_block(n, 1), ("add_prev", 1), ("relu",)]


def _ares_down(n: int) -> list[tuple]:
    # The block sees tag1 and is remembered as tag2; skip1 goes back to the block's input,
    # which is pooled and added to it (add_prev2).
    return [("tag", 1), *_block(n, 2), ("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2), ("relu",)]


def _levels() -> list[tuple]:
    """alevel4 to alevel0: (filters, whether it starts with a down-sampling block, plain blocks)."""
    out: list[tuple] = []
    for n, down, plain in ((32, False, 3), (64, True, 3), (128, True, 2), (256, True, 2), (256, True, 0)):
        out += (_ares_down(n) if down else []) + [t for _ in range(plain) for t in _ares(n)]
    return out


# dnn_face_recognition_ex.cpp's anet_type, from the input to the output.
ARCHITECTURE: list[tuple] = [
    ("input", CHIP), ("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2),
    *_levels(), ("avg_pool", 0, 1), ("fc", 128),
]


@dataclass
class Layer:
    kind: str  # input, con, affine, relu, max_pool, avg_pool, add_prev, fc, or tag for tag/skip
    sizes: dict = field(default_factory=dict)  # filters, kernel, stride, padding...
    arrays: dict = field(default_factory=dict)  # weights, bias, gamma, beta, means


def read_layers(data: bytes, name: str = MODEL_NAME) -> list[Layer]:
    """The layers of a dlib DNN file from the input to the output, tags as kind 'tag'."""
    r = DlibReader(data, name)
    r.expect_integer("loss layer version", 1)
    if r.expect_string("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.real(), r.real()  # margin and distance threshold: training only
    nesting = []
    while (version := r.expect_integer("layer version", 1, 2, 3)) != 3:
        nesting.append(version)  # 1: a tag or skip layer, 2: a layer with parameters
    layers = [_read_input(r), _read_details(r)]
    _read_state(r, with_expansion=True)  # the add_layer around the input (version 3)
    for version in reversed(nesting):
        if version == 1:
            layers.append(Layer("tag"))
        else:
            layers.append(_read_details(r))
            _read_state(r, with_expansion=False)
    r.expect_end()
    return layers


def _read_input(r: DlibReader) -> Layer:
    r.expect_string("input_rgb_image_sized")
    means = np.array([r.real(), r.real(), r.real()], np.float32)
    rows, cols = r.count(), r.count()
    return Layer("input", {"rows": rows, "cols": cols}, {"means": means})


def _read_state(r: DlibReader, with_expansion: bool) -> None:
    """An add_layer's training state after its layer: three flags and gradient tensors."""
    for _ in range(3):
        r.boolean()
    for _ in range(3):
        r.tensor()
    if with_expansion:
        r.integer()


def _read_details(r: DlibReader) -> Layer:
    start = r.pos
    name = r.string()
    r.pos = start
    for prefix, reader in _READERS.items():
        if name.startswith(prefix):
            return reader(r)
    raise r.fail(f"unknown layer {name!r}")


def _split_params(r: DlibReader, params: np.ndarray, *shapes: tuple) -> list[np.ndarray]:
    """A layer's flat parameter tensor cut into the shapes its aliases give."""
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != params.size:
        raise r.fail(f"a layer's parameters have {params.size} values, its shapes need {sum(sizes)}")
    ends = np.cumsum(sizes)
    return [params.reshape(-1)[end - n : end].reshape(shape) for n, end, shape in zip(sizes, ends, shapes)]


def _read_con(r: DlibReader) -> Layer:
    version = r.expect_string("con_4", "con_5", "con_6")
    params = r.tensor()
    filters, rows, cols, sy, sx, py, px = (r.integer() for _ in range(7))
    w_shape, b_shape = r.alias_tensor(), r.alias_tensor()
    for _ in range(4):
        r.real()  # learning-rate and weight-decay multipliers
    use_bias = r.boolean() if version != "con_4" else True
    if use_bias and b_shape[:2] != (1, filters):
        raise r.fail(f"convolution biases {b_shape} for {filters} filters")
    if version == "con_6" and r.boolean():
        raise r.fail("a convolution with a fused relu, which this descriptor never had")
    if w_shape[0] != filters or w_shape[2:] != (rows, cols):
        raise r.fail(f"convolution filters {w_shape} do not match {filters} of {rows}x{cols}")
    shapes = [w_shape] + ([(filters,)] if use_bias else [])
    weights, *bias = _split_params(r, params, *shapes)
    sizes = {"filters": filters, "kernel": (rows, cols), "stride": (sy, sx), "padding": (py, px)}
    return Layer("con", sizes, {"weights": weights, "bias": bias[0] if bias else np.zeros(filters, np.float32)})


def _read_affine(r: DlibReader) -> Layer:
    version = r.expect_string("affine_", "affine_2")
    params = r.tensor()
    g_shape, b_shape = r.alias_tensor(), r.alias_tensor()
    r.expect_integer("affine mode (0: per channel)", 0)
    disabled = r.boolean() if version == "affine_2" else False
    gamma, beta = _split_params(r, params, (g_shape[1],), (b_shape[1],))
    return Layer("affine", {"disabled": disabled}, {"gamma": gamma, "beta": beta})


def _read_relu(r: DlibReader) -> Layer:
    version = r.expect_string("relu_", "relu_2")
    return Layer("relu", {"disabled": r.boolean() if version == "relu_2" else False})


def _read_pool(r: DlibReader) -> Layer:
    kind = r.expect_string("max_pool_2", "avg_pool_2")[:-2]
    rows, cols, sy, sx, py, px = (r.integer() for _ in range(6))
    return Layer(kind, {"kernel": (rows, cols), "stride": (sy, sx), "padding": (py, px)})


def _read_add_prev(r: DlibReader) -> Layer:
    r.expect_string("add_prev_")
    return Layer("add_prev")


def _read_fc(r: DlibReader) -> Layer:
    version = r.expect_string("fc_2", "fc_3")
    outputs, inputs = r.count(), r.count()
    params = r.tensor()
    w_shape, _bias_shape = r.alias_tensor(), r.alias_tensor()  # the bias is as long as outputs
    has_bias = r.expect_integer("fc bias mode", 0, 1) == 0
    for _ in range(4):
        r.real()
    if version == "fc_3":
        has_bias = r.boolean() and has_bias
    if w_shape[:2] != (inputs, outputs):
        raise r.fail(f"fc weights {w_shape} do not match {inputs} inputs x {outputs} outputs")
    shapes = [(inputs, outputs)] + ([(outputs,)] if has_bias else [])
    weights, *bias = _split_params(r, params, *shapes)
    return Layer("fc", {"outputs": outputs}, {"weights": weights, "bias": bias[0] if bias else None})


_READERS = {"con_": _read_con, "affine_": _read_affine, "relu_": _read_relu, "max_pool_": _read_pool,
            "avg_pool_": _read_pool, "add_prev_": _read_add_prev, "fc_": _read_fc}


def check_architecture(layers: list[Layer], name: str = MODEL_NAME) -> None:
    """The file's layers must be dnn_face_recognition_ex.cpp's network, in order."""
    if len(layers) != len(ARCHITECTURE):
        raise GigafaceError(f"{name}: {len(layers)} layers where dlib's face descriptor has "
                            f"{len(ARCHITECTURE)}; reinstall 'face-recognition-models'")
    for i, (layer, spec) in enumerate(zip(layers, ARCHITECTURE)):
        kind = "tag" if spec[0] in ("tag", "skip") else spec[0]
        expected = spec[1:] if kind in _SIZED else ()  # tag numbers are not in the file
        found = _sizes(layer)
        if layer.kind != kind or found != expected:
            raise GigafaceError(f"{name}: layer {i} is {layer.kind} {found}, expected {kind} {expected}; "
                                "reinstall 'face-recognition-models'")


_SIZED = ("input", "con", "max_pool", "avg_pool", "fc")


def default_padding(kernel: int, stride: int) -> int:
    """dlib's padding for con_, max_pool_ and avg_pool_: half the kernel at stride 1, else none."""
    return kernel // 2 if stride == 1 else 0


def _sizes(layer: Layer) -> tuple:
    """What the architecture fixes about a layer; non-square kernels never match it."""
    s = layer.sizes
    if layer.kind == "input":
        return (s["rows"],) if s["rows"] == s["cols"] else (s["rows"], s["cols"])
    if layer.kind in ("con", "max_pool", "avg_pool"):
        (kr, kc), (sr, sc) = s["kernel"], s["stride"]
        head = (s["filters"],) if layer.kind == "con" else ()
        if (kr, sr) != (kc, sc) or s["padding"] != (default_padding(kr, sr),) * 2:
            return head + (s["kernel"], s["stride"], ("padding", s["padding"]))
        return head + (kr, sr)
    if layer.kind == "fc":
        return (s["outputs"],)
    return ()


def model_bytes(path: str | None = None) -> bytes:
    """The descriptor as a serialised ONNX model, built once per file content (then read
    from the model cache: engine/model_cache.py)."""
    from gigaface.engine.describe import model_file
    from gigaface.engine.dlib import graph

    path = path or model_file(MODEL_NAME)
    data = read_model_file(path, "face descriptor model")

    def build() -> bytes:
        layers = read_layers(data, path)
        check_architecture(layers, path)
        return graph.build_model(layers).SerializeToString()

    return derived(data, "dlib-descriptor", build, (__name__, graph.__name__))
