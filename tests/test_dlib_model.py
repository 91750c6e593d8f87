"""gigaface's own reading of dlib's models: the descriptor as ONNX, the 5-point shape
predictor in numpy, dlib's chip in numpy; each checked against dlib-bin itself."""
from __future__ import annotations

import dlib
import numpy as np
import pytest

from gigaface.engine import chips, describe, model_cache
from gigaface.engine.dlib import network as dlib_net
from gigaface.engine.dlib import shape as dlib_shape
from gigaface.engine.dlib.format import DlibReader
from gigaface.engine.embedder import Descriptor
from gigaface.engine.runtime import Runtime, choose
from gigaface.errors import GigafaceError
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def net_bytes() -> bytes:
    with open(describe.model_file(dlib_net.MODEL_NAME), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def shape_bytes() -> bytes:
    with open(describe.model_file(dlib_shape.MODEL_NAME), "rb") as f:
        return f.read()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """The shape predictor's per-user cache goes to a folder of the test run, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def descriptor() -> Descriptor:
    return Descriptor(Runtime("onnxruntime", "cpu", "f32"), threads=1, batch=8)


@pytest.fixture(scope="module")
def real_faces(detector):
    """(region, box) of real faces as `describe` cuts them: a large portrait, a group, a crowd."""
    from gigaface.references import detect_whole

    faces = []
    for parts, keep in ((("deepface_identities", "img1.jpg"), 1), (("insightface_samples", "t1.jpg"), 6),
                        (("ultralight_face_imgs", "imgs", "17.jpg"), 12)):
        pixels, dets = detect_whole(str(shared_data(*parts)), detector)
        sizes = dets.boxes[:, 2] - dets.boxes[:, 0]
        for i in np.argsort(-sizes)[:keep]:
            x1, y1, x2, y2 = map(float, dets.boxes[i])
            x0, y0, rx1, ry1 = describe.region_box((x1, y1, x2 - x1, y2 - y1))
            x0, y0 = max(0, x0), max(0, y0)
            faces.append((np.ascontiguousarray(pixels[y0:ry1, x0:rx1]), (x1 - x0, y1 - y0, x2 - x1, y2 - y1)))
    return faces


def dlib_alignment(region: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    shape = describe.shape_predictor()(region, dlib.rectangle(*chips.box_rect(box)))
    points = np.array([(p.x, p.y) for p in shape.parts()])
    return points, np.asarray(dlib.get_face_chip(region, shape, size=150, padding=0.25))


# -- the descriptor file ---------------------------------------------------------------


def test_descriptor_file_is_read_as_dlibs_network(net_bytes):
    layers = dlib_net.read_layers(net_bytes)
    kinds = [layer.kind for layer in layers]
    assert len(layers) == len(dlib_net.ARCHITECTURE) == 131
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds.count("tag") == 22
    np.testing.assert_allclose(layers[0].arrays["means"], [122.782, 117.001, 104.298], atol=1e-3)
    first = layers[1]
    assert first.arrays["weights"].shape == (32, 3, 7, 7) and first.sizes["stride"] == (2, 2)
    assert first.sizes["padding"] == (0, 0)  # dlib pads only stride-1 convolutions
    convs = [layer for layer in layers if layer.kind == "con"]
    assert [c.arrays["weights"].shape[0] for c in convs][-2:] == [256, 256]
    # every convolution takes the channels the previous one gave
    for before, after in zip(convs, convs[1:]):
        assert after.arrays["weights"].shape[1] == before.arrays["weights"].shape[0]
    assert layers[-1].kind == "fc" and layers[-1].arrays["weights"].shape == (256, 128)
    assert layers[-1].arrays["bias"] is None  # fc_no_bias


@pytest.mark.parametrize("cut", [5, 100, 5000, -1, -2000])
def test_truncated_descriptor_is_one_clear_error(net_bytes, tmp_path, cut):
    path = tmp_path / "truncated.dat"
    path.write_bytes(net_bytes[:cut])
    with pytest.raises(GigafaceError) as err:
        dlib_net.model_bytes(str(path))
    assert "\n" not in str(err.value) and "truncated.dat" in str(err.value)


def test_flipped_layer_name_is_one_clear_error(net_bytes, tmp_path):
    path = tmp_path / "renamed.dat"
    path.write_bytes(net_bytes.replace(b"relu_", b"rexu_", 1))
    with pytest.raises(GigafaceError, match="unknown layer 'rexu_'"):
        dlib_net.model_bytes(str(path))


def test_wrong_tensor_size_is_one_clear_error(net_bytes, tmp_path):
    # The first convolution's parameter tensor claims 4736 values (0x1280): make it 4737.
    at = net_bytes.index(b"con_4") + 5
    assert net_bytes[at : at + 5] == b"\x01\x02\x02\x80\x12"
    path = tmp_path / "resized.dat"
    path.write_bytes(net_bytes[: at + 3] + b"\x81" + net_bytes[at + 4 :])
    with pytest.raises(GigafaceError, match="resized.dat"):
        dlib_net.model_bytes(str(path))


def test_layer_out_of_place_is_refused(net_bytes):
    layers = dlib_net.read_layers(net_bytes)
    layers[3], layers[4] = layers[4], layers[3]  # the max_pool before the relu
    with pytest.raises(GigafaceError, match="layer 3 is max_pool"):
        dlib_net.check_architecture(layers)


def test_layers_that_do_not_fit_together_are_refused(net_bytes):
    from gigaface.engine.dlib.graph import build_model

    layers = dlib_net.read_layers(net_bytes)
    layers[1].sizes["padding"] = (3, 3)  # dlib pads a stride-2 convolution with nothing
    with pytest.raises(GigafaceError, match="layer 1 is con"):
        dlib_net.check_architecture(layers)
    layers = dlib_net.read_layers(net_bytes)
    layers[6].arrays["weights"] = layers[6].arrays["weights"][:, :16]
    with pytest.raises(GigafaceError, match="over 16 channels gets 32"):
        build_model(layers)


def test_model_is_built_once_per_file_content(net_bytes, tmp_path):
    copy = tmp_path / "copy.dat"
    copy.write_bytes(net_bytes)
    assert dlib_net.model_bytes(str(copy)) is dlib_net.model_bytes()


def test_onnx_descriptor_equals_dlib_on_real_chips(real_faces, descriptor):
    cut = np.stack([describe.cut_chip(region, box, np.zeros((5, 2))).chip for region, box in real_faces])
    ours, theirs = descriptor.embed(cut), describe.embed_with_dlib(cut)
    assert np.abs(ours - theirs).max() < 1e-4
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=2)
    d_theirs = np.linalg.norm(theirs[:, None] - theirs[None], axis=2)
    assert np.abs(d_ours - d_theirs).max() < 1e-4
    assert ((d_ours <= 0.6) == (d_theirs <= 0.6)).all()


def test_the_scan_embeds_with_the_onnx_descriptor(real_faces):
    """describe.embed (the scan's, the reference photos') is our graph on the chosen runtime,
    not dlib-bin: its vectors are exactly that runtime's descriptor's, always in f32, and so
    dlib's to rounding even where the detector runs in bf16."""
    cut = np.stack([describe.cut_chip(region, box, np.zeros((5, 2))).chip for region, box in real_faces])
    scanned = describe.embed(cut)
    assert np.array_equal(scanned, Descriptor(choose().for_templates(), threads=1).embed(cut))
    assert not np.array_equal(scanned, describe.embed_with_dlib(cut))  # the two runtimes round apart
    assert np.abs(scanned - describe.embed_with_dlib(cut)).max() < 1e-4  # in f32 on every runtime


def test_descriptor_refuses_chips_of_the_wrong_shape(descriptor):
    with pytest.raises(GigafaceError, match="uint8"):
        descriptor.embed(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(GigafaceError, match="batch"):
        Descriptor(Runtime("onnxruntime", "cpu", "f32"), batch=0)


# -- the shape predictor file ----------------------------------------------------------


@pytest.fixture(scope="module")
def shape_model(shape_bytes) -> dlib_shape.ShapeModel:
    return dlib_shape.read_shape_model(shape_bytes)


def test_shape_predictor_file_is_read(shape_model):
    model = shape_model
    assert model.parts == 5 and model.split_a.shape == (15, 500, 15)
    assert model.leaves.shape == (15, 500, 16, 10) and model.deltas.shape == (15, 800, 2)
    assert model.split_a.max() < 800 and model.anchors.max() < 5


@pytest.mark.parametrize("cut", [3, 40, 100_000])
def test_truncated_shape_predictor_is_one_clear_error(shape_bytes, cut):
    with pytest.raises(GigafaceError) as err:
        dlib_shape.read_shape_model(shape_bytes[:cut], "short.dat")
    assert "\n" not in str(err.value) and "short.dat" in str(err.value)


def test_the_model_cache_holds_what_was_built_and_rebuilds_a_damaged_entry(tmp_path, monkeypatch):
    """Built once; a second process (here: a cleared memory) reads the same bytes from the
    cache; an entry damaged on disk is built again, never handed to a runtime."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"model bytes" * 100

    assert model_cache.derived(b"source", "test-model", build, (__name__,)) == b"model bytes" * 100
    (entry,) = (tmp_path / "gigaface").iterdir()
    monkeypatch.setattr(model_cache, "_BUILT", {})
    assert model_cache.derived(b"source", "test-model", build, (__name__,)) == b"model bytes" * 100
    assert len(builds) == 1
    entry.write_bytes(entry.read_bytes()[:-5] + b"xxxxx")  # a flipped byte in the digest
    monkeypatch.setattr(model_cache, "_BUILT", {})
    assert model_cache.derived(b"source", "test-model", build, (__name__,)) == b"model bytes" * 100
    assert len(builds) == 2
    other = model_cache.derived(b"another source", "test-model", lambda: b"other", (__name__,))
    assert other == b"other" and len(list((tmp_path / "gigaface").iterdir())) == 2


def test_the_cached_shape_predictor_is_the_models(shape_model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(dlib_shape, "_MODELS", {})
    dlib_shape.shape_model()
    monkeypatch.setattr(dlib_shape, "_MODELS", {})
    monkeypatch.setattr(model_cache, "_BUILT", {})
    again = dlib_shape.shape_model()  # from the cache file
    for name in ("initial", "split_a", "split_b", "thresholds", "leaves", "anchors", "deltas"):
        assert np.array_equal(getattr(shape_model, name), getattr(again, name))


def test_landmarks_equal_dlibs_on_real_faces(real_faces):
    model = dlib_shape.shape_model()
    regions = [region for region, _ in real_faces]
    ours = dlib_shape.landmarks_in_regions(model, regions, [chips.box_rect(box) for _, box in real_faces])
    theirs = np.stack([dlib_alignment(region, box)[0] for region, box in real_faces])
    assert np.array_equal(ours, theirs)


def test_landmarks_of_a_box_off_the_image_read_black():
    model = dlib_shape.shape_model()
    grey = np.full((40, 40), 200, np.uint8)
    box = (-30, -30, 10, 10)  # mostly outside: dlib reads 0 there
    ours = dlib_shape.landmarks(model, grey, [box])[0]
    theirs = describe.shape_predictor()(np.dstack([grey] * 3), dlib.rectangle(*box))
    assert np.array_equal(ours, [(p.x, p.y) for p in theirs.parts()])


# -- the chip --------------------------------------------------------------------------


def test_pyramid_down_equals_dlibs():
    rng = np.random.default_rng(1)
    for shape in [(50, 61, 3), (9, 12, 3), (201, 160, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(chips.pyramid_down(image), np.asarray(dlib.pyramid_down(2)(image)))


def test_chips_equal_dlibs_on_real_faces_small_and_large(real_faces):
    sizes = []
    for region, box in real_faces:
        points, theirs = dlib_alignment(region, box)
        assert np.array_equal(chips.chip(region, points), theirs)
        sizes.append(chips.chip_rect(points)[0][2] - chips.chip_rect(points)[0][0])
    assert max(sizes) > 300 > min(sizes)  # both sides of dlib's switch to its image pyramid


def test_whole_alignment_without_dlib_gives_dlibs_embedding(real_faces, descriptor):
    regions, boxes = [r for r, _ in real_faces], [b for _, b in real_faces]
    own, _ = chips.aligned_chips(regions, boxes)
    theirs = describe.embed_with_dlib(np.stack([describe.cut_chip(r, b, np.zeros((5, 2))).chip for r, b in real_faces]))
    assert np.linalg.norm(descriptor.embed(own) - theirs, axis=1).max() < 1e-4


def test_reader_rejects_a_bad_integer():
    with pytest.raises(GigafaceError, match="control byte"):
        DlibReader(b"\x70\x01", "x.dat").integer()
    with pytest.raises(GigafaceError, match="ends early"):
        DlibReader(b"\x04\x01", "x.dat").integers(1)


def test_damaged_descriptor_bytes_give_a_clear_error_or_a_checked_network(net_bytes):
    """Random byte changes anywhere in the layer headers: a GigafaceError, never another exception."""
    rng = np.random.default_rng(7)
    headers = [i for i in range(len(net_bytes) - 6) if net_bytes[i + 1 : i + 6] in (b"con_4", b"affin", b"relu_")]
    refused = 0
    for at in rng.choice(headers, 40) + rng.integers(0, 60, 40):
        damaged = bytearray(net_bytes)
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        try:
            dlib_net.check_architecture(dlib_net.read_layers(bytes(damaged), "damaged.dat"), "damaged.dat")
        except GigafaceError as exc:
            assert "damaged.dat" in str(exc) and "\n" not in str(exc)
            refused += 1
    assert refused >= 10  # many changes to headers and sizes are caught (22 of these 40); others only move a weight


def test_damaged_shape_predictor_bytes_give_a_clear_error(shape_bytes):
    rng = np.random.default_rng(8)
    head = shape_bytes[:60_000]  # cut short, so every damaged copy must end in an error
    for at in rng.integers(0, len(head), 30):
        damaged = bytearray(head)
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(GigafaceError, match="short.dat"):
            dlib_shape.read_shape_model(bytes(damaged), "short.dat")
