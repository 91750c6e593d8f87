"""The library's stores on a real SQLite file: faces know their frame by index, storage keeps
what the scan gives it, the scan leaves out what was erased, and the migration steps line up."""
from __future__ import annotations

import sqlite3

import numpy as np

from gigaface.engine.detections import Detections
from gigaface.engine.merge import outside_erased
from gigaface.library import schema
from gigaface.engine.frames import Frame
from gigaface.library.store import Library


def _dets(boxes) -> Detections:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    landmarks = np.repeat(((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, :], 5, axis=1)
    return Detections(boxes, np.full(len(boxes), 0.9, np.float32), landmarks.astype(np.float32))


def _two_frame_capture(tmp_path):
    library = Library(str(tmp_path / "lib.db"), create=True)
    # Both frames name one file: only the index tells them apart.
    frames = [Frame("/photos/same.jpg", 0, 0, 100, 100), Frame("/photos/same.jpg", 100, 0, 100, 100)]
    capture = library.captures.create("k", "/photos/m.json", "manifest", 200, 100, frames, {})
    return library, capture


def test_faces_carry_their_frame_index(tmp_path):
    library, capture = _two_frame_capture(tmp_path)
    library.faces.replace(capture.id, np.array([1, 0]), _dets([[120, 10, 140, 30], [10, 10, 30, 30]]))
    faces = library.faces.all(capture.id)
    assert [(f.frame, f.box[0]) for f in faces] == [(1, 120.0), (0, 10.0)]
    assert all(f.source == "/photos/same.jpg" for f in faces)
    assert [f.frame for f in library.faces.undescribed(capture.id)] == [0, 1]  # described frame by frame


def test_storage_keeps_what_it_is_given_and_the_scan_leaves_out_the_erased(tmp_path):
    library, capture = _two_frame_capture(tmp_path)
    library.faces.replace(capture.id, np.array([0]), _dets([[10, 10, 30, 30]]))
    assert library.faces.erase([library.faces.all(capture.id)[0].id]) == 1
    erased = library.faces.erased_boxes(capture.id)
    assert erased.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    again = _dets([[12, 12, 28, 28], [50, 50, 70, 70]])  # the same person found again, and a stranger
    assert outside_erased(again, erased).tolist() == [False, True]
    library.faces.replace(capture.id, np.array([0, 0]), again)  # storage does not judge
    kept = library.faces.all(capture.id)
    assert len(kept) == 3 and sum(f.erased for f in kept) == 1  # the erased row survives a replace
    assert outside_erased(again, np.zeros((0, 4))).all()


def test_migration_steps_run_in_order_up_to_this_schema(tmp_path):
    versions = [step.version for step in schema.MIGRATIONS]
    assert versions == list(range(1, schema.SCHEMA_VERSION))
    library = Library(str(tmp_path / "new.db"), create=True)
    assert library.meta("schema") == str(schema.SCHEMA_VERSION)
    con = sqlite3.connect(library.path)
    columns = {r[1] for r in con.execute("PRAGMA table_info(searches)")}
    assert "chain" in columns  # added by the same ALTER a schema-3 library gets
