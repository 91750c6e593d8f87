"""bench/peers.py: CenterFace inside SAHI lands faces at panorama positions, the plain pass
too, and the duplicate counting and memory guard do what the report says."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sahi")

from bench import peers
from bench.ap import iou_matrix

# The astronaut's face in skimage.data.astronaut(), x1, y1, x2, y2.
FACE = np.array([181.0, 58.0, 270.0, 178.0])
# Where the picture goes: with 512 slices and overlap 0.2 (slices start every 410 px), the
# face spans x = 512, the right edge of the first column, and lies whole only in a slice
# shifted by (410, 410), so a missing or doubled shift puts it somewhere else.
OFFSET = np.array([291.0, 580.0])


def _write(path, canvas_hw, offset) -> np.ndarray:
    import pyvips
    from skimage.data import astronaut

    canvas = np.full((*canvas_hw, 3), 90, np.uint8)
    x, y = int(offset[0]), int(offset[1])
    canvas[y : y + 512, x : x + 512] = astronaut()
    pyvips.Image.new_from_array(canvas).jpegsave(str(path), Q=95)
    return FACE + np.tile(offset, 2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("peers") / "scene.jpg"
    return str(path), _write(path, (1200, 1500), OFFSET)


def _faces_on(result: dict, truth: np.ndarray) -> np.ndarray:
    return iou_matrix(result["boxes"].astype(np.float64), truth[None])[:, 0]


def test_sahi_places_a_face_cut_by_a_slice_edge(scene):
    from sahi.slicing import get_slice_bboxes

    path, truth = scene
    slices = np.array(get_slice_bboxes(1200, 1500, 512, 512, True, 0.2, 0.2))
    assert ((slices[:, 2] > truth[0]) & (slices[:, 2] < truth[2])).any(), "the face must straddle a slice edge"

    result = peers.run_sahi(path, slice_size=512, overlap=0.2, standard_pred=False)
    overlap = _faces_on(result, truth)
    assert overlap.max() > 0.7, (result["boxes"], truth)
    # Both slices saw it; SAHI's merging must leave one box.
    assert result["raw_boxes"] >= 2
    assert (overlap > 0.1).sum() == 1
    assert result["duplicates"] == 0 and result["slices"] == len(slices)


def test_sahi_standard_prediction_shrinks_the_whole_image_and_maps_back(tmp_path):
    from sahi.predict import get_prediction

    truth = _write(tmp_path / "small.jpg", (800, 1024), np.array([300.0, 200.0]))
    model = peers.CenterFaceSahiModel(input_size=512)
    found = get_prediction(str(tmp_path / "small.jpg"), model).object_prediction_list
    boxes = np.array([p.bbox.to_xyxy() for p in found]).reshape(-1, 4)
    assert len(boxes) and iou_matrix(boxes, truth[None]).max() > 0.6, (boxes, truth)


def test_plain_pass_maps_the_shrunk_image_back(scene):
    path, truth = scene
    result = peers.run_plain(path, fit=1024)
    assert result["input"] == [1024, 819]  # it really ran on the shrunk image
    assert _faces_on(result, truth).max() > 0.6, (result["boxes"], truth)


def test_overlapping_pairs_and_slice_edges():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [100, 0, 110, 10],  # one face twice
                      [102, 2, 108, 8],  # inside the third
                      [300, 0, 310, 10], [309, 0, 319, 10]], np.float32)  # neighbours, not duplicates
    pairs = peers.overlapping_pairs(boxes)
    assert sorted(map(sorted, pairs.tolist())) == [[0, 1], [2, 3]]
    slices = [[0, 0, 105, 50], [95, 0, 400, 50]]  # interior edges at x = 95 and x = 105
    assert peers.crossing_edges(boxes, pairs, slices, 400, 50) == 1


def test_compare_skips_sahi_that_would_not_fit(scene, monkeypatch):
    path, _ = scene
    monkeypatch.setattr(peers, "memory_budget_mb", lambda: 100.0)
    (row,) = peers.compare(path, configs=["sahi-tuned"])
    assert row["skipped"] and "GiB" in row["skipped"]
    assert peers.sahi_decoder(2**31) == "pil" and peers.sahi_estimate_mb(40_000, 40_000) > 10_000
