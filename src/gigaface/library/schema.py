"""The library's tables: the script that makes a new library, and the steps that bring an
older one up to it, one schema version at a time.

A fresh library runs SCHEMA; an older one of schema N runs the steps from N on, each step
its statements then its data changes, all in the caller's transaction. Both end with the
same tables and columns (a migrated table keeps its older CREATE text plus the columns
ALTER TABLE added, as SQLite writes them).
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gigaface.library import audit_chain, sealed_blocks
from gigaface.library.sealing import LibraryKey

APPLICATION = "gigaface"
DEFAULT_RETENTION_DAYS = 30
AUDIT_COLUMNS = "id, at, who, purpose, captures, reference_hash, results, matches"

# The scan's own tables, as a new library has them (schema 1 had them without the columns
# that the steps below add, and schemas 1-4 kept each face's template in its own
# `faces.embedding`, which step 4 packs into face_blocks and drops).
CORE = """
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
    block INTEGER,                    -- the face_blocks row holding its template; NULL: too small, or erased
    crop BLOB,                        -- small JPEG of the face for contact sheets and viewers, sealed (schema 4)
    described INTEGER NOT NULL DEFAULT 0,
    erased INTEGER NOT NULL DEFAULT 0, -- the person asked to be forgotten: no embedding, no crop, always blurred
    listed INTEGER NOT NULL DEFAULT 1  -- 0: seen only at the blur point; a box to blur, never described or shown
);
CREATE INDEX faces_capture ON faces(capture_id);
"""
# Schema 2: the service's jobs and tokens.
JOBS_AND_TOKENS = """
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
# Schema 3: retention, erasure, consents and the audit log.
EXPIRY_AND_ERASURE = ("ALTER TABLE captures ADD COLUMN expires_at REAL;"
                      " ALTER TABLE faces ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;")
APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS searches_append_only_update BEFORE UPDATE ON searches
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS searches_append_only_delete BEFORE DELETE ON searches
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
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
""" + APPEND_ONLY
# Schema 4: faces seen only at the blur point are kept as boxes to blur; each audit row
# holds its link in the chain (audit_chain.py); crops are sealed.
LISTED = "ALTER TABLE faces ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;"
AUDIT_CHAIN = "ALTER TABLE searches ADD COLUMN chain TEXT;"

# Schema 5: templates sealed a block of faces at a time (sealed_blocks.py), so that opening
# a library of 10^6 faces is one pass of AES, not 10^6 calls (issue 13).
FACE_BLOCKS = """
CREATE TABLE IF NOT EXISTS face_blocks ( -- the templates of some faces of one capture, sealed as one (schema 5)
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an id names one content for good
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    faces INTEGER NOT NULL,
    sealed BLOB NOT NULL              -- ids and a float16 matrix, one AES-256-GCM message
);
CREATE INDEX IF NOT EXISTS face_blocks_capture ON face_blocks(capture_id);
"""
BLOCK_COLUMN = "ALTER TABLE faces ADD COLUMN block INTEGER;"

# A new library: the chain column is added by ALTER, as it always was, so the stored CREATE
# text of `searches` is the same in new and migrated libraries.
SCHEMA = CORE + JOBS_AND_TOKENS + GOVERNANCE + AUDIT_CHAIN + FACE_BLOCKS


def statements(script: str) -> list[str]:
    """A script's statements, one by one (a trigger's body holds semicolons of its own)."""
    found, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                found.append(current.strip())
            current = ""
    return found


def create(db: sqlite3.Connection, key: LibraryKey) -> None:
    """The tables and meta of a new library, inside the caller's transaction."""
    for statement in statements(SCHEMA):
        db.execute(statement)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("application", APPLICATION), ("schema", str(SCHEMA_VERSION)), ("key_check", key.check),
        ("retention_days", str(DEFAULT_RETENTION_DAYS)),
        (audit_chain.HEAD, audit_chain.make_head(key.audit_key, 0, audit_chain.GENESIS))])


def _seal_embeddings_and_date_captures(db: sqlite3.Connection, key: LibraryKey) -> None:
    """Schema 3: embeddings sealed; captures get the default retention from today."""
    rows = db.execute("SELECT id, embedding FROM faces WHERE embedding IS NOT NULL").fetchall()
    db.executemany("UPDATE faces SET embedding = ? WHERE id = ?", [(key.seal(blob), i) for i, blob in rows])
    db.execute("UPDATE captures SET expires_at = ?", (time.time() + DEFAULT_RETENTION_DAYS * 86400,))
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   [("key_check", key.check), ("retention_days", str(DEFAULT_RETENTION_DAYS))])


def _seal_crops_and_chain_log(db: sqlite3.Connection, key: LibraryKey) -> None:
    """Schema 4: crops sealed; the rows an older library logged chained as they are now
    (nothing can vouch for what they were before), and the head written."""
    crops = db.execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL").fetchall()
    db.executemany("UPDATE faces SET crop = ? WHERE id = ?", [(key.seal(c, b"crop"), i) for i, c in crops])
    rows = db.execute(f"SELECT {AUDIT_COLUMNS} FROM searches ORDER BY id").fetchall()
    previous, links = audit_chain.GENESIS, []
    for row in rows:
        previous = audit_chain.row_mac(key.audit_key, previous, tuple(row))
        links.append((previous, row[0]))
    # The triggers refuse every UPDATE: lifted for this one, in this transaction.
    db.execute("DROP TRIGGER IF EXISTS searches_append_only_update")
    db.executemany("UPDATE searches SET chain = ? WHERE id = ?", links)
    for statement in statements(APPEND_ONLY):
        db.execute(statement)
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
               (audit_chain.HEAD, audit_chain.make_head(key.audit_key, len(rows), previous)))


def _pack_templates(db: sqlite3.Connection, key: LibraryKey) -> None:
    """Schema 5: each capture's per-face templates packed into sealed blocks (float16, as
    new ones are stored), a block's worth at a time, then the per-face column dropped;
    secure_delete zeroes its pages."""
    captures = [r[0] for r in db.execute("SELECT DISTINCT capture_id FROM faces WHERE embedding IS NOT NULL")]
    for capture_id in captures:
        last = -1
        while rows := db.execute("SELECT id, embedding FROM faces WHERE capture_id = ? AND embedding IS NOT NULL"
                                 " AND id > ? ORDER BY id LIMIT ?",
                                 (capture_id, last, sealed_blocks.BLOCK_FACES)).fetchall():
            ids = np.array([r[0] for r in rows], np.int64)
            vectors = np.stack([np.frombuffer(key.unseal(r[1]), np.float32) for r in rows])
            sealed_blocks.insert_block(db, key, capture_id, ids, vectors)
            last = int(ids[-1])
    db.execute("ALTER TABLE faces DROP COLUMN embedding")


@dataclass(frozen=True)
class Step:
    """What a library of schema `version` needs to become `version + 1`: its tables, then
    its rows."""

    version: int
    tables: str
    data: Callable[[sqlite3.Connection, LibraryKey], None] | None = None


MIGRATIONS: tuple[Step, ...] = (
    Step(1, JOBS_AND_TOKENS),
    Step(2, EXPIRY_AND_ERASURE + GOVERNANCE, _seal_embeddings_and_date_captures),
    Step(3, LISTED + AUDIT_CHAIN, _seal_crops_and_chain_log),
    Step(4, FACE_BLOCKS + BLOCK_COLUMN, _pack_templates),
)
SCHEMA_VERSION = MIGRATIONS[-1].version + 1


def migrate(db: sqlite3.Connection, version: int, key: LibraryKey) -> None:
    """Bring a library of schema `version` up to SCHEMA_VERSION, inside the caller's write
    transaction; `key` seals what older versions kept in clear."""
    for step in MIGRATIONS:
        if step.version >= version:
            for statement in statements(step.tables):
                db.execute(statement)
            if step.data is not None:
                step.data(db, key)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
