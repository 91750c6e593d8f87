"""The privacy section's yardsticks: the share of a face the anonymiser blurs, and the
sweep's shortcut of one detection run per family filtered by score."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.privacy import SWEEP_THRESHOLDS, by_size, covered_share, family_settings
from gigaface.engine.detect import detect_image
from conftest import shared_data

CROWD = ("wider_face_val_subset", "WIDER_val", "images", "0--Parade", "0_Parade_marchingband_1_465.jpg")


def test_covered_share_counts_the_blurred_part_of_each_labelled_box():
    boxes = [(100.0, 100.0, 40.0, 40.0)]
    labelled = np.array([[105, 105, 30, 30],   # inside the blurred box
                         [400, 300, 20, 20],   # far from it
                         [90, 120, 40, 40]],   # its upper half overlaps
                        np.float64)
    shares = covered_share(boxes, 640, 480, labelled)
    assert shares[0] == 1.0 and shares[1] == 0.0
    assert 0.5 < shares[2] < 1.0  # the mask grows boxes a little, never shrinks them
    assert covered_share([], 640, 480, labelled).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("mask_pixels", [None, 200_000, 30_000])  # None: the writer's own bound (4-px cells here)
def test_covered_share_counts_what_a_full_resolution_mask_counts(monkeypatch, mask_pixels):
    """Shares are counted on the mask's cells; they must be those of the mask blown up to
    every pixel, for boxes anywhere (edges, cell borders, beyond the image) and cells of
    several sizes (a gigapixel image's mask has larger cells: a smaller bound stands in)."""
    from gigaface.privacy import anonymise

    if mask_pixels:
        monkeypatch.setattr(anonymise, "MASK_MAX_PIXELS", mask_pixels)
    rng = np.random.default_rng(0)
    cells = set()
    for width, height in ((640, 480), (3001, 1999)):
        xy = rng.uniform(-20, [width, height], (60, 2))
        boxes = [tuple(v) for v in np.c_[xy, rng.uniform(3, 90, (60, 2))]]
        labelled = np.c_[rng.uniform(-10, [width, height], (200, 2)), rng.uniform(1, 60, (200, 2))]
        mask, cell, _ = anonymise.blur_mask(boxes, width, height)
        cells.add(cell)
        full = np.repeat(np.repeat(mask > 0, cell, axis=0), cell, axis=1)[:height, :width]
        expected = []
        for x, y, w, h in labelled:
            x0, y0 = int(np.clip(np.floor(x), 0, width)), int(np.clip(np.floor(y), 0, height))
            x1, y1 = int(np.clip(np.ceil(x + w), 0, width)), int(np.clip(np.ceil(y + h), 0, height))
            expected.append(full[y0:y1, x0:x1].mean() if (x1 - x0) * (y1 - y0) else 1.0)
        assert np.allclose(covered_share(boxes, width, height, labelled), expected), (width, height, cell)
    assert cells != {4} or mask_pixels is None  # the smaller bounds did make larger cells


def test_by_size_buckets_flags():
    sizes = np.array([5, 9, 12, 20, 40, 100], float)
    flags = np.array([True, False, True, True, False, True])
    assert by_size(sizes, flags) == {"<10": [1, 2], "10-16": [1, 1], "16-32": [1, 1], "32-64": [0, 1], ">=64": [1, 1]}


@pytest.mark.parametrize("floor,upscale", [(10.0, False), (4.0, True)])
def test_one_run_at_the_lowest_threshold_filtered_is_a_run_at_each_threshold(detector, floor, upscale):
    """The sweep runs each family once at its lowest threshold and keeps the boxes scoring
    above each higher one; that must be exactly what a scan at that threshold stores."""
    image = shared_data(*CROWD)  # a real crowd: many faint, overlapping boxes
    lowest = family_settings("balanced", floor, upscale)
    everything = detect_image(str(image), lowest, detector, blur_too=True)
    counts = [int((everything.scores > t).sum()) for t in SWEEP_THRESHOLDS]
    assert counts[0] < counts[3] < counts[-1]  # the thresholds do cut: the comparison is not vacuous
    for t in SWEEP_THRESHOLDS[1:-1]:
        filtered = everything.select(everything.scores > t)
        alone = detect_image(str(image), replace(lowest, blur_score_threshold=t), detector,
                             blur_too=True)
        key = lambda d: sorted(map(tuple, np.round(d.boxes, 2).tolist()))  # noqa: E731
        assert key(filtered) == key(alone), t
