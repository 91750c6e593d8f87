"""The benchmark mosaic: a tiny one is built from the real WIDER images and checked against
its sources, so that the ground truth the detection benchmark scores against is right."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import pyvips

from bench.data import MissingData, wider_images
from bench.mosaic import FACE_SIZES, MIN_BOX, build_mosaic, load_mosaic


def _or_skip(make, *args, **options):
    try:
        return make(*args, **options)
    except MissingData as exc:
        pytest.skip(str(exc))


def _build(out, **options):
    return _or_skip(build_mosaic, out, **options)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("mosaic"), megapixels=6, seed=1, planted=2)


@pytest.fixture(scope="module")
def wider():
    return {im.path: im for im in _or_skip(wider_images)}


def _wider_cells(mosaic, wider):
    return [c for c in mosaic.cells if c.source in wider]


def _carried(cell, im):
    """The WIDER boxes of `im` as they should be in the panorama, and which are kept."""
    x0, y0, x1, y1 = cell.place
    sx, sy = (x1 - x0) / cell.crop[2], (y1 - y0) / cell.crop[3]
    b = np.concatenate([im.boxes[:, :2], im.boxes[:, :2] + im.boxes[:, 2:]], 1) * [sx, sy, sx, sy]
    if cell.flip:
        b[:, [0, 2]] = (x1 - x0) - b[:, [2, 0]]
    b = np.clip(b, 0, [x1 - x0, y1 - y0] * 2)
    keep = (b[:, 2] - b[:, 0] >= MIN_BOX) & (b[:, 3] - b[:, 1] >= MIN_BOX)
    return b[keep] + [x0, y0, x0, y0], keep


def test_files_have_the_declared_size(mosaic):
    assert mosaic.width * mosaic.height > 2e6
    assert mosaic.width > mosaic.height
    rgb = cv2.imread(str(mosaic.jpeg))
    assert rgb.shape == (mosaic.height, mosaic.width, 3)
    tiff = pyvips.Image.new_from_file(str(mosaic.tiff))
    assert (tiff.width, tiff.height) == (mosaic.width, mosaic.height)
    assert not list(mosaic.jpeg.parent.glob(".*"))        # no temporary left behind


def test_every_box_is_inside_the_image_and_its_cell(mosaic):
    b = mosaic.boxes
    assert b.shape == (len(mosaic.invalid), 4) and len(b) > 0
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= mosaic.width).all() and (b[:, 3] <= mosaic.height).all()
    assert (b[:, 2] - b[:, 0] >= MIN_BOX).all() and (b[:, 3] - b[:, 1] >= MIN_BOX).all()
    for cell in mosaic.cells:
        x0, y0, x1, y1 = cell.place
        inside = b[cell.faces[0]:cell.faces[1]]
        assert (inside[:, :2] >= [x0, y0]).all() and (inside[:, 2:] <= [x1, y1]).all()


def test_ground_truth_is_what_the_cells_carry(mosaic, wider):
    slices = [c.faces for c in mosaic.cells]
    assert slices[0][0] == 0 and slices[-1][1] == len(mosaic.boxes)
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    total = 0
    for cell in mosaic.cells:
        if cell.source in wider:
            im = wider[cell.source]
            expected, keep = _carried(cell, im)
            got = mosaic.boxes[cell.faces[0]:cell.faces[1]]
            np.testing.assert_allclose(got, expected, atol=0.02)
            assert (mosaic.invalid[cell.faces[0]:cell.faces[1]] == im.invalid[keep]).all()
            total += len(expected)
        else:
            total += cell.faces[1] - cell.faces[0]
    assert total == len(mosaic.boxes)


def test_a_carried_box_shows_the_same_face(mosaic, wider):
    """The panorama inside a carried box looks like the source inside the original box,
    mirrored when the cell is: the boxes follow the pixels."""
    panorama = cv2.imread(str(mosaic.jpeg)).astype(np.float32)
    checked = 0
    for cell in _wider_cells(mosaic, wider):
        im = wider[cell.source]
        _, keep = _carried(cell, im)
        got = mosaic.boxes[cell.faces[0]:cell.faces[1]]
        for (x, y, w, h), (x1, y1, x2, y2) in zip(im.boxes[keep], got):
            if x2 - x1 < 16 or y2 - y1 < 16:
                continue
            size = (round(x2) - round(x1), round(y2) - round(y1))
            drawn = panorama[round(y1):round(y2), round(x1):round(x2)]
            source = cv2.imread(str(im.path))[round(y):round(y + h), round(x):round(x + w)]
            source = cv2.resize(source, size, interpolation=cv2.INTER_AREA).astype(np.float32)
            if cell.flip:
                source = source[:, ::-1]
            assert np.abs(drawn - source).mean() < 10, (cell, (x, y, w, h))
            assert np.abs(drawn - source[:, ::-1]).mean() > np.abs(drawn - source).mean()
            checked += 1
    assert checked >= 3


def test_planted_people(mosaic):
    assert len(mosaic.planted) == 2
    assert len({p.identity for p in mosaic.planted}) == 2
    for p in mosaic.planted:
        assert p.queries and p.photo not in p.queries
        assert all(q.exists() for q in p.queries)
        assert not any(q.name == f"{p.photo.stem}_reflection{p.photo.suffix}" for q in p.queries)
        (i,) = np.flatnonzero((np.abs(mosaic.boxes - p.box) < 0.01).all(1))
        assert not mosaic.invalid[i]
        x1, y1, x2, y2 = p.box
        assert FACE_SIZES[0] - 1 <= y2 - y1 <= FACE_SIZES[1] + 1
        (cell,) = [c for c in mosaic.cells if c.source == p.photo]
        assert cell.faces[0] <= i < cell.faces[1]


def test_same_seed_same_mosaic_and_the_folder_is_a_cache(mosaic, tmp_path):
    again = _build(tmp_path / "again", megapixels=6, seed=1, planted=2, tiff=False)
    assert (again.width, again.height) == (mosaic.width, mosaic.height)
    assert again.cells == mosaic.cells and again.planted == mosaic.planted
    np.testing.assert_array_equal(again.boxes, mosaic.boxes)
    assert again.tiff is None and not (tmp_path / "again" / "mosaic.tif").exists()

    loaded = load_mosaic(tmp_path / "again")
    assert loaded.cells == again.cells and loaded.planted == again.planted
    np.testing.assert_array_equal(loaded.boxes, again.boxes)
    np.testing.assert_array_equal(loaded.invalid, again.invalid)
    stamp = again.jpeg.stat().st_mtime_ns
    cached = _build(tmp_path / "again", megapixels=6, seed=1, planted=2)   # adds the TIFF only
    assert cached.jpeg.stat().st_mtime_ns == stamp and cached.tiff.is_file()

    other = _build(tmp_path / "again", megapixels=6, seed=2, planted=0, tiff=False)
    assert [c.place for c in other.cells] != [c.place for c in mosaic.cells]
    assert load_mosaic(tmp_path / "again").seed == 2
