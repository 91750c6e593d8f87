"""The face index: one SQLite file holding captures, their scan progress and their faces."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .detections import Detections
from .errors import GigafaceError

APPLICATION = "gigaface"
SCHEMA_VERSION = 2
EMBEDDING_DIM = 128

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE captures (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,         -- identifies the input, so a re-scan finds its capture
    source TEXT NOT NULL,             -- image path, or manifest path for a camera-array capture
    kind TEXT NOT NULL,               -- 'image' or 'manifest'
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    frames TEXT NOT NULL,             -- JSON [{path, x, y, width, height}]
    settings TEXT NOT NULL,           -- JSON scan settings
    stage TEXT NOT NULL,              -- detect, merge, describe, done
    created_at REAL NOT NULL,
    finished_at REAL,
    elapsed REAL NOT NULL DEFAULT 0   -- seconds of scanning, summed over resumed runs
);
CREATE TABLE bands_done (
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    frame INTEGER NOT NULL, pass INTEGER NOT NULL, band INTEGER NOT NULL,
    PRIMARY KEY (capture_id, frame, pass, band)
);
CREATE TABLE detections (               -- raw per-pass detections, kept until the merge
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    frame INTEGER NOT NULL, pass INTEGER NOT NULL, band INTEGER NOT NULL,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL, score REAL, landmarks BLOB
);
CREATE INDEX detections_capture ON detections(capture_id);
CREATE TABLE faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an id names one face for good
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    frame INTEGER NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,  -- panorama pixels
    score REAL NOT NULL,
    landmarks TEXT NOT NULL,          -- JSON [[x, y] x 5], panorama pixels, from the detector
    quality TEXT,                     -- JSON {size, sharpness, frontalness}
    embedding BLOB,                   -- 128 float32, NULL for faces too small to describe
    crop BLOB,                        -- small JPEG of the face for contact sheets and viewers
    described INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX faces_capture ON faces(capture_id);
""" + """
CREATE TABLE IF NOT EXISTS jobs (      -- the service's background work on a capture (schema 2)
    capture_id INTEGER PRIMARY KEY REFERENCES captures(id) ON DELETE CASCADE,
    state TEXT NOT NULL,              -- queued, running, done, failed
    stage TEXT NOT NULL,              -- detect, merge, describe, pyramid, export, done
    done INTEGER NOT NULL DEFAULT 0,  -- units of the stage finished (tiles, faces)
    total INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owned_file TEXT,                  -- an uploaded image the library owns: deleted with the capture
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (    -- API tokens, stored as SHA-256 of the secret (schema 2)
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,               -- admin or viewer
    hash TEXT UNIQUE NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""
# Tables added after schema 1; created when an older library is opened.
MIGRATIONS = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS jobs"):]


@dataclass(frozen=True)
class Frame:
    """One image of a capture, placed at (x, y) in the capture's panorama."""

    path: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class CaptureRecord:
    id: int
    key: str
    source: str
    kind: str
    width: int
    height: int
    frames: tuple[Frame, ...]
    settings: dict
    stage: str
    created_at: float
    finished_at: float | None
    elapsed: float


@dataclass(frozen=True)
class Face:
    id: int
    capture: int
    source: str
    box: tuple[float, float, float, float]  # x, y, w, h in panorama pixels
    score: float
    landmarks: list[list[float]]
    quality: dict = field(default_factory=dict)
    embedded: bool = False

    def to_dict(self) -> dict:
        return {
            "id": self.id, "capture": self.capture, "source": self.source,
            "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "quality": self.quality, "embedded": self.embedded,
        }


@dataclass(frozen=True)
class Job:
    """The service's background work on one capture: scan, then pyramid and export."""

    capture: int
    state: str
    stage: str
    done: int
    total: int
    faces: int
    error: str | None
    owned_file: str | None
    updated_at: float

    def to_dict(self) -> dict:
        return {"state": self.state, "stage": self.stage, "error": self.error,
                "progress": {"done": self.done, "total": self.total, "faces": self.faces}}


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    created_at: float
    last_used: float | None
    revoked: bool


class Library:
    """A gigaface library file. Opened for writing by one scan at a time."""

    def __init__(self, path: str, create: bool = False):
        self.path = path
        if not os.path.exists(path) and not create:
            raise GigafaceError(f"{path}: no such library (scan an image into it first)")
        if os.path.isdir(path):
            raise GigafaceError(f"{path}: is a directory, not a library file")
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise GigafaceError(f"{path}: not a gigaface library ({exc})") from None
        if not tables:
            if not create:
                raise GigafaceError(f"{path}: empty file, not a gigaface library")
            self._create()
        elif "meta" not in tables or self._meta("application") != APPLICATION:
            raise GigafaceError(f"{path}: an SQLite file of another program, not a gigaface library")
        elif not str(self._meta("schema") or 0).isdecimal():
            raise GigafaceError(f"{path}: a damaged gigaface library (schema {self._meta('schema')!r})")
        elif int(self._meta("schema") or 0) > SCHEMA_VERSION:
            raise GigafaceError(f"{path}: made by a newer gigaface (schema {self._meta('schema')})")
        elif not {"captures", "faces"} <= tables:
            raise GigafaceError(f"{path}: a damaged gigaface library (no captures or faces table)")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        if tables and int(self._meta("schema") or 0) < SCHEMA_VERSION:
            self.db.executescript(f"BEGIN; {MIGRATIONS} UPDATE meta SET value = '{SCHEMA_VERSION}'"
                                  " WHERE key = 'schema'; COMMIT;")

    def _meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return row[0] if row else None

    def _create(self) -> None:
        # One script, one transaction: a library file is either complete or absent.
        self.db.executescript(
            f"BEGIN; {SCHEMA} INSERT INTO meta VALUES ('application', '{APPLICATION}'),"
            f" ('schema', '{SCHEMA_VERSION}'); COMMIT;")

    def is_own_file(self, path: str) -> bool:
        """Whether `path` is this library's database, its WAL or its shared memory: opening
        and closing one of those in this process would drop SQLite's locks on it."""
        real = os.path.realpath(path)
        return any(real == os.path.realpath(self.path + suffix) for suffix in ("", "-wal", "-shm", "-journal"))

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    # --- captures -------------------------------------------------------------------
    def capture_by_key(self, key: str) -> CaptureRecord | None:
        row = self.db.execute(f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE key = ?", (key,)).fetchone()
        return _capture(row) if row else None

    def capture(self, capture_id: int) -> CaptureRecord:
        row = self.db.execute(f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE id = ?", (capture_id,)).fetchone()
        if not row:
            raise GigafaceError(f"{self.path}: no capture {capture_id}")
        return _capture(row)

    def captures(self) -> list[CaptureRecord]:
        return [_capture(r) for r in self.db.execute(f"SELECT {_CAPTURE_COLUMNS} FROM captures ORDER BY id")]

    def create_capture(self, key: str, source: str, kind: str, width: int, height: int,
                       frames: Iterable[Frame], settings: dict) -> CaptureRecord:
        frames_json = json.dumps([f.__dict__ for f in frames])
        with self.transaction():
            # Ids are never reused, so a stale link or a cached tile never shows another
            # capture: the highest id ever given is kept in meta.
            last = max(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0],
                       int(self._meta("last_capture_id") or 0))
            self.db.execute(
                "INSERT INTO captures (id, key, source, kind, width, height, frames, settings, stage, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'detect', ?)",
                (last + 1, key, source, kind, width, height, frames_json, json.dumps(settings), time.time()),
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_capture_id', ?)", (str(last + 1),))
        return self.capture(last + 1)

    def restart_capture(self, capture_id: int, settings: dict) -> CaptureRecord:
        """Forget everything a capture's earlier scan found, keeping its id."""
        with self.transaction():
            for table in ("bands_done", "detections", "faces"):
                self.db.execute(f"DELETE FROM {table} WHERE capture_id = ?", (capture_id,))
            self.db.execute("UPDATE captures SET settings = ?, stage = 'detect', finished_at = NULL,"
                            " elapsed = 0 WHERE id = ?", (json.dumps(settings), capture_id))
        return self.capture(capture_id)

    def relocate(self, capture_id: int, path: str) -> CaptureRecord:
        """Point a single-image capture at the path its file now has."""
        capture = self.capture(capture_id)
        frame = capture.frames[0]
        moved = Frame(path, frame.x, frame.y, frame.width, frame.height)
        with self.transaction():
            self.db.execute("UPDATE captures SET source = ?, frames = ? WHERE id = ?",
                            (path, json.dumps([moved.__dict__]), capture_id))
        return self.capture(capture_id)

    def delete_capture(self, capture_id: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM captures WHERE id = ?", (capture_id,))

    def set_stage(self, capture_id: int, stage: str, elapsed: float | None = None) -> None:
        finished = time.time() if stage == "done" else None
        with self.transaction():
            self.db.execute("UPDATE captures SET stage = ?, finished_at = ? WHERE id = ?",
                            (stage, finished, capture_id))
            if elapsed is not None:
                self.db.execute("UPDATE captures SET elapsed = elapsed + ? WHERE id = ?", (elapsed, capture_id))

    # --- detection progress ---------------------------------------------------------
    def bands_done(self, capture_id: int) -> set[tuple[int, int, int]]:
        rows = self.db.execute("SELECT frame, pass, band FROM bands_done WHERE capture_id = ?", (capture_id,))
        return {tuple(r) for r in rows}

    def finish_band(self, capture_id: int, frame: int, pass_index: int, band: int, dets: Detections) -> None:
        """Store one band's detections and mark it done, atomically: the unit of resume."""
        rows = [
            (capture_id, frame, pass_index, band, *map(float, b), float(s), lm.astype(np.float32).tobytes())
            for b, s, lm in zip(dets.boxes, dets.scores, dets.landmarks)
        ]
        with self.transaction():
            self.db.execute("DELETE FROM detections WHERE capture_id=? AND frame=? AND pass=? AND band=?",
                            (capture_id, frame, pass_index, band))
            self.db.executemany("INSERT INTO detections VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self.db.execute("INSERT OR REPLACE INTO bands_done VALUES (?,?,?,?)",
                            (capture_id, frame, pass_index, band))

    def detections(self, capture_id: int) -> tuple[np.ndarray, Detections]:
        """All raw detections of a capture: (frame index per detection, detections)."""
        rows = self.db.execute(
            "SELECT frame, x1, y1, x2, y2, score, landmarks FROM detections WHERE capture_id = ?"
            " ORDER BY frame, pass, band, rowid", (capture_id,)).fetchall()
        if not rows:
            return np.zeros((0,), np.int64), Detections.empty()
        frames = np.array([r[0] for r in rows], np.int64)
        boxes = np.array([r[1:5] for r in rows], np.float32)
        scores = np.array([r[5] for r in rows], np.float32)
        landmarks = np.stack([np.frombuffer(r[6], np.float32).reshape(5, 2) for r in rows])
        return frames, Detections(boxes, scores, landmarks)

    def replace_faces(self, capture_id: int, frames: np.ndarray, dets: Detections) -> None:
        """The merged faces of a capture, replacing any earlier merge; raw detections go."""
        rows = []
        for frame, b, s, lm in zip(frames, dets.boxes, dets.scores, dets.landmarks):
            x1, y1, x2, y2 = map(float, b)
            rows.append((capture_id, int(frame), x1, y1, x2 - x1, y2 - y1, float(s),
                         json.dumps([[round(float(x), 2), round(float(y), 2)] for x, y in lm])))
        with self.transaction():
            self.db.execute("DELETE FROM faces WHERE capture_id = ?", (capture_id,))
            self.db.executemany("INSERT INTO faces (capture_id, frame, x, y, w, h, score, landmarks)"
                                " VALUES (?,?,?,?,?,?,?,?)", rows)
            self.db.execute("DELETE FROM detections WHERE capture_id = ?", (capture_id,))
            self.db.execute("UPDATE captures SET stage = 'describe' WHERE id = ?", (capture_id,))

    # --- description ----------------------------------------------------------------
    def undescribed(self, capture_id: int) -> list[Face]:
        return self._faces("WHERE f.capture_id = ? AND f.described = 0 ORDER BY f.frame, f.y + f.h",
                           (capture_id,))

    def save_descriptions(self, rows: list[tuple[int, dict, np.ndarray | None, bytes | None]]) -> None:
        """(face id, quality, embedding or None, crop JPEG) for a batch of faces, atomically."""
        with self.transaction():
            self.db.executemany(
                "UPDATE faces SET quality = ?, embedding = ?, crop = ?, described = 1 WHERE id = ?",
                [(json.dumps(q), None if e is None else np.asarray(e, np.float32).tobytes(), c, i)
                 for i, q, e, c in rows])

    # --- queries --------------------------------------------------------------------
    def faces(self, capture_id: int | None = None) -> list[Face]:
        if capture_id is None:
            return self._faces("ORDER BY f.id", ())
        return self._faces("WHERE f.capture_id = ? ORDER BY f.id", (capture_id,))

    def faces_by_id(self, ids: list[int]) -> list[Face]:
        found: list[Face] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found += self._faces(f"WHERE f.id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        return found

    def face_page(self, capture_id: int, offset: int = 0, limit: int = 1000, min_size: float | None = None,
                  max_size: float | None = None, min_score: float | None = None,
                  min_sharpness: float | None = None, min_frontalness: float | None = None) -> tuple[int, list[Face]]:
        """(how many faces pass the filters, one page of them in id order)."""
        where, args = ["f.capture_id = ?"], [capture_id]
        for sql, value in (("MAX(f.w, f.h) >= ?", min_size), ("MAX(f.w, f.h) <= ?", max_size),
                           ("f.score >= ?", min_score),
                           ("json_extract(f.quality, '$.sharpness') >= ?", min_sharpness),
                           ("json_extract(f.quality, '$.frontalness') >= ?", min_frontalness)):
            if value is not None:
                where.append(sql)
                args.append(value)
        clause = "WHERE " + " AND ".join(where)
        total = self.db.execute(f"SELECT COUNT(*) FROM faces f {clause}", args).fetchone()[0]
        return total, self._faces(f"{clause} ORDER BY f.id LIMIT ? OFFSET ?", (*args, limit, offset))

    def face_count(self, capture_id: int, embedded: bool = False) -> int:
        where = " AND embedding IS NOT NULL" if embedded else ""
        return self.db.execute(f"SELECT COUNT(*) FROM faces WHERE capture_id = ?{where}", (capture_id,)).fetchone()[0]

    def _faces(self, where: str, args: tuple) -> list[Face]:
        sources = {c.id: c.frames for c in self.captures()}
        rows = self.db.execute(
            "SELECT f.id, f.capture_id, f.frame, f.x, f.y, f.w, f.h, f.score, f.landmarks, f.quality,"
            f" f.embedding IS NOT NULL FROM faces f {where}", args)
        return [Face(r[0], r[1], sources[r[1]][r[2]].path, (r[3], r[4], r[5], r[6]), r[7],
                     json.loads(r[8]), json.loads(r[9]) if r[9] else {}, bool(r[10])) for r in rows]

    def embeddings(self, capture_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, (N, 128) float32) of every described face in the given captures."""
        sql = "SELECT id, embedding FROM faces WHERE embedding IS NOT NULL"
        args: tuple = ()
        if capture_ids is not None:
            ids = list(capture_ids)
            sql += f" AND capture_id IN ({','.join('?' * len(ids))})"
            args = tuple(ids)
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0, EMBEDDING_DIM), np.float32)
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([np.frombuffer(r[1], np.float32) for r in rows]))

    def crop(self, face_id: int) -> bytes | None:
        row = self.db.execute("SELECT crop FROM faces WHERE id = ?", (face_id,)).fetchone()
        return row[0] if row else None


    # --- background jobs (the service) ---------------------------------------------------
    def put_job(self, capture_id: int, state: str = "queued", stage: str = "detect",
                owned_file: str | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO jobs (capture_id, state, stage, owned_file, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(capture_id) DO UPDATE SET state = excluded.state, stage = excluded.stage,"
                " error = NULL, done = 0, total = 0,"
                " owned_file = COALESCE(excluded.owned_file, jobs.owned_file), updated_at = excluded.updated_at",
                (capture_id, state, stage, owned_file, time.time()))

    def update_job(self, capture_id: int, **fields) -> None:
        allowed = {"state", "stage", "done", "total", "faces", "error"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"job fields: {sorted(allowed)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction():
            self.db.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE capture_id = ?",
                            (*fields.values(), time.time(), capture_id))

    def job(self, capture_id: int) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE capture_id = ?", (capture_id,)).fetchone()
        return Job(*row) if row else None

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        rows = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY capture_id").fetchall()
        wanted = set(states) if states is not None else None
        return [Job(*r) for r in rows if wanted is None or r[1] in wanted]

    # --- API tokens ----------------------------------------------------------------------
    def add_token(self, name: str, role: str, digest: str) -> Token:
        with self.transaction():
            cur = self.db.execute("INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                                  (name, role, digest, time.time()))
        return next(t for t in self.tokens() if t.id == cur.lastrowid)

    def tokens(self) -> list[Token]:
        rows = self.db.execute("SELECT id, name, role, created_at, last_used, revoked FROM tokens ORDER BY id")
        return [Token(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def token_by_hash(self, digest: str) -> Token | None:
        row = self.db.execute("SELECT id, name, role, created_at, last_used, revoked FROM tokens"
                              " WHERE hash = ? AND revoked = 0", (digest,)).fetchone()
        return Token(row[0], row[1], row[2], row[3], row[4], False) if row else None

    def touch_token(self, token_id: int) -> None:
        with self.transaction():
            self.db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (time.time(), token_id))

    def revoke_token(self, token_id: int) -> None:
        with self.transaction():
            cur = self.db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))
        if not cur.rowcount:
            raise GigafaceError(f"{self.path}: no token {token_id}")


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


_JOB_COLUMNS = "capture_id, state, stage, done, total, faces, error, owned_file, updated_at"
_CAPTURE_COLUMNS = "id, key, source, kind, width, height, frames, settings, stage, created_at, finished_at, elapsed"


def _capture(row) -> CaptureRecord:
    frames = tuple(Frame(**f) for f in json.loads(row[6]))
    return CaptureRecord(row[0], row[1], row[2], row[3], row[4], row[5], frames, json.loads(row[7]),
                         row[8], row[9], row[10], row[11])
