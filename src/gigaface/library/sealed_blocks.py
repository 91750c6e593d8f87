"""Embeddings sealed a block at a time: one AES-256-GCM call for thousands of faces.

Sealing each face's 512 bytes on its own costs a Python call and a fresh AESGCM object
per face: 4 s to open 10^6 templates (issue 13). A block (ids and a float16 matrix) is
sealed as one message instead, so loading a library is one pass of AES at its own speed
(measured in bench/search.py: `seal_mb_s`, `unseal_mb_s`).

The block id and the capture id are the associated data, so a sealed block copied under
another block's row, or moved to another capture, does not open. The key is the library's
`LibraryKey` (sealing.py); `LibraryKey.seal` takes the associated data as its `purpose`,
so nothing was added there.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from gigaface.errors import GigafaceError
from gigaface.library.sealing import LibraryKey

MAGIC = b"GFB1"
_HEADER = struct.Struct("<4sII")   # magic, faces, dimensions
# cryptography's AES-GCM takes at most 2**31 - 1 bytes a call; far above a block of a few
# thousand faces, but a capture of millions sealed whole would pass it.
MAX_SEALED_BYTES = 2**31 - 64


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
