"""Passes, tiles and the merge: every face size is covered, and a face on a seam is found once."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from gigaface.engine.detections import Detections, nms_indices
from gigaface.library.store import Library
from gigaface.engine.plan import PRESETS, listing_passes, plan_passes, settings_for, tile_columns
from gigaface.engine.detect import count_tiles
from gigaface.engine.manifest import frames_of
from gigaface.ingest import scan_path
from tests.helpers import crowd, expected_box, iou, write_image

SIZES = [(640, 480), (1400, 700), (6000, 4000), (300, 20000), (120_000, 40_000)]


def covered(intervals: list[tuple[float, float]], lo: float, hi: float) -> bool:
    """Whether the union of [a, b) intervals covers [lo, hi]."""
    reach = lo
    for a, b in sorted(intervals):
        if a > reach:
            break
        reach = max(reach, b)
    return reach > hi


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("min_face", [None, 6, 8, 12, 30, 200])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_passes_cover_every_face_size(preset, min_face, size):
    width, height = size
    settings = settings_for(preset, min_face)
    passes = plan_passes(width, height, settings)
    assert passes[0].min_size == settings.detect_min_face <= settings.min_face
    assert any(p.scale == 1.0 for p in passes)
    unseeded = [p for p in passes if not p.seeded]
    assert [p.scale for p in unseeded] == sorted({p.scale for p in unseeded}, reverse=True)  # fine to coarse
    # A seeded pass looks where the passes before it found faces, so it comes after them all.
    assert all(p.seeded for p in passes[len(unseeded):])
    # Small faces are looked for in seeded passes: one at 2x, or accurate's at 3x and 2x.
    assert [p.seeded for p in passes].count(True) == (
        (2 if preset == "accurate" else 1) if settings.looks_for_small_faces else 0)
    # Together the passes keep every face from the blur point up to the largest the image can hold.
    assert covered([(p.min_size, p.max_size) for p in passes], settings.detect_min_face, min(width, height))
    for prev, nxt in zip(unseeded, unseeded[1:]):
        # Size ranges overlap, so a face at a boundary is seen by two passes (the merge dedups).
        assert nxt.min_size < prev.max_size, (prev, nxt)
    # The blur point changes no pass but the finest-scale one and the small-face pass, which
    # reach down to it.
    listing = listing_passes(width, height, settings)
    assert [replace(p, min_size=0) for p in passes] == [replace(p, min_size=0) for p in listing]
    for i, (p, q) in enumerate(zip(passes, listing)):
        assert p.min_size == (min(q.min_size, settings.detect_min_face) if i == 0 or p.seeded else q.min_size)
    for p in passes:
        if p.upscale_tiles:
            assert p.core % p.scale == 0 and p.margin % p.scale == 0
    for p in passes:
        assert 0 < p.core <= p.tile and p.tile % 32 == 0
        # A tile sees `margin` pixels beyond its core: any face it keeps (centre in the core)
        # lies whole inside the tile.
        assert 2 * p.margin >= p.max_size * p.scale - 1e-6, p


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("width", [1, 100, 511, 512, 513, 1400, 6000, 99_999])
def test_tile_columns_partition_the_width(preset, width):
    for p in plan_passes(max(width, 2000), 2000, settings_for(preset)):
        w = max(1, round(width * p.scale))
        columns = tile_columns(w, p)
        assert len(columns) == math.ceil(w / p.core)
        assert columns[0][0] == 0 and columns[-1][1] == w
        for (a0, a1), (b0, b1) in zip(columns, columns[1:]):
            assert a1 == b0
        assert all(0 < x1 - x0 <= p.core for x0, x1 in columns)


# --- NMS --------------------------------------------------------------------------------
def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS: best score first, drop anything overlapping a kept box."""
    def iou_xyxy(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):  # stable for ties
        if all(iou_xyxy(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return sorted(keep)


def random_boxes(rng: np.random.Generator, n: int) -> Detections:
    """Boxes of 4 to 3000 px (some far bigger than a grid cell), in clusters that overlap."""
    centres = rng.uniform(-500, 5000, (n // 4, 2))
    xy = np.repeat(centres, 4, axis=0)[:n] + rng.normal(0, 20, (n, 2))
    size = np.exp(rng.uniform(np.log(4), np.log(3000), n))
    aspect = rng.uniform(0.6, 1.6, n)
    w, h = size, size * aspect
    boxes = np.stack([xy[:, 0] - w / 2, xy[:, 1] - h / 2, xy[:, 0] + w / 2, xy[:, 1] + h / 2], axis=1)
    scores = np.round(rng.uniform(0.3, 1.0, n), 2)  # rounded: ties happen
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), np.zeros((n, 5, 2), np.float32))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.1, 0.4, 0.7])
@pytest.mark.parametrize("cell", [48.0, 256.0])
def test_grid_nms_equals_greedy_nms(seed, threshold, cell):
    rng = np.random.default_rng(seed)
    dets = random_boxes(rng, 300)
    expected = brute_force_nms(dets.boxes.astype(np.float64), dets.scores, threshold)
    got = nms_indices(dets, threshold, cell=cell)
    assert got.tolist() == expected
    assert 0 < len(expected) < len(dets)  # the test set does suppress something


def test_nms_edge_cases():
    assert nms_indices(Detections.empty()).tolist() == []
    one = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.5], np.float32), np.zeros((1, 5, 2), np.float32))
    assert nms_indices(one).tolist() == [0]
    # A huge box over many small ones: only the best survives where they overlap enough.
    boxes = np.array([[0, 0, 4000, 4000], [10, 10, 3990, 3990], [100, 100, 120, 120]], np.float32)
    dets = Detections(boxes, np.array([0.6, 0.9, 0.8], np.float32), np.zeros((3, 5, 2), np.float32))
    assert nms_indices(dets, 0.4, cell=16).tolist() == [1, 2]


# --- seams in a real scan ---------------------------------------------------------------
@pytest.fixture(scope="module")
def seam_scan(tmp_path_factory, detector):
    """A 1400x700 image with faces on the native pass's tile seams, corners and edges."""
    folder = tmp_path_factory.mktemp("seams")
    width, height = 1400, 700
    settings = settings_for("balanced")
    native = next(p for p in plan_passes(width, height, settings) if p.scale == 1.0)
    core = native.core
    assert 70 < core < width / 2 and core < height < 2 * core
    s = 70  # px: a face the native pass owns
    assert native.min_size <= s < native.max_size
    places = {
        "vertical seam": (core, 250),
        "horizontal seam": (core / 2, core),
        "four tiles meet": (2 * core, core),
        "just left of a seam": (2 * core - 1.5, 180),
        "top-left corner": (56, 67),
        "bottom-right corner": (width - 56, height - 67),
        "top edge": (700, 67),
        "left edge": (56, 300),
        "right edge": (width - 56, 330),
        "open ground": (760, 620),
    }
    faces = [(cx, cy, s) for cx, cy in places.values()]
    path = write_image(folder / "seams.png", crowd(width, height, faces, seed=3))
    library = Library(str(folder / "seams.db"), create=True)
    result = scan_path(library, str(path), settings, detector=detector)
    return places, s, library.faces.all(result.capture.id), result, settings, path


def test_face_on_a_seam_is_found_once(seam_scan):
    places, s, faces, *_ = seam_scan
    for name, (cx, cy) in places.items():
        want = expected_box(cx, cy, s)
        hits = [f for f in faces if iou(want, f.box) > 0.3]
        assert len(hits) == 1, f"{name} at ({cx}, {cy}): {len(hits)} faces: {[f.box for f in hits]}"
    assert len(faces) == len(places), [f.box for f in faces]


def test_scan_runs_every_planned_tile(seam_scan):
    *_, result, settings, path = seam_scan
    _, frames = frames_of(str(path), 10**9)
    assert result.tiles == count_tiles(frames, settings)


def test_big_face_on_a_coarse_seam_is_found_once(tmp_path, detector):
    width, height = 1600, 800
    settings = settings_for("balanced")
    coarse = next(p for p in plan_passes(width, height, settings) if p.scale < 1)
    seam = coarse.core / coarse.scale  # native x of the coarse pass's first column edge
    big = 200
    assert coarse.min_size <= big < coarse.max_size and big >= 2 * 64
    faces = [(seam, 400, big), (300, 300, 60)]
    path = write_image(tmp_path / "coarse.png", crowd(width, height, faces, seed=4))
    library = Library(str(tmp_path / "coarse.db"), create=True)
    result = scan_path(library, str(path), settings, detector=detector)
    found = library.faces.all(result.capture.id)
    for cx, cy, s in faces:
        hits = [f for f in found if iou(expected_box(cx, cy, s), f.box) > 0.3]
        assert len(hits) == 1, (cx, cy, s, [f.box for f in found])
    assert len(found) == len(faces)


@pytest.mark.parametrize("preset, min_face", [("fast", None), ("balanced", None), ("balanced", 10), ("accurate", None)])
def test_every_preset_scans_a_jpeg(tmp_path, detector, preset, min_face):
    """Each pass reads the JPEG at its own scale (upscaled below 16 px faces), top to bottom."""
    faces = [(150, 150, 30), (420, 300, 70), (700, 500, 150)]
    path = write_image(tmp_path / "crowd.jpg", crowd(900, 700, faces, seed=6), Q=92)
    settings = settings_for(preset, min_face)
    assert len(plan_passes(900, 700, settings)) >= 2
    library = Library(str(tmp_path / "lib.db"), create=True)
    result = scan_path(library, str(path), settings, detector=detector)
    found = library.faces.all(result.capture.id)
    for cx, cy, s in faces:
        assert sum(iou(expected_box(cx, cy, s), f.box) > 0.5 for f in found) == 1, (cx, cy, s)
    assert len(found) == len(faces)


@pytest.mark.parametrize("preset", ["fast", "balanced"])
def test_column_stripes_find_what_full_width_bands_find(tmp_path, detector, monkeypatch, preset):
    """A wide image read in column stripes (each stripe's tiles from its own walk down the
    image) gives the faces full-width bands give, faces on the stripes' seams included;
    a scan interrupted between stripes resumes to the same faces."""
    from gigaface.engine import detect

    width, height = 2600, 900
    settings = settings_for(preset)
    native = next(p for p in plan_passes(width, height, settings) if p.scale == 1.0)
    faces = [(native.core * k + dx, 200 + 230 * (k % 3), 24 + 9 * k) for k, dx in enumerate((0, 3, -4, 1), start=1)]
    faces += [(130, 700, 40), (2450, 120, 90)]
    path = write_image(tmp_path / "wide.jpg", crowd(width, height, faces, seed=9), Q=92)
    full = detect.detect_image(str(path), settings, detector, blur_too=True)
    monkeypatch.setattr(detect, "STRIPE_BYTES", native.core * (native.core + 2 * native.margin) * 3)  # a column each
    assert len(detect.stripes(width, native)) == len(tile_columns(width, native)) > 3
    striped = detect.detect_image(str(path), settings, detector, blur_too=True)
    assert len(striped) == len(full) >= len(faces)
    np.testing.assert_allclose(striped.boxes[np.lexsort(striped.boxes.T)], full.boxes[np.lexsort(full.boxes.T)],
                               atol=1e-3)
    library = Library(str(tmp_path / "lib.db"), create=True)
    result = scan_path(library, str(path), settings, detector=detector)
    assert result.tiles == count_tiles(frames_of(str(path), 10**9)[1], settings)
    assert sorted(f.box for f in library.faces.all(result.capture.id, include_unlisted=True)) == sorted(
        tuple(float(v) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])) for b in striped.boxes)


_BAND_MEMORY = """
import sys
import numpy as np
from gigaface.process import configure_process, peak_rss_mb
configure_process()
from gigaface.engine import detect
from gigaface.engine.detections import Detections
from gigaface.engine.plan import plan_passes, settings_for
from gigaface.engine.source import probe

class Blind:  # cuts every tile, finds nothing: the reading alone is measured
    tile = 640
    def detect_tiles(self, tiles, fill, score_threshold):
        out = np.empty((640, 640, 3), np.uint8)
        for t in tiles:
            fill(t, out)
        return [Detections.empty() for _ in tiles]

info = probe(sys.argv[1])
settings = settings_for("balanced")
before = peak_rss_mb()
for p in plan_passes(info.width, info.height, settings):
    for _ in detect.detect_bands(info, p, Blind(), settings):
        pass
print(peak_rss_mb() - before)
"""


def test_memory_of_the_detect_stage_stays_flat_as_the_image_widens(tmp_path):
    """Reading a 60,000-px-wide JPEG takes little more memory than a 15,000-px one: bands
    are cut into column stripes. Full-width bands held two native bands of 115 MB each at
    60,000 px (measured: 274 MB more than at 15,000 px; with stripes 114 MB, most of it
    libvips' own decoded lines, which a sequential JPEG always needs)."""
    import subprocess
    import sys

    import pyvips

    grown = {}
    for width in (15_000, 60_000):
        noise = pyvips.Image.gaussnoise(width, 1300, mean=128, sigma=30).cast("uchar")
        path = tmp_path / f"{width}.jpg"
        noise.bandjoin([noise, noise]).write_to_file(str(path), Q=80)
        done = subprocess.run([sys.executable, "-c", _BAND_MEMORY, str(path)], capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr
        grown[width] = float(done.stdout.split()[-1])
    assert grown[60_000] - grown[15_000] < 200, grown


def test_describe_stripes_share_the_width_and_hold_every_region():
    from gigaface.ingest import describe_stripes

    assert describe_stripes(30_000, 1024, 3, 384) == [(0, 30_000)]  # one ring of 92 MB: no stripes
    stripes = describe_stripes(64_512, 1024, 3, 384)
    assert len(stripes) == 3 and stripes[0][0] == 0 and stripes[-1][1] == 64_512
    share = 64_512 / len(stripes)
    for k, (x0, x1) in enumerate(stripes):
        assert (x1 - x0) * 1024 * 3 <= 96 << 20
        # a region up to 2 x 352 px wide centred anywhere in the stripe's share fits its columns
        assert x0 <= max(0, k * share - 352) and x1 >= min(64_512, (k + 1) * share + 352)


def test_faces_of_a_wide_image_are_described_alike_in_column_stripes(tmp_path, detector, monkeypatch):
    """The describe stage reads very wide images a column stripe at a time (its full-width
    ring of rows was the scan's peak at 2 GP: 200 MB at 64k px); faces on the seams
    between stripes get the same quality, crop and embedding as with one stripe."""
    import gigaface.ingest as ingest

    width, height = 2400, 700
    faces = [(300, 200, 60), (598, 400, 80), (605, 150, 30), (1200, 450, 110), (1790, 300, 50), (2200, 520, 70)]
    path = write_image(tmp_path / "wide.jpg", crowd(width, height, faces, seed=4), Q=92)
    described = []
    for name, window_bytes in (("whole", ingest.DESCRIBE_WINDOW_BYTES), ("striped", 4 << 20)):
        monkeypatch.setattr(ingest, "DESCRIBE_WINDOW_BYTES", window_bytes)
        library = Library(str(tmp_path / f"{name}.db"), create=True)
        result = scan_path(library, str(path), settings_for("balanced"), detector=detector)
        ids, vectors = library.faces.embeddings()
        by_id = {f.id: f for f in library.faces.all(result.capture.id)}
        described.append({by_id[i].box: (by_id[i].quality, v) for i, v in zip(ids, vectors)})
    assert len(ingest.describe_stripes(width, 1024, 3, 384)) == 4  # with 4 MB: seams at 600, 1200 and 1800 px
    whole, striped = described
    assert len(whole) >= len(faces) and whole.keys() == striped.keys()
    for box in whole:
        assert whole[box][0] == striped[box][0]
        np.testing.assert_array_equal(whole[box][1], striped[box][1])
