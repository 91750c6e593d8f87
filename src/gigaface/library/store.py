"""The face index: one SQLite file holding captures, their scan progress and their faces."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from gigaface.library import audit_chain
from gigaface.library.audit_chain import AuditVerdict, local_user
from gigaface.engine.detections import Detections
from gigaface.errors import GigafaceError
from gigaface.paths import folder_of, link_new_file, os_reason, sqlite_write_problem
from gigaface.library.sealing import ENV_KEY_FILE, LibraryKey, find_key, key_file_beside, key_for_new_library

APPLICATION = "gigaface"
SCHEMA_VERSION = 4
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
    elapsed REAL NOT NULL DEFAULT 0,  -- seconds of scanning summed over resumed runs
    expires_at REAL                   -- removed by gigaface purge after this (NULL: kept)
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
    embedding BLOB,                   -- 128 float32 sealed (sealing.py); NULL: too small, or erased
    crop BLOB,                        -- small JPEG of the face for contact sheets and viewers, sealed (schema 4)
    described INTEGER NOT NULL DEFAULT 0,
    erased INTEGER NOT NULL DEFAULT 0, -- the person asked to be forgotten: no embedding, no crop, always blurred
    listed INTEGER NOT NULL DEFAULT 1  -- 0: seen only at the blur point; a box to blur, never described or shown
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
GOVERNANCE = """
CREATE TABLE IF NOT EXISTS consents (  -- people who asked to stay visible in a capture's exports (schema 3)
    id INTEGER PRIMARY KEY,
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    embedding BLOB NOT NULL,          -- from the person's own photo, sealed like the faces'
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS searches (  -- the audit log: one row per search, never changed (schema 3)
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,                -- 'token 3 (wall)' or 'local alice'
    purpose TEXT NOT NULL,            -- search, keep, erasure, consent-add, consent-remove
    captures TEXT NOT NULL,           -- JSON list of capture ids searched
    reference_hash TEXT NOT NULL,     -- SHA-256 of the reference embedding, never the embedding
    results INTEGER NOT NULL,
    matches INTEGER NOT NULL          -- results at or under the threshold
);
"""
APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS searches_append_only_update BEFORE UPDATE ON searches
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS searches_append_only_delete BEFORE DELETE ON searches
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
GOVERNANCE += APPEND_ONLY
# Schema 4: each audit row holds its link in the chain (audit_chain.py); crops are sealed.
AUDIT_CHAIN = "ALTER TABLE searches ADD COLUMN chain TEXT;"
SCHEMA += GOVERNANCE + AUDIT_CHAIN
DEFAULT_RETENTION_DAYS = 30
# What an older library's tables need to become the next version's, by the version it has;
# the data each step changes is in Library._migrate.
MIGRATIONS = {
    1: SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS jobs"):SCHEMA.index(GOVERNANCE)],
    2: "ALTER TABLE captures ADD COLUMN expires_at REAL;"
       " ALTER TABLE faces ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;" + GOVERNANCE,
    # faces.listed: faces seen only at the blur point are kept as boxes to blur
    3: "ALTER TABLE faces ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;" + AUDIT_CHAIN,
}
AUDIT_COLUMNS = "id, at, who, purpose, captures, reference_hash, results, matches"


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
    expires_at: float | None = None


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
    erased: bool = False
    listed: bool = True  # False: seen only at the blur point, kept only to be blurred

    def to_dict(self) -> dict:
        return {
            "id": self.id, "capture": self.capture, "source": self.source,
            "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "quality": self.quality, "embedded": self.embedded, "erased": self.erased,
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
class Consent:
    """A person who asked to be visible in a capture's exports (their embedding stays sealed
    in the library)."""

    id: int
    capture: int
    name: str
    note: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    who: str
    purpose: str
    captures: list[int]
    reference_hash: str
    results: int
    matches: int


class AuditLog(list):
    """Audit entries (a list of AuditEntry), with the verdict on the whole log's chain."""

    def __init__(self, entries: Iterable[AuditEntry], verdict: AuditVerdict):
        super().__init__(entries)
        self.verdict = verdict


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    created_at: float
    last_used: float | None
    revoked: bool


class Library:
    """A gigaface library file. Each capture is scanned by one process at a time (scan_lock.py)."""

    def __init__(self, path: str, create: bool = False):
        self.path = path
        self._key: LibraryKey | None = None
        self.made: list[str] = []  # the files this object created (the library, its key file)
        if not os.path.exists(path) and not create:
            raise GigafaceError(f"{path}: no such library (scan an image into it first)")
        if os.path.isdir(path):
            raise GigafaceError(f"{path}: is a directory, not a library file")
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block SQLite's open
            raise GigafaceError(f"{path}: not a regular file (a pipe or a device), not a library file")
        if not os.path.exists(path):
            self.made = _create_file(path)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            tables = self._tables()
        except sqlite3.DatabaseError as exc:
            if sqlite_write_problem(exc):
                raise _cannot_open(path, exc) from None
            raise GigafaceError(f"{path}: not a gigaface library ({exc})") from None
        if not tables:
            if not create:
                raise GigafaceError(f"{path}: empty file, not a gigaface library")
            self._create_in_place()
        elif "meta" not in tables or self._meta("application") != APPLICATION:
            raise GigafaceError(f"{path}: an SQLite file of another program, not a gigaface library")
        elif not str(self._meta("schema") or 0).isdecimal():
            raise GigafaceError(f"{path}: a damaged gigaface library (schema {self._meta('schema')!r})")
        elif int(self._meta("schema") or 0) > SCHEMA_VERSION:
            raise GigafaceError(f"{path}: made by a newer gigaface (schema {self._meta('schema')})")
        elif not {"captures", "faces"} <= tables:
            raise GigafaceError(f"{path}: a damaged gigaface library (no captures or faces table)")
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            raise _cannot_open(path, exc) from None
        self.db.execute("PRAGMA synchronous = NORMAL")
        # Erased and expired templates must not linger in free pages of the file.
        self.db.execute("PRAGMA secure_delete = ON")
        if int(self._meta("schema") or 0) < SCHEMA_VERSION:
            self._migrate()

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return row[0] if row else None

    def _create_in_place(self) -> None:
        """Make the schema in an existing empty file. Under the write lock, and checking for
        tables inside it: two processes creating one library make it once."""
        key = None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if not self._tables():
                key, _ = key_for_new_library(self.path)
                _initialise(self.db, key)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if key is not None:
            _make_private(self.path)

    def _migrate(self) -> None:
        """Bring an older library up to this schema in one transaction: step by step, each
        version's tables, then its data (see _upgrade_data)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._meta("schema") or 0)  # another process may have migrated it meanwhile
            if version < SCHEMA_VERSION:
                key = self._migration_key(version)
                for v in range(version, SCHEMA_VERSION):
                    for statement in _statements(MIGRATIONS.get(v, "")):
                        self.db.execute(statement)
                    self._upgrade_data(v, key)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        _make_private(self.path)  # made 0644 by older versions; it holds biometric data
        # The plain embeddings and crops just sealed stay in the main file until a checkpoint
        # replaces their pages: a copy of the file alone would still show them.
        self.flush_deleted()

    def _migration_key(self, version: int) -> LibraryKey:
        if version < 3:  # not sealed yet: the key given, or a new one beside the library
            return key_for_new_library(self.path)[0]
        if find_key(self.path) is None:
            raise GigafaceError(
                f"{self.path}: a library of schema {version}; this gigaface seals its face crops and chains its"
                f" audit log, which needs its key once (the key file {key_file_beside(self.path)} is missing;"
                f" use --key-file or ${ENV_KEY_FILE})")
        return self.key()

    def _upgrade_data(self, version: int, key: LibraryKey) -> None:
        """What the step from `version` to the next changes in the rows, inside _migrate's
        transaction."""
        if version == 2:  # schema 3: embeddings sealed; captures get the default retention from today
            rows = self.db.execute("SELECT id, embedding FROM faces WHERE embedding IS NOT NULL").fetchall()
            self.db.executemany("UPDATE faces SET embedding = ? WHERE id = ?",
                                [(key.seal(blob), i) for i, blob in rows])
            expires = time.time() + DEFAULT_RETENTION_DAYS * 86400
            self.db.execute("UPDATE captures SET expires_at = ?", (expires,))
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("key_check", key.check), ("retention_days", str(DEFAULT_RETENTION_DAYS))])
        elif version == 3:  # schema 4: crops sealed; the audit log chained from here on
            self._seal_crops(key)
            self._chain_audit_log(key)

    def _seal_crops(self, key: LibraryKey) -> None:
        rows = self.db.execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL").fetchall()
        self.db.executemany("UPDATE faces SET crop = ? WHERE id = ?", [(key.seal(c, b"crop"), i) for i, c in rows])

    def _chain_audit_log(self, key: LibraryKey) -> None:
        """Chain the rows an older library logged, as they are now (nothing can vouch for
        what they were before), and write the head."""
        rows = self.db.execute(f"SELECT {AUDIT_COLUMNS} FROM searches ORDER BY id").fetchall()
        previous, links = audit_chain.GENESIS, []
        for row in rows:
            previous = audit_chain.row_mac(key.audit_key, previous, tuple(row))
            links.append((previous, row[0]))
        # The triggers refuse every UPDATE: lifted for this one, in this transaction.
        self.db.execute("DROP TRIGGER IF EXISTS searches_append_only_update")
        self.db.executemany("UPDATE searches SET chain = ? WHERE id = ?", links)
        for statement in _statements(APPEND_ONLY):
            self.db.execute(statement)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (audit_chain.HEAD, audit_chain.make_head(key.audit_key, len(rows), previous)))

    # --- the key that seals embeddings ------------------------------------------------
    def key(self) -> LibraryKey:
        """The library's key, or a clear error: without it, faces can be listed, not searched."""
        if self._key is None:
            key = find_key(self.path)
            if key is None:
                raise GigafaceError(
                    f"{self.path}: its embeddings are encrypted and no key was given (the key file"
                    f" {key_file_beside(self.path)} is missing; use --key-file or ${ENV_KEY_FILE})")
            if not hmac.compare_digest(key.check, self._meta("key_check") or ""):
                raise GigafaceError(f"{self.path}: the key from {key.origin} is not this library's key")
            self._key = key
        return self._key

    def has_key(self) -> bool:
        try:
            self.key()
        except GigafaceError:
            return False
        return True

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
        """A new capture; when another process created the one of this key meanwhile, that one."""
        return self.find_or_create_capture(key, source, kind, width, height, frames, settings)[0]

    def find_or_create_capture(self, key: str, source: str, kind: str, width: int, height: int,
                               frames: Iterable[Frame], settings: dict) -> tuple[CaptureRecord, bool]:
        """The capture of this key, made now if missing, and whether it was made: looked up
        and inserted in one write transaction, so two scans of one image make one capture."""
        frames_json = json.dumps([f.__dict__ for f in frames])
        with self.transaction():
            row = self.db.execute("SELECT id FROM captures WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return self.capture(row[0]), False
            # Ids are never reused, so a stale link or a cached tile never shows another
            # capture: the highest id ever given is kept in meta.
            last = max(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0],
                       int(self._meta("last_capture_id") or 0))
            now = time.time()
            days = self.retention_days()
            self.db.execute(
                "INSERT INTO captures (id, key, source, kind, width, height, frames, settings, stage, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'detect', ?, ?)",
                (last + 1, key, source, kind, width, height, frames_json, json.dumps(settings), now,
                 now + days * 86400 if days else None),
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_capture_id', ?)", (str(last + 1),))
        return self.capture(last + 1), True

    def rekey_capture(self, capture_id: int, key: str) -> CaptureRecord:
        """Give a capture the key of its content (an older gigaface's key was weaker)."""
        with self.transaction():
            self.db.execute("UPDATE captures SET key = ? WHERE id = ?", (key, capture_id))
        return self.capture(capture_id)

    def restart_capture(self, capture_id: int, settings: dict) -> CaptureRecord:
        """Forget everything a capture's earlier scan found, keeping its id (and its erased
        faces: a person who asked to be forgotten stays forgotten through a re-scan)."""
        with self.transaction():
            for table in ("bands_done", "detections"):
                self.db.execute(f"DELETE FROM {table} WHERE capture_id = ?", (capture_id,))
            self.db.execute("DELETE FROM faces WHERE capture_id = ? AND erased = 0", (capture_id,))
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

    def replace_faces(self, capture_id: int, frames: np.ndarray, dets: Detections,
                      listed: np.ndarray | None = None) -> None:
        """The merged faces of a capture, replacing any earlier merge; raw detections go.
        `listed` (all, when not given) marks the faces at the listing point; the others are
        stored only to be blurred. A face found where an erased one is (its centre inside
        the erased box) is not kept: the erased row already stands for it, blurred and
        without a template."""
        listed = np.ones(len(dets), bool) if listed is None else np.asarray(listed, bool)
        erased = np.array(self.db.execute("SELECT x, y, w, h FROM faces WHERE capture_id = ? AND erased = 1",
                                          (capture_id,)).fetchall(), np.float64).reshape(-1, 4)
        rows = []
        for frame, b, s, lm, shown in zip(frames, dets.boxes, dets.scores, dets.landmarks, listed):
            x1, y1, x2, y2 = map(float, b)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            if len(erased) and np.any((erased[:, 0] <= cx) & (cx <= erased[:, 0] + erased[:, 2])
                                      & (erased[:, 1] <= cy) & (cy <= erased[:, 1] + erased[:, 3])):
                continue
            rows.append((capture_id, int(frame), x1, y1, x2 - x1, y2 - y1, float(s),
                         json.dumps([[round(float(x), 2), round(float(y), 2)] for x, y in lm]), int(shown)))
        with self.transaction():
            self.db.execute("DELETE FROM faces WHERE capture_id = ? AND erased = 0", (capture_id,))
            self.db.executemany("INSERT INTO faces (capture_id, frame, x, y, w, h, score, landmarks, listed)"
                                " VALUES (?,?,?,?,?,?,?,?,?)", rows)
            self.db.execute("DELETE FROM detections WHERE capture_id = ?", (capture_id,))
            self.db.execute("UPDATE captures SET stage = 'describe' WHERE id = ?", (capture_id,))

    # --- description ----------------------------------------------------------------
    def undescribed(self, capture_id: int) -> list[Face]:
        return self._faces("WHERE f.capture_id = ? AND f.described = 0 AND f.listed = 1 ORDER BY f.frame, f.y + f.h",
                           (capture_id,))

    def save_descriptions(self, rows: list[tuple[int, dict, np.ndarray | None, bytes | None]]) -> None:
        """(face id, quality, embedding or None, crop JPEG) for a batch of faces, atomically;
        embeddings and crops sealed (a crop re-embeds into a template: it is biometric too)."""
        key = self.key() if any(e is not None or c is not None for _, _, e, c in rows) else None
        with self.transaction():
            self.db.executemany(
                "UPDATE faces SET quality = ?, embedding = ?, crop = ?, described = 1 WHERE id = ? AND erased = 0",
                [(json.dumps(q), None if e is None else key.seal(np.asarray(e, np.float32).tobytes()),
                  None if c is None else key.seal(c, b"crop"), i)
                 for i, q, e, c in rows])

    # --- queries --------------------------------------------------------------------
    def faces(self, capture_id: int | None = None, include_unlisted: bool = False) -> list[Face]:
        """The listed faces; with `include_unlisted` also the boxes kept only to be blurred
        (what an anonymiser needs)."""
        where = [] if include_unlisted else ["f.listed = 1"]
        args: tuple = ()
        if capture_id is not None:
            where.append("f.capture_id = ?")
            args = (capture_id,)
        return self._faces(("WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.id", args)

    def faces_by_id(self, ids: list[int]) -> list[Face]:
        """Listed faces by id: an unlisted one is not found."""
        found: list[Face] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found += self._faces(f"WHERE f.listed = 1 AND f.id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        return found

    def face_page(self, capture_id: int, offset: int = 0, limit: int = 1000, min_size: float | None = None,
                  max_size: float | None = None, min_score: float | None = None,
                  min_sharpness: float | None = None, min_frontalness: float | None = None) -> tuple[int, list[Face]]:
        """(how many faces pass the filters, one page of them in id order)."""
        where, args = ["f.capture_id = ?", "f.listed = 1"], [capture_id]
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

    def face_count(self, capture_id: int, embedded: bool = False, include_unlisted: bool = False) -> int:
        where = " AND embedding IS NOT NULL" if embedded else ""
        where += "" if include_unlisted else " AND listed = 1"
        return self.db.execute(f"SELECT COUNT(*) FROM faces WHERE capture_id = ?{where}", (capture_id,)).fetchone()[0]

    def _faces(self, where: str, args: tuple) -> list[Face]:
        sources = {c.id: c.frames for c in self.captures()}
        rows = self.db.execute(
            "SELECT f.id, f.capture_id, f.frame, f.x, f.y, f.w, f.h, f.score, f.landmarks, f.quality,"
            f" f.embedding IS NOT NULL, f.erased, f.listed FROM faces f {where}", args)
        return [Face(r[0], r[1], sources[r[1]][r[2]].path, (r[3], r[4], r[5], r[6]), r[7],
                     json.loads(r[8]), json.loads(r[9]) if r[9] else {}, bool(r[10]), bool(r[11]), bool(r[12]))
                for r in rows]

    def embeddings(self, capture_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, (N, 128) float32) of every described face in the given captures."""
        sql = "SELECT id, embedding FROM faces WHERE embedding IS NOT NULL"
        args: tuple = ()
        if capture_ids is not None:
            ids = list(capture_ids)
            sql += f" AND capture_id IN ({','.join('?' * len(ids))})"
            args = tuple(ids)
        key = self.key()  # before the query: a library without its key is not searchable at all
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0, EMBEDDING_DIM), np.float32)
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([np.frombuffer(key.unseal(r[1]), np.float32) for r in rows]))

    def crop(self, face_id: int) -> bytes | None:
        """The face's JPEG thumbnail (None: not described yet, or erased); without the key, a
        clear error: a crop shows a face as much as a template identifies it."""
        key = self.key()
        row = self.db.execute("SELECT crop FROM faces WHERE id = ?", (face_id,)).fetchone()
        return key.unseal(row[0], b"crop") if row and row[0] is not None else None

    # --- consent: people who asked to stay visible -------------------------------------
    def add_consent(self, capture_id: int, name: str, note: str, embedding: np.ndarray, who: str | None = None,
                    compared: int = 0, shown: int = 0) -> Consent:
        """A consent, and its entry in the audit log (purpose consent-add: `compared` faces of
        the capture, `shown` revealed by it) in the same transaction: adding one identifies
        a person, so it is never done unlogged."""
        plain = np.asarray(embedding, np.float32).tobytes()
        sealed = self.key().seal(plain, b"consent")
        with self.transaction():
            cur = self.db.execute("INSERT INTO consents (capture_id, name, note, embedding, created_at)"
                                  " VALUES (?, ?, ?, ?, ?)", (capture_id, name, note, sealed, time.time()))
            self._append_audit(who or local_user(), "consent-add", [capture_id], plain, compared, shown)
        return next(c for c in self.consents(capture_id) if c.id == cur.lastrowid)

    def consents(self, capture_id: int | None = None) -> list[Consent]:
        where, args = ("WHERE capture_id = ?", (capture_id,)) if capture_id is not None else ("", ())
        rows = self.db.execute(f"SELECT id, capture_id, name, note, created_at FROM consents {where} ORDER BY id",
                               args)
        return [Consent(*r) for r in rows]

    def consent_embeddings(self, capture_id: int) -> tuple[list[Consent], np.ndarray]:
        consents = self.consents(capture_id)
        if not consents:
            return [], np.zeros((0, EMBEDDING_DIM), np.float32)
        key = self.key()
        rows = dict(self.db.execute("SELECT id, embedding FROM consents WHERE capture_id = ?", (capture_id,)))
        return consents, np.stack([np.frombuffer(key.unseal(rows[c.id], b"consent"), np.float32) for c in consents])

    def remove_consent(self, consent_id: int, who: str | None = None) -> Consent:
        """Withdraw a consent, logged (purpose consent-remove, with the same reference hash
        as its consent-add entry) in the same transaction."""
        found = [c for c in self.consents() if c.id == consent_id]
        if not found:
            raise GigafaceError(f"{self.path}: no consent {consent_id}")
        key = self.key()
        with self.transaction():
            sealed = self.db.execute("SELECT embedding FROM consents WHERE id = ?", (consent_id,)).fetchone()[0]
            self.db.execute("DELETE FROM consents WHERE id = ?", (consent_id,))
            self._append_audit(who or local_user(), "consent-remove", [found[0].capture],
                               key.unseal(sealed, b"consent"), 0, 0)
        return found[0]

    # --- erasure -------------------------------------------------------------------------
    def erase_faces(self, face_ids: Iterable[int]) -> int:
        """Drop the embeddings and crops of these faces, for good, and mark them to be
        blurred everywhere; returns how many were not erased before."""
        ids = [int(i) for i in face_ids]
        erased = 0
        with self.transaction():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cur = self.db.execute(
                    f"UPDATE faces SET embedding = NULL, crop = NULL, erased = 1, described = 1"
                    f" WHERE erased = 0 AND id IN ({','.join('?' * len(chunk))})", chunk)
                erased += cur.rowcount
        self.flush_deleted()
        return erased

    def flush_deleted(self) -> None:
        """Move the WAL, whose pages still hold what was just deleted, into the main file
        (where secure_delete has zeroed it) and empty it. Best effort while others read."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- retention -----------------------------------------------------------------------
    def retention_days(self) -> float | None:
        """Days a new capture is kept (None: until removed by hand)."""
        value = self._meta("retention_days")
        return None if value in (None, "none") else float(value)

    def set_retention(self, days: float | None, existing: bool = False) -> None:
        """The library's retention for new captures; `existing` re-dates the captures it has
        from their creation time too."""
        if days is not None and not 0 < days <= 36500:
            raise GigafaceError("retention is more than 0 and at most 36,500 days (100 years), or --forever")
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('retention_days', ?)",
                            ("none" if days is None else repr(float(days)),))
            if existing:
                self.db.execute("UPDATE captures SET expires_at = CASE WHEN ? IS NULL THEN NULL"
                                " ELSE created_at + ? * 86400 END", (days, days))

    def set_expiry(self, capture_id: int, expires_at: float | None) -> None:
        with self.transaction():
            self.db.execute("UPDATE captures SET expires_at = ? WHERE id = ?", (expires_at, capture_id))

    def expired(self, now: float | None = None) -> list[CaptureRecord]:
        now = time.time() if now is None else now
        return [c for c in self.captures() if c.expires_at is not None and c.expires_at <= now]

    def drop_embeddings(self, capture_id: int) -> int:
        """A capture's templates and crops first, in their own transaction: if removing the
        rest is interrupted, what is left is no longer biometric. Returns templates dropped."""
        with self.transaction():
            embedded = self.face_count(capture_id, embedded=True)
            self.db.execute("UPDATE faces SET embedding = NULL, crop = NULL WHERE capture_id = ?"
                            " AND (embedding IS NOT NULL OR crop IS NOT NULL)", (capture_id,))
            self.db.execute("DELETE FROM consents WHERE capture_id = ?", (capture_id,))
        return embedded

    # --- the audit log (chained: audit_chain.py) -----------------------------------------
    def record_search(self, who: str, purpose: str, capture_ids: Iterable[int], reference: np.ndarray,
                      results: int, matches: int) -> None:
        plain = np.asarray(reference, np.float32).tobytes()
        self.key()  # before the transaction: a clear error without the key
        with self.transaction():
            self._append_audit(who, purpose, capture_ids, plain, results, matches)

    def _append_audit(self, who: str, purpose: str, capture_ids: Iterable[int], reference: bytes,
                      results: int, matches: int) -> None:
        """One row of the log, inside the caller's write transaction: linked to the row
        before it, and the head moved on. A head that does not verify, or names another
        last row, stays as it is: a broken log stays broken, and `audit` keeps saying so."""
        key = self.key().audit_key
        last = self.db.execute("SELECT id, chain FROM searches ORDER BY id DESC LIMIT 1").fetchone()
        previous = (last[1] or "") if last else audit_chain.GENESIS
        row = (last[0] + 1 if last else 1, time.time(), who, purpose,
               json.dumps(sorted(int(c) for c in capture_ids)), hashlib.sha256(reference).hexdigest(),
               int(results), int(matches))
        chain = audit_chain.row_mac(key, previous, row)
        self.db.execute(f"INSERT INTO searches ({AUDIT_COLUMNS}, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row, chain))
        head = audit_chain.read_head(key, self._meta(audit_chain.HEAD))
        if head is not None and head[1] == previous:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (audit_chain.HEAD, audit_chain.make_head(key, head[0] + 1, chain)))

    def audit(self, since: float | None = None, limit: int | None = None) -> AuditLog:
        """The log's entries (from `since`, at most `limit`), with the verdict on its whole
        chain in `.verdict`."""
        sql = f"SELECT {AUDIT_COLUMNS} FROM searches"
        args: list = []
        if since is not None:
            sql += " WHERE at >= ?"
            args.append(since)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        entries = [AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7])
                   for r in self.db.execute(sql, args)]
        return AuditLog(entries, self.verify_audit())

    def verify_audit(self) -> AuditVerdict:
        """Whether the whole log is as gigaface wrote it (see audit_chain.py for what this
        cannot see). Without the key it cannot be checked, and says so."""
        try:
            key = self.key()
        except GigafaceError as exc:
            return AuditVerdict(False, 0, f"cannot be verified: {exc}")
        self.db.execute("BEGIN")  # rows and head read from one snapshot
        try:
            rows = self.db.execute(f"SELECT {AUDIT_COLUMNS}, chain FROM searches ORDER BY id").fetchall()
            head = self._meta(audit_chain.HEAD)
        finally:
            self.db.execute("COMMIT")
        return audit_chain.verify(key.audit_key, [tuple(r) for r in rows], head)

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


def _create_file(path: str) -> list[str]:
    """A new library at `path`: made complete under a temporary name and linked into place,
    so no reader ever sees half a library, and a link never replaces a file (when two
    processes create one library, the first link wins and the other opens it). Owner-only:
    it holds biometric data. On failure (disk full, a folder we cannot write) nothing is
    left behind, not even the key file this call made. Returns the files this call made."""
    key, made_key = key_for_new_library(path)
    made = [key.origin] if made_key else []

    def write(aside: str) -> None:
        con = sqlite3.connect(aside, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = MEMORY")  # no journal file beside the temporary
            con.execute("BEGIN")
            _initialise(con, key)
            con.execute("COMMIT")
        finally:
            con.close()

    try:
        if link_new_file(path, write):  # else another process made it first: that one is the library
            made.append(path)
    except (OSError, sqlite3.Error) as exc:
        if made_key and not os.path.exists(path):
            try:
                os.remove(key.origin)
            except OSError:
                pass
        reason = os_reason(exc, folder_of(path)) if isinstance(exc, OSError) else sqlite_write_problem(exc) or str(exc)
        raise GigafaceError(f"{path}: cannot create the library: {reason}") from None
    return made


def _cannot_open(path: str, exc: sqlite3.Error) -> GigafaceError:
    folder = folder_of(path)
    if not os.access(folder, os.W_OK):
        return GigafaceError(f"{path}: cannot open the library: cannot write in {folder} (SQLite keeps the"
                             " library's -wal and -shm files beside it)")
    return GigafaceError(f"{path}: cannot open the library: {sqlite_write_problem(exc) or exc}")


def _initialise(db: sqlite3.Connection, key: LibraryKey) -> None:
    """The tables and meta of a new library, inside the caller's transaction."""
    for statement in _statements(SCHEMA):
        db.execute(statement)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("application", APPLICATION), ("schema", str(SCHEMA_VERSION)), ("key_check", key.check),
        ("retention_days", str(DEFAULT_RETENTION_DAYS)),
        (audit_chain.HEAD, audit_chain.make_head(key.audit_key, 0, audit_chain.GENESIS))])


def _make_private(path: str) -> None:
    """Owner-only permissions for the library and the files SQLite keeps beside it (it gives
    new ones the library's mode); best effort: the file may be someone else's."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.path.exists(name):
                os.chmod(name, 0o600)
        except OSError:
            pass


def _statements(script: str) -> list[str]:
    """A script's statements, one by one (a trigger's body holds semicolons of its own)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    return statements


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
_CAPTURE_COLUMNS = ("id, key, source, kind, width, height, frames, settings, stage, created_at, finished_at,"
                    " elapsed, expires_at")


def _capture(row) -> CaptureRecord:
    frames = tuple(Frame(**f) for f in json.loads(row[6]))
    return CaptureRecord(row[0], row[1], row[2], row[3], row[4], row[5], frames, json.loads(row[7]),
                         row[8], row[9], row[10], row[11], row[12])
