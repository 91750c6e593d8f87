"""The layers of dlib's face descriptor (`dlib_net.read_layers`) as an ONNX graph.

dlib's conventions, from `dlib/dnn/layers.h` and `dlib/cuda/cpu_dlib.cpp`, and how they
map onto ONNX:
- tensors are NCHW, convolutions are cross-correlations (as ONNX Conv), output sizes are
  1 + (in + 2 pad - kernel) / stride, rounded down, and the padding is what the file stores
  (dlib's default: kernel / 2 for stride 1, none otherwise);
- pooling windows start at `i * stride - pad`; average pooling divides by the pixels of
  the window inside the image (count_include_pad=0); a 0x0 window is the whole input;
- `add_prev` adds tensors of different sizes by taking the larger size in every
  dimension and reading zeros where a tensor is smaller: that is how a down-sampling block
  adds its 3x3 convolution branch to its 4x4 pooled branch, and 128 channels to 64;
- each tag remembers a tensor, skip goes back to one, add_prev adds one (the tag numbers
  come from `dlib_net.ARCHITECTURE`, since the file has none).
"""
from __future__ import annotations

import numpy as np

from gigaface.engine.dlib.network import ARCHITECTURE, CHIP, INPUT, OUTPUT, Layer
from gigaface.errors import GigafaceError

OPSET = 17
IR_VERSION = 8  # read by every onnxruntime and OpenVINO of the last years


class _Graph:
    """Nodes and weights being added, and the (channels, rows, cols) of each tensor."""

    def __init__(self):
        self.nodes, self.weights, self.shapes = [], [], {}
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{what}_{self.count}"

    def const(self, what: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(what)
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], shape: tuple[int, int, int], **attrs) -> str:
        from onnx import helper

        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = shape
        return out


def build_model(layers: list[Layer]):
    """An onnx.ModelProto: uint8 (N, 150, 150, 3) RGB chips in, (N, 128) float32 out."""
    from onnx import TensorProto, helper

    g = _Graph()
    x = _input(g, layers[0])
    tags: dict[int, str] = {}
    i = 1
    while i < len(layers):
        layer, spec = layers[i], ARCHITECTURE[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if layer.kind == "con" and following is not None and following.kind == "affine":
            x = _conv(g, x, layer, following)  # an affine right after a convolution is folded into it
            i += 2
            continue
        if spec[0] == "tag":
            tags[spec[1]] = x
        elif spec[0] == "skip":
            x = tags[spec[1]]
        elif layer.kind == "add_prev":
            x = _add_zero_filled(g, x, tags[spec[1]])
        else:
            x = _LAYER_OPS[layer.kind](g, x, layer)
        i += 1
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["N", CHIP, CHIP, 3])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", g.shapes[x][0]])],
        initializer=g.weights)
    _rename_output(graph, x)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gigaface")
    model.ir_version = IR_VERSION
    return model


def _rename_output(graph, name: str) -> None:
    for node in graph.node:
        node.output[:] = [OUTPUT if o == name else o for o in node.output]
    graph.output[0].name = OUTPUT


def _input(g: _Graph, layer: Layer) -> str:
    """dlib's input_rgb_image_sized: (pixel - channel mean) / 256, as NCHW float."""
    from onnx import TensorProto

    rows, cols = layer.sizes["rows"], layer.sizes["cols"]
    x = g.op("Cast", [INPUT], (rows, cols, 3), to=TensorProto.FLOAT)
    x = g.op("Sub", [x, g.const("means", layer.arrays["means"].reshape(1, 1, 1, 3))], (rows, cols, 3))
    x = g.op("Mul", [x, g.const("scale", np.array(1 / 256, np.float32))], (rows, cols, 3))
    return g.op("Transpose", [x], (3, rows, cols), perm=[0, 3, 1, 2])


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - kernel) // stride


def _conv(g: _Graph, x: str, con: Layer, affine: Layer) -> str:
    w, b = con.arrays["weights"].astype(np.float64), con.arrays["bias"].astype(np.float64)
    if not affine.sizes["disabled"]:
        gamma, beta = affine.arrays["gamma"].astype(np.float64), affine.arrays["beta"].astype(np.float64)
        w, b = w * gamma[:, None, None, None], b * gamma + beta
    (kr, kc), (sr, sc), (pr, pc) = con.sizes["kernel"], con.sizes["stride"], con.sizes["padding"]
    channels, rows, cols = g.shapes[x]
    _expect(w.shape[1] == channels, f"a convolution over {w.shape[1]} channels gets {channels}")
    shape = (con.sizes["filters"], _out_size(rows, kr, sr, pr), _out_size(cols, kc, sc, pc))
    return g.op("Conv", [x, g.const("w", w.astype(np.float32)), g.const("b", b.astype(np.float32))], shape,
                kernel_shape=[kr, kc], strides=[sr, sc], pads=[pr, pc, pr, pc])


def _relu(g: _Graph, x: str, layer: Layer) -> str:
    return x if layer.sizes["disabled"] else g.op("Relu", [x], g.shapes[x])


def _pool(g: _Graph, x: str, layer: Layer) -> str:
    channels, rows, cols = g.shapes[x]
    (kr, kc), (sr, sc), (pr, pc) = layer.sizes["kernel"], layer.sizes["stride"], layer.sizes["padding"]
    if (kr, kc) == (0, 0):  # dlib's avg_pool_everything / max_pool_everything
        return g.op("GlobalAveragePool" if layer.kind == "avg_pool" else "GlobalMaxPool", [x], (channels, 1, 1))
    shape = (channels, _out_size(rows, kr, sr, pr), _out_size(cols, kc, sc, pc))
    attrs = dict(kernel_shape=[kr, kc], strides=[sr, sc], pads=[pr, pc, pr, pc])
    if layer.kind == "avg_pool":
        return g.op("AveragePool", [x], shape, count_include_pad=0, **attrs)
    return g.op("MaxPool", [x], shape, **attrs)


def _add_zero_filled(g: _Graph, a: str, b: str) -> str:
    """a + b over the larger size in each dimension, zeros where one of them is smaller."""
    shape = tuple(max(p, q) for p, q in zip(g.shapes[a], g.shapes[b]))
    return g.op("Add", [_zero_fill(g, a, shape), _zero_fill(g, b, shape)], shape)


def _zero_fill(g: _Graph, x: str, shape: tuple[int, int, int]) -> str:
    missing = [want - have for want, have in zip(shape, g.shapes[x])]
    if not any(missing):
        return x
    pads = np.array([0, 0, 0, 0, 0, *missing], np.int64)  # zeros after the data, never before
    return g.op("Pad", [x, g.const("pads", pads)], shape, mode="constant")


def _fc(g: _Graph, x: str, layer: Layer) -> str:
    outputs = layer.sizes["outputs"]
    _expect(layer.arrays["weights"].shape[0] == int(np.prod(g.shapes[x])),
            f"the fc layer takes {layer.arrays['weights'].shape[0]} values, not {int(np.prod(g.shapes[x]))}")
    x = g.op("Flatten", [x], (int(np.prod(g.shapes[x])),), axis=1)  # dlib's k, nr, nc order is NCHW's
    x = g.op("MatMul", [x, g.const("fc", layer.arrays["weights"])], (outputs,))
    if layer.arrays["bias"] is not None:
        x = g.op("Add", [x, g.const("fc_bias", layer.arrays["bias"])], (outputs,))
    return x


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise GigafaceError(f"dlib's face descriptor file does not fit together: {what}; "
                            "reinstall 'face-recognition-models'")


_LAYER_OPS = {"relu": _relu, "max_pool": _pool, "avg_pool": _pool, "fc": _fc}
