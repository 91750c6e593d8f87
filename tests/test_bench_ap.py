"""The benchmark's yardsticks: WIDER-protocol AP, the ground-truth parser, the data helper."""
from __future__ import annotations

import numpy as np
import pytest

from bench.ap import evaluate, judge, voc_ap, xywh_to_xyxy
from bench.data import MissingData, parse_wider_gt, shared_path

GT = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)


def test_perfect_detections_give_ap_one():
    result = judge(GT, [0.9, 0.8, 0.7], GT, [False, False, False])
    assert evaluate([result]).ap == pytest.approx(1.0)


def test_known_answer_with_duplicate_miss_and_invalid_face():
    # Face 3 is invalid: the detection on it is dropped, neither hit nor false positive.
    # In score order: hit (face 1), duplicate of face 1 (false positive), on the invalid
    # face (dropped), nowhere (false positive), hit (face 2, IoU 10/11 >= 0.5).
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110], [20, 20, 30, 31]], float)
    result = judge(preds, [0.9, 0.8, 0.7, 0.6, 0.5], GT, [False, False, True])
    assert result.hits.tolist() == [True, False, False, True]
    ev = evaluate([result])
    assert ev.faces == 2 and ev.detections == 4
    # Recall 0.5 at precision 1, then recall 1.0 at precision 2/4.
    assert ev.ap == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_judging_a_block_of_detections_at_a_time_changes_nothing():
    """A gigapixel mosaic's detections are compared with its faces a block at a time (the
    whole matrix of a 1-GP scan took 24 GB); one detection a block gives the same verdicts."""
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 200, (60, 2))
    faces = np.concatenate([corners, corners + rng.uniform(5, 30, (60, 2))], axis=1)
    invalid = rng.random(60) < 0.1
    preds = np.concatenate([faces + rng.normal(0, 2, faces.shape), faces[:20] + 15], axis=0)
    scores = rng.random(len(preds))
    whole, blocks = judge(preds, scores, faces, invalid), judge(preds, scores, faces, invalid, cells=1)
    assert whole.hits.sum() > 20
    for field in ("scores", "hits", "gt_sizes", "gt_best"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(blocks, field))


def test_low_overlap_is_a_miss_and_ap_pools_images():
    shifted = GT[:1] + [6, 0, 6, 0]  # IoU 4/16 < 0.5
    a = judge(shifted, [0.95], GT[:1], [False])
    b = judge(GT[:1], [0.5], GT[:1], [False])
    assert not a.hits.any() and b.hits.all()
    # Pooled: the false positive outranks the hit, so precision at recall 0.5 is 1/2.
    assert evaluate([a, b]).ap == pytest.approx(0.5 * 0.5)


def test_recall_by_size_uses_threshold_and_bins():
    gt = np.array([[0, 0, 8, 8], [20, 0, 44, 24], [100, 0, 200, 100], [300, 0, 312, 12]], float)  # 8, 24, 100, 12 px
    result = judge(gt[[0, 1, 3]], [0.3, 0.9, 0.6], gt, [False, False, False, False])
    by_size = evaluate([result]).recall_by_size([result], threshold=0.5)
    assert by_size["<10"] == (0.0, 1)  # found, but below the operating threshold
    assert by_size["10-16"] == (1.0, 1)
    assert by_size["16-32"] == (1.0, 1)
    assert by_size["32-64"][1] == 0
    assert by_size[">=64"] == (0.0, 1)
    anything = evaluate([result]).recall_by_size([result])  # no threshold: found at any score
    assert anything["<10"] == (1.0, 1) and anything[">=64"] == (0.0, 1)  # a face never found stays missed


def test_voc_ap_envelope():
    # Precision rises again later: the envelope takes the later, higher value.
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.66])) == pytest.approx(0.5 + 0.5 * 0.66)


def test_parse_official_format(tmp_path):
    text = ("0--Parade/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0 \n10 20 30 40 2 0 0 1 0 0 \n"
            "13--Interview/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n4--Dancing/c.jpg\n1\n5 5 5 5 0 0 0 0 0 0 \n")
    images = parse_wider_gt(text, tmp_path)
    assert [im.name for im in images] == ["0--Parade/a.jpg", "13--Interview/b.jpg", "4--Dancing/c.jpg"]
    assert images[0].boxes.tolist() == [[1, 2, 3, 4], [10, 20, 30, 40]]
    assert images[0].invalid.tolist() == [False, True]
    assert len(images[1].boxes) == 0 and len(images[2].boxes) == 1
    assert xywh_to_xyxy(images[0].boxes)[1].tolist() == [10, 20, 40, 60]


def test_missing_shared_data_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("GIGAFACE_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(MissingData, match="nowhere.*not a folder"):
        shared_path("wider_face_val_subset")
    monkeypatch.setenv("GIGAFACE_SHARED_DATA", str(tmp_path))
    with pytest.raises(MissingData, match="missing"):
        shared_path("wider_face_val_subset")
