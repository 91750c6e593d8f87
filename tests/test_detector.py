"""The in-memory surgery on CenterFace's graph must not change what it computes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from gigaface.engine.detector import TILES_INPUT, CenterFace, model_path, prepared_model


def test_prepared_graph_matches_the_shipped_one():
    # The shipped file only accepts its own fixed 10x3x32x32 input: compare on that shape.
    options = ort.SessionOptions()
    options.log_severity_level = 3
    shipped = ort.InferenceSession(model_path(), options, providers=["CPUExecutionProvider"])
    prepared = ort.InferenceSession(prepared_model(10, 32, 32), options, providers=["CPUExecutionProvider"])
    tiles = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    inputs = {shipped.get_inputs()[0].name: tiles.transpose(0, 3, 1, 2).astype(np.float32)}
    for want, got in zip(shipped.run(None, inputs), prepared.run(None, {TILES_INPUT: tiles})):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_lanes_give_the_same_detections_as_one_session(tmp_path):
    from helpers import crowd

    image = crowd(1280, 640, [(300, 300, 90), (900, 320, 60)], seed=3)
    tiles = np.stack([image[:, :640], image[:, 640:]])
    one = CenterFace(streams=1).detect(tiles, 0.3)
    two = CenterFace(streams=2).detect(tiles, 0.3)
    assert sum(len(d) for d in one) >= 2
    for a, b in zip(one, two):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_mirrored_tile_maps_back_onto_the_same_face(detector):
    from helpers import crowd

    from gigaface.engine.detections import iou_one_to_many

    image = crowd(640, 640, [(220, 300, 90)], seed=5)
    plain, flipped = detector.detect(np.stack([image, image[:, ::-1].copy()]), 0.3)
    assert len(plain) >= 1 and len(flipped) >= 1
    back = flipped.mirrored(640)
    i, j = int(np.argmax(plain.scores)), int(np.argmax(back.scores))
    assert iou_one_to_many(plain.boxes[i], back.boxes[j : j + 1])[0] > 0.8
    # Landmarks come back in the same order: left eye left of the right eye, and each
    # point near where the unmirrored pass put it.
    assert back.landmarks[j, 0, 0] < back.landmarks[j, 1, 0]
    assert np.abs(back.landmarks[j] - plain.landmarks[i]).max() < 0.15 * (plain.boxes[i, 2] - plain.boxes[i, 0])


def test_accurate_plan_mirrors_and_calibrates_only_where_it_helped():
    from gigaface.engine.plan import plan_passes, settings_for

    passes = plan_passes(4000, 3000, settings_for("accurate"))
    by_scale = {p.scale: p for p in passes}
    assert by_scale[3.0].min_size == 4.0 and not by_scale[3.0].flip and by_scale[3.0].weight > 1
    assert by_scale[2.0].flip and by_scale[2.0].weight > 1
    assert all(p.flip and p.weight == 1.0 for p in passes if p.scale <= 1.0)
    # balanced mirrors nothing; only its small-face pass is weighted
    assert all(not p.flip and (p.weight == 1.0) != p.seeded for p in plan_passes(4000, 3000, settings_for("balanced")))
