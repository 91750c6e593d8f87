"""Embeddings sealed a block at a time: one AES-256-GCM call for thousands of faces, and
the `face_blocks` rows that hold them (schema 5).

Sealing each face's 512 bytes on its own costs a Python call and a fresh AESGCM object
per face: 4 s to open 10^6 templates (issue 13). A block (ids and a float16 matrix) is
sealed as one message instead, so loading a library is one pass of AES at its own speed
(16 GB/s on this machine's AES-NI for 1 MB messages; bench/search.py measures the whole
load). A block is never changed: what changes its faces (an erasure, a merge of small
blocks) writes a new row, whose AUTOINCREMENT id is never reused, so a long-lived index
that compares block ids knows exactly what to load and what to drop.

The block id and the capture id are the associated data, so a sealed block copied under
another block's row, or moved to another capture, does not open. The key is the library's
`LibraryKey` (sealing.py); `LibraryKey.seal` takes the associated data as its `purpose`,
so nothing was added there.
"""
from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gigaface.errors import GigafaceError
from gigaface.library.sealing import LibraryKey

MAGIC = b"GFB1"
_HEADER = struct.Struct("<4sII")   # magic, faces, dimensions
# cryptography's AES-GCM takes at most 2**31 - 1 bytes a call; far above a block of a few
# thousand faces, but a capture of millions sealed whole would pass it.
MAX_SEALED_BYTES = 2**31 - 64
# Faces per block: 1 MB of plain text, a few ms to unseal, and few enough rows that a
# warm index compares a library's block ids before every search for free (245 at 10^6).
BLOCK_FACES = 4096


@dataclass(frozen=True)
class Block:
    """Faces of one capture and their embeddings; `id` names this content and no other
    (a block rewritten after an erasure gets a new id, so a long-lived index that still
    holds the old one drops it on its next sync)."""
    id: int
    capture: int
    ids: np.ndarray       # (n,) int64 face ids
    vectors: np.ndarray   # (n, d) float16 or float32

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.ids) != len(self.vectors):
            raise ValueError(f"block {self.id}: {len(self.ids)} ids for a {self.vectors.shape} matrix")


def associated_data(block_id: int, capture_id: int) -> bytes:
    return b"face-block|%d|%d" % (block_id, capture_id)


def seal_block(key: LibraryKey, block: Block) -> bytes:
    """The block as one sealed message: header, int64 ids, float16 matrix. Float16 halves
    the file and the memory; bench/search.py measures recall against float32."""
    n, d = block.vectors.shape
    plain = b"".join((_HEADER.pack(MAGIC, n, d), np.ascontiguousarray(block.ids, "<i8").tobytes(),
                      np.ascontiguousarray(block.vectors, "<f2").tobytes()))
    if len(plain) > MAX_SEALED_BYTES:
        raise GigafaceError(f"block {block.id}: {n} faces is too many for one sealed block; split it")
    return key.seal(plain, associated_data(block.id, block.capture))


def unseal_block(key: LibraryKey, sealed: bytes, block_id: int, capture_id: int) -> Block:
    try:
        plain = key.unseal(sealed, associated_data(block_id, capture_id))
    except GigafaceError:
        raise GigafaceError(f"block {block_id} of capture {capture_id} does not open with the key from"
                            f" {key.origin}: the library was altered or the key is wrong") from None
    magic, n, d = _HEADER.unpack_from(plain)
    if magic != MAGIC or len(plain) != _HEADER.size + n * 8 + n * d * 2:
        raise GigafaceError(f"block {block_id} of capture {capture_id}: not a gigaface embedding block")
    ids = np.frombuffer(plain, "<i8", n, _HEADER.size)
    vectors = np.frombuffer(plain, "<f2", n * d, _HEADER.size + n * 8).reshape(n, d)
    return Block(block_id, capture_id, ids, vectors)


# --- the face_blocks rows -------------------------------------------------------------------
def insert_block(db: sqlite3.Connection, key: LibraryKey, capture_id: int, ids: np.ndarray,
                 vectors: np.ndarray) -> int:
    """A new block of the capture's faces (in the caller's transaction), each face pointed
    at it; returns its id. The id is the associated data, so the row is made first."""
    block_id = db.execute("INSERT INTO face_blocks (capture_id, faces, sealed) VALUES (?, ?, x'')",
                          (capture_id, len(ids))).lastrowid
    block = Block(block_id, capture_id, np.asarray(ids, np.int64), np.asarray(vectors, np.float16))
    db.execute("UPDATE face_blocks SET sealed = ? WHERE id = ?", (seal_block(key, block), block_id))
    db.executemany("UPDATE faces SET block = ? WHERE id = ?", [(block_id, int(i)) for i in block.ids])
    return block_id


def insert_blocks(db: sqlite3.Connection, key: LibraryKey, capture_id: int, ids: np.ndarray,
                  vectors: np.ndarray) -> list[int]:
    """The faces in blocks of at most BLOCK_FACES."""
    return [insert_block(db, key, capture_id, ids[s:s + BLOCK_FACES], vectors[s:s + BLOCK_FACES])
            for s in range(0, len(ids), BLOCK_FACES)]


def read_blocks(db: sqlite3.Connection, key: LibraryKey, where: str = "", args: Iterable = ()) -> Iterator[Block]:
    """The blocks selected by `where` (SQL on face_blocks), unsealed one at a time."""
    for block_id, capture_id, sealed in db.execute(f"SELECT id, capture_id, sealed FROM face_blocks {where}",
                                                   tuple(args)):
        yield unseal_block(key, sealed, block_id, capture_id)
