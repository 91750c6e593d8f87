"""Captures: what was scanned, how far its scan got (stage, bands done, raw detections),
and how long it is kept."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from gigaface.engine.detections import Detections
from gigaface.errors import GigafaceError
from gigaface.library.records import CaptureRecord
from gigaface.engine.frames import Frame

DETECTION_ROWS = 8192  # raw detections read from SQLite at a time

if TYPE_CHECKING:
    from gigaface.library.store import Library

_COLUMNS = ("id, key, source, kind, width, height, frames, settings, stage, created_at, finished_at,"
            " elapsed, expires_at")


class CaptureStore:
    """`library.captures`: the captures table, its scan progress and its retention."""

    def __init__(self, library: Library):
        self._lib = library

    # --- records --------------------------------------------------------------------
    def by_key(self, key: str) -> CaptureRecord | None:
        row = self._lib.db.execute(f"SELECT {_COLUMNS} FROM captures WHERE key = ?", (key,)).fetchone()
        return _capture(row) if row else None

    def get(self, capture_id: int) -> CaptureRecord:
        row = self._lib.db.execute(f"SELECT {_COLUMNS} FROM captures WHERE id = ?", (capture_id,)).fetchone()
        if not row:
            raise GigafaceError(f"{self._lib.path}: no capture {capture_id}")
        return _capture(row)

    def all(self) -> list[CaptureRecord]:
        return [_capture(r) for r in self._lib.db.execute(f"SELECT {_COLUMNS} FROM captures ORDER BY id")]

    def create(self, key: str, source: str, kind: str, width: int, height: int,
               frames: Iterable[Frame], settings: dict) -> CaptureRecord:
        """A new capture; when another process created the one of this key meanwhile, that one."""
        return self.find_or_create(key, source, kind, width, height, frames, settings)[0]

    def find_or_create(self, key: str, source: str, kind: str, width: int, height: int,
                       frames: Iterable[Frame], settings: dict) -> tuple[CaptureRecord, bool]:
        """The capture of this key, made now if missing, and whether it was made: looked up
        and inserted in one write transaction, so two scans of one image make one capture."""
        db = self._lib.db
        frames_json = json.dumps([f.__dict__ for f in frames])
        with self._lib.transaction():
            row = db.execute("SELECT id FROM captures WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return self.get(row[0]), False
            # Ids are never reused, so a stale link or a cached tile never shows another
            # capture: the highest id ever given is kept in meta.
            last = max(db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0],
                       int(self._lib.meta("last_capture_id") or 0))
            now = time.time()
            days = self.retention_days()
            db.execute(
                "INSERT INTO captures (id, key, source, kind, width, height, frames, settings, stage, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'detect', ?, ?)",
                (last + 1, key, source, kind, width, height, frames_json, json.dumps(settings), now,
                 now + days * 86400 if days else None),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_capture_id', ?)", (str(last + 1),))
        return self.get(last + 1), True

    def rekey(self, capture_id: int, key: str) -> CaptureRecord:
        """Give a capture the key of its content (an older gigaface's key was weaker)."""
        with self._lib.transaction() as db:
            db.execute("UPDATE captures SET key = ? WHERE id = ?", (key, capture_id))
        return self.get(capture_id)

    def restart(self, capture_id: int, settings: dict) -> CaptureRecord:
        """Forget everything a capture's earlier scan found, keeping its id (and its erased
        faces: a person who asked to be forgotten stays forgotten through a re-scan)."""
        with self._lib.transaction() as db:
            for table in ("bands_done", "detections"):
                db.execute(f"DELETE FROM {table} WHERE capture_id = ?", (capture_id,))
            db.execute("DELETE FROM faces WHERE capture_id = ? AND erased = 0", (capture_id,))
            db.execute("DELETE FROM face_blocks WHERE capture_id = ?", (capture_id,))  # erased faces have none
            db.execute("UPDATE captures SET settings = ?, stage = 'detect', finished_at = NULL,"
                       " elapsed = 0 WHERE id = ?", (json.dumps(settings), capture_id))
        return self.get(capture_id)

    def relocate(self, capture_id: int, path: str) -> CaptureRecord:
        """Point a single-image capture at the path its file now has."""
        frame = self.get(capture_id).frames[0]
        moved = Frame(path, frame.x, frame.y, frame.width, frame.height)
        with self._lib.transaction() as db:
            db.execute("UPDATE captures SET source = ?, frames = ? WHERE id = ?",
                       (path, json.dumps([moved.__dict__]), capture_id))
        return self.get(capture_id)

    def delete(self, capture_id: int) -> None:
        with self._lib.transaction() as db:
            db.execute("DELETE FROM captures WHERE id = ?", (capture_id,))

    # --- scan progress ----------------------------------------------------------------
    def set_stage(self, capture_id: int, stage: str, elapsed: float | None = None) -> None:
        """The capture's stage; at 'done', its templates are packed into full blocks first."""
        finished = time.time() if stage == "done" else None
        if stage == "done":
            self._lib.faces.pack(capture_id)
        with self._lib.transaction() as db:
            db.execute("UPDATE captures SET stage = ?, finished_at = ? WHERE id = ?", (stage, finished, capture_id))
            if elapsed is not None:
                db.execute("UPDATE captures SET elapsed = elapsed + ? WHERE id = ?", (elapsed, capture_id))

    def bands_done(self, capture_id: int) -> set[tuple[int, int, int]]:
        rows = self._lib.db.execute("SELECT frame, pass, band FROM bands_done WHERE capture_id = ?", (capture_id,))
        return {tuple(r) for r in rows}

    def finish_band(self, capture_id: int, frame: int, pass_index: int, band: int, dets: Detections) -> None:
        """Store one band's detections and mark it done, atomically: the unit of resume."""
        rows = [
            (capture_id, frame, pass_index, band, *map(float, b), float(s), lm.astype(np.float32).tobytes())
            for b, s, lm in zip(dets.boxes, dets.scores, dets.landmarks)
        ]
        with self._lib.transaction() as db:
            db.execute("DELETE FROM detections WHERE capture_id=? AND frame=? AND pass=? AND band=?",
                       (capture_id, frame, pass_index, band))
            db.executemany("INSERT INTO detections VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            db.execute("INSERT OR REPLACE INTO bands_done VALUES (?,?,?,?)", (capture_id, frame, pass_index, band))

    def detections(self, capture_id: int, frame: int | None = None) -> tuple[np.ndarray, Detections]:
        """All raw detections of a capture (or of one of its frames): (frame index per
        detection, detections).

        Read a few thousand rows at a time into arrays (68 bytes of numbers a row): a list
        of all the rows costs ~340 bytes of Python objects a row, and a gigapixel scan
        stores several hundred thousand raw detections before its merge."""
        # The scan holding the capture's lock is the only writer of its detections.
        db = self._lib.db
        where, args = ("capture_id = ?", (capture_id,)) if frame is None else \
            ("capture_id = ? AND frame = ?", (capture_id, frame))
        count = db.execute(f"SELECT COUNT(*) FROM detections WHERE {where}", args).fetchone()[0]
        frames, scores = np.empty(count, np.int64), np.empty(count, np.float32)
        boxes, landmarks = np.empty((count, 4), np.float32), np.empty((count, 5, 2), np.float32)
        cursor = db.execute(f"SELECT frame, x1, y1, x2, y2, score, landmarks FROM detections WHERE {where}"
                            " ORDER BY frame, pass, band, rowid", args)
        done = 0
        while rows := cursor.fetchmany(min(DETECTION_ROWS, count - done)):
            part = slice(done, done + len(rows))
            frames[part] = [r[0] for r in rows]
            boxes[part] = [r[1:5] for r in rows]
            scores[part] = [r[5] for r in rows]
            landmarks[part] = np.frombuffer(b"".join(r[6] for r in rows), np.float32).reshape(-1, 5, 2)
            done += len(rows)
        return frames, Detections(boxes, scores, landmarks)

    # --- retention --------------------------------------------------------------------
    def retention_days(self) -> float | None:
        """Days a new capture is kept (None: until removed by hand)."""
        value = self._lib.meta("retention_days")
        return None if value in (None, "none") else float(value)

    def set_retention(self, days: float | None, existing: bool = False) -> None:
        """The library's retention for new captures; `existing` re-dates the captures it has
        from their creation time too."""
        if days is not None and not 0 < days <= 36500:
            raise GigafaceError("retention is more than 0 and at most 36,500 days (100 years), or --forever")
        with self._lib.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('retention_days', ?)",
                       ("none" if days is None else repr(float(days)),))
            if existing:
                db.execute("UPDATE captures SET expires_at = CASE WHEN ? IS NULL THEN NULL"
                           " ELSE created_at + ? * 86400 END", (days, days))

    def set_expiry(self, capture_id: int, expires_at: float | None) -> None:
        with self._lib.transaction() as db:
            db.execute("UPDATE captures SET expires_at = ? WHERE id = ?", (expires_at, capture_id))

    def expired(self, now: float | None = None) -> list[CaptureRecord]:
        now = time.time() if now is None else now
        return [c for c in self.all() if c.expires_at is not None and c.expires_at <= now]


def _capture(row) -> CaptureRecord:
    frames = tuple(Frame(**f) for f in json.loads(row[6]))
    return CaptureRecord(row[0], row[1], row[2], row[3], row[4], row[5], frames, json.loads(row[7]),
                         row[8], row[9], row[10], row[11], row[12])
