"""The SQLite library: what it opens and refuses, re-scans, and resuming a killed scan."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.engine.plan import settings_for
from gigaface.ingest import scan_path
from bench.harness import CLI, run_cli
from tests.conftest import shared_data
from tests.helpers import background, crowd, face_patch, paste_centred, read_image, write_image


# --- opening ------------------------------------------------------------------------------
def test_new_library_is_created(tmp_path):
    path = tmp_path / "new.db"
    library = Library(str(path), create=True)
    assert path.is_file()
    assert library.captures.all() == []
    library.close()
    reopened = Library(str(path))  # a library it made opens for reading
    assert reopened.captures.all() == []


def test_missing_library_is_not_created_for_reading(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(GigafaceError, match="no such library") as exc:
        Library(str(path))
    assert str(path) in str(exc.value)
    assert not path.exists()


def test_directory_is_not_a_library(tmp_path):
    with pytest.raises(GigafaceError, match="directory"):
        Library(str(tmp_path), create=True)


@pytest.mark.parametrize("create", [False, True])
def test_file_that_is_not_sqlite(tmp_path, create):
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(GigafaceError, match="not a gigaface library") as exc:
        Library(str(path), create=create)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == content


def _foreign_sqlite(path, with_meta: bool = False) -> bytes:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE foo (a INTEGER, b TEXT)")
    db.execute("INSERT INTO foo VALUES (1, 'one')")
    if with_meta:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('application', 'someone-else')")
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("with_meta", [False, True], ids=["plain", "with-meta-table"])
@pytest.mark.parametrize("create", [False, True])
def test_sqlite_file_of_another_program(tmp_path, create, with_meta):
    path = tmp_path / "other.db"
    before = _foreign_sqlite(path, with_meta)
    with pytest.raises(GigafaceError, match="another program") as exc:
        Library(str(path), create=create)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == before  # untouched: not converted to WAL, no tables added
    assert not (tmp_path / "other.db-wal").exists()


def test_empty_file_is_not_a_library_for_reading(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(GigafaceError, match="empty file"):
        Library(str(path))
    assert path.stat().st_size == 0


def test_library_from_a_newer_gigaface(tmp_path):
    path = tmp_path / "future.db"
    Library(str(path), create=True).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(GigafaceError, match="newer gigaface"):
        Library(str(path))


# --- re-scanning ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_crowd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rescan")
    faces = [(150, 150, 60), (450, 200, 90), (700, 420, 40), (250, 430, 120)]
    return write_image(folder / "crowd.png", crowd(900, 600, faces, seed=7)), len(faces)


def test_rescan_does_not_duplicate_faces(tmp_path, small_crowd, detector):
    path, n = small_crowd
    library = Library(str(tmp_path / "lib.db"), create=True)
    settings = settings_for("balanced")
    first = scan_path(library, str(path), settings, detector=detector)
    assert first.faces == n and not first.skipped
    ids = [f.id for f in library.faces.all()]
    again = scan_path(library, str(path), settings, detector=detector)
    assert again.skipped
    assert again.capture.id == first.capture.id
    assert len(library.captures.all()) == 1
    assert [f.id for f in library.faces.all()] == ids
    # Even when told to resume a finished capture.
    resumed = scan_path(library, str(path), settings, detector=detector, resume=True)
    assert resumed.skipped and len(library.faces.all()) == n


def test_rescan_with_other_settings_replaces_the_faces(tmp_path, small_crowd, detector):
    path, n = small_crowd
    library = Library(str(tmp_path / "lib.db"), create=True)
    first = scan_path(library, str(path), settings_for("balanced"), detector=detector)
    second = scan_path(library, str(path), settings_for("fast"), detector=detector)
    assert not second.skipped
    assert second.capture.id == first.capture.id
    assert len(library.captures.all()) == 1
    assert library.captures.get(first.capture.id).settings["preset"] == "fast"
    assert library.captures.get(first.capture.id).stage == "done"
    faces = library.faces.all()
    assert len(faces) == second.faces == n  # replaced, not added to
    assert library.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == n
    assert library.db.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0


def test_library_shared_by_two_captures(tmp_path, small_crowd, detector):
    path, n = small_crowd
    other = write_image(tmp_path / "other.png", crowd(500, 400, [(250, 200, 80)], seed=8))
    library = Library(str(tmp_path / "lib.db"), create=True)
    a = scan_path(library, str(path), settings_for("balanced"), detector=detector)
    b = scan_path(library, str(other), settings_for("balanced"), detector=detector)
    assert a.capture.id != b.capture.id
    assert len(library.faces.all(a.capture.id)) == n and len(library.faces.all(b.capture.id)) == 1
    assert {f.source for f in library.faces.all(b.capture.id)} == {str(other)}
    ids, vectors = library.faces.embeddings([b.capture.id])
    assert len(ids) == 1 and vectors.shape == (1, 128)


# --- resuming a killed scan ---------------------------------------------------------------
def _big_crowd(path):
    """5000x3000 JPEG: 15 tiles of 1000x1000 with three faces each, each a little different."""
    tiles = []
    for k in range(15):
        tile = background(1000, 1000, seed=k)
        for cx, cy, s in [(230, 260, 60), (680, 330, 95), (420, 760, 45)]:
            paste_centred(tile, face_patch(s), cx + 5 * (k % 5), cy + 7 * (k % 3))
        tiles.append(tile)
    rows = [np.concatenate(tiles[r * 5 : r * 5 + 5], axis=1) for r in range(3)]
    return write_image(path, np.concatenate(rows), Q=90)


# When to kill, per stage: enough finished work of that stage to resume from.
PROGRESS_SQL = {
    "detect": "SELECT COUNT(*) >= 2 FROM bands_done",
    "describe": "SELECT COUNT(*) >= 1 FROM faces WHERE described = 1",
}


def _reached(db_path, stage: str) -> bool:
    if not os.path.exists(db_path):
        return False
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            return bool(db.execute(PROGRESS_SQL[stage]).fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return False  # not created yet, or busy


def _faces_by_place(db_path):
    library = Library(str(db_path))
    (cap,) = library.captures.all()
    faces = sorted(library.faces.all(cap.id), key=lambda f: (round(f.box[1]), round(f.box[0])))
    ids, vectors = library.faces.embeddings([cap.id])
    by_id = dict(zip(ids.tolist(), vectors))
    return cap, faces, [by_id.get(f.id) for f in faces]


# A kill mid-describe is also among test_crash_safety's random kills (same faces after the
# resume); this one also checks that no finished band or batch is redone, so it runs in full
# for detect and, with `make test-all`, for describe.
@pytest.mark.parametrize("stage", ["detect", pytest.param("describe", marks=pytest.mark.slow)])
def test_killed_scan_resumes_to_the_same_faces(tmp_path, stage):
    image = _big_crowd(tmp_path / "big.jpg")
    killed_db, clean_db = tmp_path / "killed.db", tmp_path / "clean.db"

    proc = subprocess.Popen([*CLI, "scan", str(image), "--db", str(killed_db), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _reached(killed_db, stage):
            assert proc.poll() is None, f"scan ended before it could be interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline, f"the scan never got far enough into {stage}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the scan and any worker it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # The library survives the kill: it opens, it is consistent, the capture is unfinished.
    library = Library(str(killed_db))
    assert library.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (cap,) = library.captures.all()
    assert cap.stage == stage
    if stage == "detect":
        assert len(library.captures.bands_done(cap.id)) >= 2
    else:
        assert 0 < len(library.faces.all(cap.id)) - len(library.faces.undescribed(cap.id)) < len(library.faces.all(cap.id))
    library.close()

    resumed = run_cli("scan", image, "--db", killed_db, "--resume", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming capture" in resumed.stderr
    (summary,) = json.loads(resumed.stdout)
    assert summary["capture"] == cap.id and not summary["skipped"]

    clean = run_cli("scan", image, "--db", clean_db, "--quiet", "--json")
    assert clean.returncode == 0, clean.stderr
    (clean_summary,) = json.loads(clean.stdout)
    # The resumed run did not redo the bands finished before the kill.
    if cap.stage == "detect":
        assert summary["tiles"] < clean_summary["tiles"]

    cap_a, faces_a, emb_a = _faces_by_place(killed_db)
    cap_b, faces_b, emb_b = _faces_by_place(clean_db)
    assert cap_a.stage == cap_b.stage == "done"
    assert len(faces_a) == len(faces_b) == summary["faces"] == clean_summary["faces"]
    assert len(faces_b) >= 40  # most of the 45 pasted faces
    np.testing.assert_allclose([f.box for f in faces_a], [f.box for f in faces_b], atol=0.01)
    np.testing.assert_allclose([f.score for f in faces_a], [f.score for f in faces_b], atol=1e-5)
    np.testing.assert_allclose([f.landmarks for f in faces_a], [f.landmarks for f in faces_b], atol=0.01)
    assert [e is None for e in emb_a] == [e is None for e in emb_b]
    assert sum(e is not None for e in emb_a) > 35
    for ea, eb in zip(emb_a, emb_b):
        if ea is not None:
            np.testing.assert_allclose(ea, eb, atol=1e-4)


def test_the_python_api_runs_from_a_plain_script(tmp_path):
    """Four lines in a script, no `if __name__ == "__main__":` guard: the scan spawns no
    worker process that would import the script again (BrokenProcessPool before)."""
    group = read_image(shared_data("face_recognition_examples", "obama2.jpg"))
    photo = tmp_path / "two_people.jpg"
    write_image(photo, np.concatenate([group, group[:, ::-1]], axis=1))
    script = tmp_path / "script.py"
    script.write_text(f"""import gigaface
cap = gigaface.scan({str(photo)!r}, db={str(tmp_path / "api.db")!r})
print(len(cap.faces))
print(cap.find({str(shared_data("face_recognition_examples", "obama.jpg"))!r})[0].distance)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    faces, distance = done.stdout.split()
    assert int(faces) == 2 and float(distance) < 0.6


# --- what makes two files one capture -------------------------------------------------------
@pytest.fixture(scope="module")
def twin_tiffs(tmp_path_factory):
    """Two uncompressed TIFFs of one size whose first and last MiB are the same bytes: only
    the second has a face, in the middle rows."""
    folder = tmp_path_factory.mktemp("twins")
    empty = background(1200, 1000, seed=3)
    with_face = empty.copy()
    paste_centred(with_face, face_patch(110), 600, 500)
    a = write_image(folder / "a.tif", empty)
    b = write_image(folder / "b.tif", with_face)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b) > 3 << 20
    assert data_a[: 1 << 20] == data_b[: 1 << 20] and data_a[-(1 << 20):] == data_b[-(1 << 20):]
    return a, b


def test_two_images_differing_only_in_the_middle_are_two_captures(tmp_path, twin_tiffs, detector):
    a, b = twin_tiffs
    library = Library(str(tmp_path / "lib.db"), create=True)
    first = scan_path(library, str(a), settings_for("balanced"), detector=detector)
    second = scan_path(library, str(b), settings_for("balanced"), detector=detector)
    assert first.faces == 0
    assert not second.skipped and second.capture.id != first.capture.id  # not "already scanned: 0 faces"
    assert second.faces == 1 and library.faces.all(second.capture.id)[0].source == str(b)


def test_a_capture_with_an_older_key_is_found_and_rekeyed(tmp_path, twin_tiffs, detector):
    from gigaface.engine.content_key import capture_key, legacy_capture_key

    a, b = twin_tiffs
    library = Library(str(tmp_path / "lib.db"), create=True)
    first = scan_path(library, str(b), settings_for("balanced"), detector=detector)
    library.db.execute("UPDATE captures SET key = ? WHERE id = ?", (legacy_capture_key(str(b)), first.capture.id))
    again = scan_path(library, str(b), settings_for("balanced"), detector=detector)  # the same path: the same capture
    assert again.skipped and again.capture.id == first.capture.id and again.faces == 1
    assert library.captures.get(first.capture.id).key == capture_key(str(b))
    # The other twin shares the old key, but not the path: not taken for that capture.
    library.db.execute("UPDATE captures SET key = ? WHERE id = ?", (legacy_capture_key(str(b)), first.capture.id))
    other = scan_path(library, str(a), settings_for("balanced"), detector=detector)
    assert not other.skipped and other.capture.id != first.capture.id and other.faces == 0
    assert library.faces.count(first.capture.id) == 1


def test_raw_detections_come_back_whole_or_for_one_frame(tmp_path, monkeypatch):
    """The merge reads a capture's raw detections, a seeded pass those of its frame only
    (a camera array's other frames are not read for it), a block of rows at a time."""
    from gigaface.engine.detections import Detections
    from gigaface.engine.frames import Frame
    from gigaface.library import captures

    monkeypatch.setattr(captures, "DETECTION_ROWS", 3)  # blocks smaller than a band
    library = Library(str(tmp_path / "lib.db"), create=True)
    frames = [Frame("a.jpg", 0, 0, 100, 100), Frame("b.jpg", 100, 0, 100, 100)]
    capture, _ = library.captures.find_or_create("k", "m.json", "manifest", 200, 100, frames, {})
    rng = np.random.default_rng(0)
    stored = {}
    for frame, count in ((0, 5), (1, 4)):
        corners = rng.uniform(0, 80, (count, 2)).astype(np.float32)
        dets = Detections(np.concatenate([corners, corners + 15], axis=1), rng.random(count).astype(np.float32),
                          rng.uniform(0, 100, (count, 5, 2)).astype(np.float32))
        library.captures.finish_band(capture.id, frame, 0, 0, dets)
        stored[frame] = dets
    frame_of, every = library.captures.detections(capture.id)
    assert frame_of.tolist() == [0] * 5 + [1] * 4
    np.testing.assert_array_equal(every.boxes, np.concatenate([stored[0].boxes, stored[1].boxes]))
    np.testing.assert_array_equal(every.landmarks, np.concatenate([stored[0].landmarks, stored[1].landmarks]))
    frame_of, second = library.captures.detections(capture.id, 1)
    assert frame_of.tolist() == [1] * 4
    for field in ("boxes", "scores", "landmarks"):
        np.testing.assert_array_equal(getattr(second, field), getattr(stored[1], field))
    assert len(library.captures.detections(capture.id, 2)[1]) == 0
