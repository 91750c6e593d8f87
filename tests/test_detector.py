"""The in-memory surgery on CenterFace's graph must not change what it computes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from gigaface.detector import TILES_INPUT, CenterFace, model_path, prepared_model


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
