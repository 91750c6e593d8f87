"""The describe stage: every face gets a quality record and thumbnail; big enough ones an embedding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from gigaface.library.store import Library
from gigaface.engine.plan import settings_for
from gigaface.ingest import scan_path
from tests.helpers import crowd, expected_box, iou, write_image


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_big_face_after_small_ones(tmp_path, detector, suffix):
    """A tall face region whose bottom comes just after small faces' region bottoms.

    The small faces make the describe stage's row window read ahead; the big face's region
    then starts far above them and must still be readable.
    """
    cy_big = 500
    bottom = cy_big + 317  # bottom of the region read around a 300 px face centred at cy_big
    faces = [(400, cy_big, 300), (900, bottom - 52, 40), (1100, bottom - 44, 40)]
    image = write_image(tmp_path / f"crowd.{suffix}", crowd(1400, 1100, faces, seed=9))
    library = Library(str(tmp_path / "lib.db"), create=True)
    result = scan_path(library, str(image), settings_for("balanced"), detector=detector)
    found = library.faces.all(result.capture.id)
    assert len(found) == 3
    assert all(f.embedded for f in found)
    for cx, cy, s in faces:
        assert sum(iou(expected_box(cx, cy, s), f.box) > 0.5 for f in found) == 1


def test_small_faces_are_described_without_embedding(tmp_path, detector):
    faces = [(150, 150, 30), (400, 160, 32), (700, 200, 80)]
    image = write_image(tmp_path / "crowd.png", crowd(900, 400, faces, seed=10))
    library = Library(str(tmp_path / "lib.db"), create=True)
    settings = settings_for("balanced", min_embed=50.0)
    result = scan_path(library, str(image), settings, detector=detector)
    found = library.faces.all(result.capture.id)
    assert len(found) == 3 and result.described == 3
    ids, vectors = library.faces.embeddings([result.capture.id])
    for face in found:
        big = max(face.box[2:]) >= 50
        assert face.embedded == big, face.box
        assert {"size", "sharpness", "frontalness"} <= set(face.quality)
        assert face.quality["size"] == pytest.approx(max(face.box[2:]), abs=0.2)
        crop = cv2.imdecode(np.frombuffer(library.faces.crop(face.id), np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and min(crop.shape[:2]) >= 8  # a real JPEG thumbnail
    assert len(ids) == 1 and vectors.shape == (1, 128)
    assert np.linalg.norm(vectors[0]) > 0.1


def test_sharper_face_scores_higher_sharpness(tmp_path, detector):
    sharp = crowd(700, 350, [(200, 175, 110)], seed=12)
    soft = sharp.copy()
    soft[60:290, 450:650] = cv2.GaussianBlur(crowd(700, 350, [(550, 175, 110)], seed=12)[60:290, 450:650], (0, 0), 3)
    image = write_image(tmp_path / "two.png", soft)
    library = Library(str(tmp_path / "lib.db"), create=True)
    result = scan_path(library, str(image), settings_for("balanced"), detector=detector)
    found = sorted(library.faces.all(result.capture.id), key=lambda f: f.box[0])
    assert len(found) == 2
    assert found[0].quality["sharpness"] > 2 * found[1].quality["sharpness"]
