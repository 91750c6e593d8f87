"""bench/parity.py on a few real faces: the numbers it reports say what they should."""
from __future__ import annotations

import pytest

from bench import parity
from tests.conftest import shared_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def test_parity_on_a_few_real_faces():
    sources = [("insightface_samples", shared_data("insightface_samples", "t1.jpg")),
               ("face_recognition_examples", shared_data("face_recognition_examples", "obama.jpg")),
               ("face_recognition_examples", shared_data("face_recognition_examples", "obama2.jpg"))]
    faces = parity.collect_faces(per_image=3, sources=sources, log=lambda *_: None)
    assert len(faces) == 5 and sum(f.identity is not None for f in faces) == 2  # the two Obama photos
    result = parity.measure(faces, log=lambda *_: None)
    assert result["landmarks_numpy_vs_dlib"]["faces_identical"] == 5
    assert result["chips_vs_dlib"]["numpy_landmarks_and_chip"]["identical"] == 5
    onnx = result["embeddings_vs_dlib"]["onnx_f32"]
    assert onnx["per_chip"]["max_abs"] < 1e-4 and onnx["all_pairs"]["max"] < 1e-4
    assert onnx["all_pairs"]["pairs"] == 10 and onnx["all_pairs"]["decisions_differ"] == 0
    assert result["identity_pairs"] == {"genuine": 1, "impostor": 0}
    assert onnx["identity_pairs"]["matches_dlib"] == 1  # obama.jpg and obama2.jpg: the same man
    assert "numpy_landmarks_and_chip" in parity.render(result)
