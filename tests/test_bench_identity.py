"""The identity benchmark's metrics and pairing, on synthetic distances and embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import identity
from bench.data import IdentityPhoto
from bench.identity import (
    Photo,
    eer,
    evaluate,
    pair_distances,
    rates,
    recommend,
    tar_at_far,
)


def test_rates_accept_a_distance_equal_to_the_threshold():
    assert rates([0.5, 0.6, 0.7], [0.6, 0.9], 0.6) == (pytest.approx(2 / 3), 0.5)


def test_perfectly_separated_distributions():
    genuine, impostor = np.linspace(0.1, 0.4, 50), np.linspace(0.7, 1.0, 3000)
    value, at = eer(genuine, impostor)
    assert value == 0 and 0.4 <= at < 0.7
    for far in (1e-2, 1e-3):
        point = tar_at_far(genuine, impostor, far)
        assert point["tar"] == 1 and point["resolved"]
        # Any FAR > 0 lets the threshold reach into the impostors; it never leaves out a genuine pair.
        assert point["far"] <= far and point["threshold"] >= 0.4


def test_eer_where_the_rates_meet_exactly():
    # At 0.4 one genuine pair of five is rejected (0.7) and one impostor of five accepted (0.35).
    genuine, impostor = [0.1, 0.2, 0.3, 0.4, 0.7], [0.35, 0.8, 0.9, 0.95, 1.0]
    assert eer(genuine, impostor) == (pytest.approx(0.2), 0.4)


def test_tar_at_far_takes_the_largest_threshold_within_the_far():
    impostor = (500 + np.arange(1000)) / 1000  # 0.500, 0.501, ... 1.499
    genuine = [0.2, 0.505, 0.509, 0.5095, 0.6]
    # FAR 1e-2 allows 10 impostors (0.500-0.509): every distance below 0.510 is accepted.
    assert tar_at_far(genuine, impostor, 1e-2) == {"tar": 0.8, "threshold": 0.5095, "far": 0.01,
                                                   "resolved": True, "impostors_needed": 100}
    # FAR 1e-3 allows one: the threshold stops at the smallest impostor.
    point = tar_at_far(genuine, impostor, 1e-3)
    assert (point["tar"], point["threshold"], point["far"]) == (0.2, 0.5, 0.001)


def test_too_few_impostors_for_the_far_is_said_and_accepts_none():
    genuine, impostor = [0.3, 0.4, 0.8], np.linspace(0.5, 1.0, 50)
    point = tar_at_far(genuine, impostor, 1e-3)
    assert not point["resolved"] and point["impostors_needed"] == 1000
    assert (point["tar"], point["threshold"], point["far"]) == (pytest.approx(2 / 3), 0.4, 0.0)
    # When the closest pair of all is an impostor, accepting nothing is all that is left.
    point = tar_at_far([0.6, 0.7], [0.5, 0.9], 1e-3)
    assert (point["tar"], point["threshold"], point["far"]) == (0.0, None, 0.0)


def test_evaluate_is_json_ready():
    row = evaluate(np.array([0.3, 0.4, 0.55]), np.linspace(0.5, 1.2, 200))
    json.dumps(row)
    assert row["genuine_pairs"] == 3 and row["impostor_pairs"] == 200
    assert row["at_threshold"]["0.5"]["tar"] == pytest.approx(2 / 3)
    assert set(row["tar_at_far"]) == {"0.01", "0.001"}


def _photo(name, person, frame, native, small=None):
    embeddings = {s: np.asarray(small if small is not None and s is not None else native, np.float32)
                  for s in identity.SIZES}
    return Photo(name, person, frame, 100.0, 1, embeddings)


def test_pairs_leave_out_the_same_frame_and_count_native_pairs_once():
    photos = [_photo("a1", "A", "f1", [0, 0]), _photo("a2", "A", "f1", [0, 0.1]),
              _photo("a3", "A", "f3", [0.3, 0]), _photo("b1", "B", "f4", [1, 0])]
    genuine, impostor = pair_distances(photos, None)
    assert sorted(genuine) == pytest.approx([0.3, np.hypot(0.3, 0.1)], abs=1e-6)  # a1-a2 left out
    assert len(impostor) == 3
    genuine, impostor = pair_distances(photos, 32)  # ordered: small A vs native B, and the reverse
    assert (len(genuine), len(impostor)) == (4, 6)


def test_small_faces_are_compared_with_native_references():
    photos = [_photo("a1", "A", "a1", [0, 0], small=[0.5, 0]), _photo("a2", "A", "a2", [0, 0], small=[0, 0.2])]
    genuine, _ = pair_distances(photos + [_photo("b", "B", "b", [5, 5])], 24)
    assert sorted(genuine) == pytest.approx([0.2, 0.5])


def test_byte_identical_copies_are_dropped_and_known_frames_grouped(tmp_path, monkeypatch):
    for name, data in [("a.jpg", b"one"), ("copy.jpg", b"one"), ("b.jpg", b"two"), ("c.jpg", b"three")]:
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(identity, "SAME_FRAME", (("b.jpg", "c.jpg"),))
    photos = [IdentityPhoto(tmp_path / n, "s:P") for n in ("a.jpg", "copy.jpg", "b.jpg", "c.jpg")]
    kept, dropped = identity.frame_groups(photos, tmp_path)
    assert [(name, frame) for _, name, frame in kept] == [("a.jpg", "a.jpg"), ("b.jpg", "b.jpg"), ("c.jpg", "b.jpg")]
    assert dropped == ["copy.jpg (= a.jpg)"]


def _rows(far_by_threshold):
    """by_size rows for recommend(): the same TAR everywhere, FAR per threshold."""
    return {label: {"label": label, "impostor_pairs": 1000, "impostor_min": 0.58,
                    "at_threshold": {f"{t:g}": {"tar": t, "far": f} for t, f in far_by_threshold.items()}}
            for label in ("native", "32 px")}


def test_recommend_takes_the_largest_threshold_within_the_far_budget():
    chosen, why = recommend(_rows({0.5: 0.0, 0.55: 0.0, 0.6: 0.001, 0.65: 0.004}), people=15)
    assert chosen == 0.6 and "Recommended default: 0.6" in why and "0.65" in why
    chosen, _ = recommend(_rows({0.5: 0.0, 0.55: 0.002, 0.6: 0.01, 0.65: 0.02}), people=15)
    assert chosen == 0.5


def test_measure_writes_plots_and_a_report(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 128))
    centres = 0.45 * centres / np.linalg.norm(centres, axis=1, keepdims=True)  # people ~0.64 apart
    photos = []
    for person, centre in enumerate(centres):
        for k in range(4):
            photo = Photo(f"set/p{person}-{k}.jpg", f"set:p{person}", f"set/p{person}-{k}.jpg", 200.0, 1)
            noise = rng.normal(size=128) * 0.015
            for size in identity.SIZES:
                grow = 1 if size is None else 64 / size  # smaller faces stray further
                photo.embeddings[size] = (centre + grow * noise).astype(np.float32)
            photos.append(photo)
    result = identity.measure(photos, [], [], tmp_path)
    json.dumps(result)
    assert [r["label"] for r in result["sizes"]] == ["native", "64 px", "48 px", "32 px", "24 px"]
    assert result["sizes"][0]["genuine_pairs"] == 4 * 6 and result["sizes"][1]["genuine_pairs"] == 4 * 12
    assert result["recommended_threshold"] in identity.FIXED_THRESHOLDS
    assert "## 4. Identity verification" in result["markdown"] and "| 24 px |" in result["markdown"]
    for name in result["plots"].values():
        assert (tmp_path / name).stat().st_size > 1000
