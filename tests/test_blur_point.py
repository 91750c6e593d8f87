"""Small faces are found and listed; faces too faint to list are still blurred: the two
operating points of the presets.

A synthetic crowd holds three big astronaut faces, six of 14-14.5 px and four of 10-10.5 px,
with no bigger face near the small ones (the hardest case for a pass that looks only where
the native pass saw faces). The default preset finds them all: it lists the big and the
14-px faces (found by its 2x pass; before it, the default listed nothing under 16 px), and
stores the 10-px ones, which it scores around its listing point, listed or only to be
blurred. Every export blurs all thirteen.
"""
from __future__ import annotations

import json
import shutil
import sqlite3

import cv2
import numpy as np
import pytest

from gigaface.library.files import capture_files
from gigaface.engine.detections import Detections, nms_indices
from gigaface.library.store import Library
from gigaface.service.worker import run_job
from gigaface.engine.plan import settings_for
from gigaface.engine.merge import merge
from bench.harness import run_cli
from tests.helpers import as_schema_4, astronaut, crowd, drop_column, expected_box, iou, read_image, write_image


BIG = [(150, 150, 70), (450, 200, 90), (800, 160, 60)]
SMALL = [(140, 520, 14), (330, 640, 14.5), (520, 520, 14), (710, 640, 14.5), (900, 520, 14), (1090, 640, 14.5)]
FAINT = [(250, 390, 10), (550, 390, 10.5), (850, 390, 10), (1050, 390, 10.5)]
LISTED = BIG + SMALL


def detail(rgb: np.ndarray, box) -> float:
    """High-frequency energy inside a face box: what a blur removes."""
    x, y, w, h = box
    crop = rgb[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
    return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


@pytest.fixture(scope="module")
def tiny_crowd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blur-point")
    image = write_image(folder / "crowd.png", crowd(1200, 800, BIG + SMALL + FAINT, seed=5))
    db = folder / "library.db"
    done = run_cli("scan", image, "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    return folder, image, db, json.loads(done.stdout)[0]


def test_scan_finds_every_face_from_10_px_and_lists_the_clear_ones(tiny_crowd):
    _, _, db, summary = tiny_crowd
    faces = json.loads(run_cli("faces", db, "--json").stdout)
    assert summary["faces"] == len(faces) >= len(LISTED)
    assert summary["stored"] >= len(LISTED) + len(FAINT)
    for cx, cy, s in LISTED:
        assert sum(iou(expected_box(cx, cy, s), f["box"]) > 0.5 for f in faces) == 1, (cx, cy, s)
    library = Library(str(db))
    stored = library.faces.all(library.captures.all()[0].id, include_unlisted=True)
    for cx, cy, s in FAINT:
        assert sum(iou(expected_box(cx, cy, s), f.box) > 0.3 for f in stored) == 1, (cx, cy, s)
    assert len(stored) == summary["stored"] <= len(LISTED) + len(FAINT) + 2  # hardly a false face


def test_unlisted_faces_are_boxes_only(tiny_crowd):
    _, _, db, summary = tiny_crowd
    rows = sqlite3.connect(db).execute(
        "SELECT listed, block IS NULL, crop IS NULL, quality IS NULL, described FROM faces").fetchall()
    unlisted = [r for r in rows if not r[0]]
    assert len(unlisted) == summary["stored"] - summary["faces"]
    assert all(r[1:] == (1, 1, 1, 0) for r in unlisted)  # no embedding, crop, quality: never described
    library = Library(str(db))
    capture = library.captures.all()[0].id
    hidden = [f.id for f in library.faces.all(capture, include_unlisted=True) if not f.listed]
    assert library.faces.by_id(hidden) == []
    assert library.faces.page(capture)[0] == library.faces.count(capture) == summary["faces"]


def test_find_ranks_only_listed_faces(tiny_crowd, tmp_path):
    _, _, db, _ = tiny_crowd
    reference = write_image(tmp_path / "astronaut.png", astronaut())
    done = run_cli("find", db, "--photo", reference, "--json", "--top", "50", "--sheet", tmp_path / "s.png")
    assert done.returncode == 0, done.stderr
    matches = json.loads(done.stdout)
    # The small faces are listed but, under --min-embed's 20 px, have no template to rank.
    assert len(matches) == len(BIG) and all(m["match"] for m in matches)


def assert_every_face_blurred(before: np.ndarray, after: np.ndarray) -> None:
    for cx, cy, s in BIG + SMALL + FAINT:
        box = expected_box(cx, cy, s)
        assert detail(after, box) < 0.35 * detail(before, box), (cx, cy, s)


def test_blur_blurs_the_tiny_faces_too(tiny_crowd, tmp_path):
    _, image, db, _ = tiny_crowd
    out = tmp_path / "public.png"
    done = run_cli("blur", image, "--db", db, "--out", out)
    assert done.returncode == 0, done.stderr
    assert_every_face_blurred(read_image(image), read_image(out))


def test_service_export_blurs_the_tiny_faces_too(tiny_crowd, tmp_path):
    _, image, db, _ = tiny_crowd
    library = Library(str(db))
    capture = library.captures.all()[0]
    run_job(str(db), capture.id)
    (export,) = capture_files(str(db), capture.id).exports(capture.frames)
    assert_every_face_blurred(read_image(image), read_image(export))


def test_a_consent_reveals_a_listed_face_never_a_tiny_one(tiny_crowd, tmp_path):
    """The small and faint faces are copies of the consenting person, but they have no
    embedding: only one big face (the one nearest the consent) is shown, every small one
    stays blurred."""
    _, image, db, _ = tiny_crowd
    Library(str(db)).flush_deleted()  # everything in the main file, so a copy of it is whole
    copy = tmp_path / "consented.db"
    shutil.copy(db, copy)
    shutil.copy(str(db) + ".key", str(copy) + ".key")
    reference = write_image(tmp_path / "astronaut.png", astronaut())
    done = run_cli("consent", "add", copy, "--photo", reference, "--name", "Eileen")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "public.png"
    done = run_cli("blur", image, "--db", copy, "--out", out)
    assert done.returncode == 0, done.stderr
    before, after = read_image(image), read_image(out)
    shown = [(cx, cy, s) for cx, cy, s in BIG
             if detail(after, expected_box(cx, cy, s)) > 0.8 * detail(before, expected_box(cx, cy, s))]
    assert len(shown) == 1
    for cx, cy, s in SMALL + FAINT:
        box = expected_box(cx, cy, s)
        assert detail(after, box) < 0.35 * detail(before, box), (cx, cy, s)


# --- the merge: the listed faces are what they were ----------------------------------------
def _dets(boxes, scores) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.zeros((len(boxes), 5, 2), np.float32))


def test_a_box_seen_only_to_blur_never_suppresses_a_listed_face():
    settings = settings_for("balanced")
    face = [100, 100, 110, 110]  # 10 px, score 0.6: listed
    brighter_but_small = [101, 101, 109, 109]  # 8 px, score 0.9: under min_face, overlaps it
    elsewhere = [300, 300, 310, 310]  # 10 px, faint: blurred only
    frame_of, merged = merge([], np.zeros(3, np.int64), _dets([face, brighter_but_small, elsewhere], [0.6, 0.9, 0.2]),
                             settings)
    kept = {tuple(b) for b in merged.boxes.tolist()}
    assert kept == {tuple(map(float, face)), tuple(map(float, elsewhere))}
    assert settings.listed(merged.scores, merged.sizes).tolist() == [True, False]


@pytest.mark.parametrize("seed", range(3))
def test_nms_with_listed_first_keeps_what_nms_of_the_listed_alone_keeps(seed):
    rng = np.random.default_rng(seed)
    n = 300
    centres = rng.uniform(0, 2000, (n // 3, 2)).repeat(3, axis=0) + rng.normal(0, 6, (n, 2))
    size = rng.uniform(6, 60, n)
    boxes = np.concatenate([centres - size[:, None] / 2, centres + size[:, None] / 2], axis=1)
    dets = _dets(boxes, np.round(rng.uniform(0.1, 1.0, n), 2))
    first = rng.random(n) < 0.5
    kept = nms_indices(dets, 0.4, first=first)
    alone = np.flatnonzero(first)[nms_indices(dets.select(first), 0.4)]
    assert sorted(set(kept) & set(np.flatnonzero(first))) == sorted(alone)
    assert len(kept) > len(alone)  # the others fill the places the listed leave


def test_a_library_from_before_the_blur_point_has_every_face_listed(tiny_crowd, tmp_path):
    _, _, db, _ = tiny_crowd
    Library(str(db)).flush_deleted()  # everything in the main file, so a copy of it is whole
    copy = tmp_path / "old.db"
    shutil.copy(db, copy)
    shutil.copy(str(db) + ".key", str(copy) + ".key")
    con = sqlite3.connect(copy, isolation_level=None)
    # The library as schema 3 made it: templates a face at a time, no listed column, no audit chain.
    drop_column(con, "faces", "listed")
    as_schema_4(con, Library(str(db)).key())
    con.executescript("ALTER TABLE searches DROP COLUMN chain;"
                      " DELETE FROM meta WHERE key = 'audit_head'; UPDATE meta SET value = '3' WHERE key = 'schema';")
    total = con.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    con.close()
    library = Library(str(copy))
    capture = library.captures.all()[0].id
    assert library.faces.count(capture) == library.faces.count(capture, include_unlisted=True) == total
