"""Faces: the merged boxes of each capture, their descriptions (quality, sealed crop, and a
template sealed in a block with others: sealed_blocks.py), and their erasure."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from gigaface.engine.detections import Detections
from gigaface.library.records import Face
from gigaface.library.sealed_blocks import BLOCK_FACES, Block, insert_block, insert_blocks, read_blocks

if TYPE_CHECKING:
    from gigaface.library.store import Library

EMBEDDING_DIM = 128
_CHUNK = 500  # ids per IN (...): under SQLite's limit on bound parameters


class FaceStore:
    """`library.faces`: the faces table."""

    def __init__(self, library: Library):
        self._lib = library

    # --- the scan's writes --------------------------------------------------------------
    def replace(self, capture_id: int, frames: np.ndarray, dets: Detections,
                listed: np.ndarray | None = None) -> None:
        """The merged faces of a capture, replacing its earlier unerased ones (erased rows
        stay: they stand for people who asked to be forgotten); raw detections go.
        `listed` (all, when not given) marks the faces at the listing point; the others are
        stored only to be blurred."""
        listed = np.ones(len(dets), bool) if listed is None else np.asarray(listed, bool)

        def rows():  # one at a time: a 4-GP scan stores ~10^5 faces (76,209 with `fast`)
            for frame, b, s, lm, shown in zip(frames, dets.boxes, dets.scores, dets.landmarks, listed):
                x1, y1, x2, y2 = map(float, b)
                yield (capture_id, int(frame), x1, y1, x2 - x1, y2 - y1, float(s),
                       json.dumps([[round(float(x), 2), round(float(y), 2)] for x, y in lm]), int(shown))

        with self._lib.transaction() as db:
            db.execute("DELETE FROM faces WHERE capture_id = ? AND erased = 0", (capture_id,))
            db.execute("DELETE FROM face_blocks WHERE capture_id = ?", (capture_id,))  # erased faces have none
            db.executemany("INSERT INTO faces (capture_id, frame, x, y, w, h, score, landmarks, listed)"
                           " VALUES (?,?,?,?,?,?,?,?,?)", rows())
            db.execute("DELETE FROM detections WHERE capture_id = ?", (capture_id,))
            db.execute("UPDATE captures SET stage = 'describe' WHERE id = ?", (capture_id,))

    def undescribed(self, capture_id: int) -> list[Face]:
        return self._faces("WHERE f.capture_id = ? AND f.described = 0 AND f.listed = 1 ORDER BY f.frame, f.y + f.h",
                           (capture_id,))

    def save_descriptions(self, rows: list[tuple[int, dict, np.ndarray | None, bytes | None]]) -> None:
        """(face id, quality, embedding or None, crop JPEG) for a batch of faces, atomically;
        crops sealed (a crop re-embeds into a template: it is biometric too), the batch's
        templates sealed as one block. A face erased meanwhile keeps neither."""
        key = self._lib.key() if any(e is not None or c is not None for _, _, e, c in rows) else None
        with self._lib.transaction() as db:
            db.executemany(
                "UPDATE faces SET quality = ?, crop = ?, described = 1 WHERE id = ? AND erased = 0",
                [(json.dumps(q), None if c is None else key.seal(c, b"crop"), i) for i, q, _, c in rows])
            templates = {int(i): e for i, _, e, _ in rows if e is not None}
            by_capture: dict[int, list[int]] = {}
            for face_id, capture_id in self._select(db, "SELECT id, capture_id FROM faces WHERE erased = 0 AND id IN",
                                                    list(templates)):
                by_capture.setdefault(capture_id, []).append(face_id)
            for capture_id, ids in by_capture.items():
                ids.sort()
                insert_block(db, key, capture_id, np.array(ids, np.int64), np.stack([templates[i] for i in ids]))
                self._merge_small_blocks(db, key, capture_id, final=False)

    def pack(self, capture_id: int) -> None:
        """The capture's small blocks (one per describe batch) merged into full ones: called
        when its scan is done, so a library holds about one block per BLOCK_FACES faces."""
        if self._lib.db.execute("SELECT COUNT(*) FROM face_blocks WHERE capture_id = ? AND faces < ?",
                                (capture_id, BLOCK_FACES)).fetchone()[0] > 1:
            with self._lib.transaction() as db:
                self._merge_small_blocks(db, self._lib.key(), capture_id, final=True)

    def _merge_small_blocks(self, db, key, capture_id: int, final: bool) -> None:
        """During a scan, small blocks are merged once they fill a block (each template is
        resealed about once); at its end, whatever is left."""
        small = db.execute("SELECT id, faces FROM face_blocks WHERE capture_id = ? AND faces < ? ORDER BY id",
                           (capture_id, BLOCK_FACES)).fetchall()
        if len(small) < 2 or (not final and sum(n for _, n in small) < BLOCK_FACES):
            return
        ids = [b for b, _ in small]
        blocks = self._blocks(db, key, ids)
        self._delete_blocks(db, ids)
        insert_blocks(db, key, capture_id, np.concatenate([b.ids for b in blocks]),
                      np.concatenate([b.vectors for b in blocks]))

    # --- queries ------------------------------------------------------------------------
    def all(self, capture_id: int | None = None, include_unlisted: bool = False) -> list[Face]:
        """The listed faces; with `include_unlisted` also the boxes kept only to be blurred
        (what an anonymiser needs)."""
        where = [] if include_unlisted else ["f.listed = 1"]
        args: tuple = ()
        if capture_id is not None:
            where.append("f.capture_id = ?")
            args = (capture_id,)
        return self._faces(("WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.id", args)

    def by_id(self, ids: list[int]) -> list[Face]:
        """Listed faces by id: an unlisted one is not found."""
        found: list[Face] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            found += self._faces(f"WHERE f.listed = 1 AND f.id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        return found

    def page(self, capture_id: int, offset: int = 0, limit: int = 1000, min_size: float | None = None,
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
        total = self._lib.db.execute(f"SELECT COUNT(*) FROM faces f {clause}", args).fetchone()[0]
        return total, self._faces(f"{clause} ORDER BY f.id LIMIT ? OFFSET ?", (*args, limit, offset))

    def count(self, capture_id: int, embedded: bool = False, include_unlisted: bool = False) -> int:
        where = " AND block IS NOT NULL" if embedded else ""
        where += "" if include_unlisted else " AND listed = 1"
        return self._lib.db.execute(f"SELECT COUNT(*) FROM faces WHERE capture_id = ?{where}",
                                    (capture_id,)).fetchone()[0]

    def _faces(self, where: str, args: tuple) -> list[Face]:
        sources = {c.id: c.frames for c in self._lib.captures.all()}
        rows = self._lib.db.execute(
            "SELECT f.id, f.capture_id, f.frame, f.x, f.y, f.w, f.h, f.score, f.landmarks, f.quality,"
            f" f.block IS NOT NULL, f.erased, f.listed FROM faces f {where}", args)
        return [Face(r[0], r[1], r[2], sources[r[1]][r[2]].path, (r[3], r[4], r[5], r[6]), r[7],
                     json.loads(r[8]), json.loads(r[9]) if r[9] else {}, bool(r[10]), bool(r[11]), bool(r[12]))
                for r in rows]

    def erased_boxes(self, capture_id: int) -> np.ndarray:
        """(N, 4) x, y, w, h of the capture's erased faces, in panorama pixels."""
        rows = self._lib.db.execute("SELECT x, y, w, h FROM faces WHERE capture_id = ? AND erased = 1",
                                    (capture_id,)).fetchall()
        return np.array(rows, np.float64).reshape(-1, 4)

    # --- what identifies a person (sealed) ------------------------------------------------
    def embeddings(self, capture_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(face ids in order, (N, 128) float32) of every described face in the given captures."""
        key = self._lib.key()  # first: a library without its key is not searchable at all
        blocks = list(self.blocks(capture_ids, key))
        if not blocks:
            return np.zeros((0,), np.int64), np.zeros((0, EMBEDDING_DIM), np.float32)
        ids = np.concatenate([b.ids for b in blocks])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([b.vectors for b in blocks]).astype(np.float32)[order]

    def block_ids(self) -> dict[int, int]:
        """{block id: capture id} of every block of templates: what a warm index compares
        before each search (a few hundred rows at 10^6 faces)."""
        return dict(self._lib.db.execute("SELECT id, capture_id FROM face_blocks"))

    def block(self, block_id: int) -> Block:
        found = list(read_blocks(self._lib.db, self._lib.key(), "WHERE id = ?", (block_id,)))
        if not found:
            raise KeyError(block_id)  # removed since its id was read: the next sync drops it
        return found[0]

    def blocks(self, capture_ids: Iterable[int] | None = None, key=None):
        """The blocks of the given captures (None: all), unsealed one at a time."""
        key = key or self._lib.key()
        if capture_ids is None:
            return read_blocks(self._lib.db, key)
        ids = [int(c) for c in capture_ids]
        return read_blocks(self._lib.db, key, f"WHERE capture_id IN ({','.join('?' * len(ids))})", ids)

    def _blocks(self, db, key, block_ids: list[int]) -> list[Block]:
        out: list[Block] = []
        for start in range(0, len(block_ids), _CHUNK):
            chunk = block_ids[start:start + _CHUNK]
            out += read_blocks(db, key, f"WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk)
        return out

    def _delete_blocks(self, db, block_ids: list[int]) -> None:
        db.executemany("DELETE FROM face_blocks WHERE id = ?", [(b,) for b in block_ids])

    @staticmethod
    def _select(db, sql: str, ids: list[int]) -> list[tuple]:
        """`sql` ending in `IN`, run over `ids` in chunks under SQLite's parameter limit."""
        out: list[tuple] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            out += db.execute(f"{sql} ({','.join('?' * len(chunk))})", chunk).fetchall()
        return out

    def crop(self, face_id: int) -> bytes | None:
        """The face's JPEG thumbnail (None: not described yet, or erased); without the key, a
        clear error: a crop shows a face as much as a template identifies it."""
        key = self._lib.key()
        row = self._lib.db.execute("SELECT crop FROM faces WHERE id = ?", (face_id,)).fetchone()
        return key.unseal(row[0], b"crop") if row and row[0] is not None else None

    def erase(self, face_ids: Iterable[int]) -> int:
        """Drop the templates and crops of these faces, for good, and mark them to be
        blurred everywhere; returns how many were not erased before. Each block that held
        one is rewritten without it under a new id, in the same transaction."""
        ids = [int(i) for i in face_ids]
        with self._lib.transaction() as db:
            held = sorted({b for (b,) in self._select(db, "SELECT block FROM faces WHERE block IS NOT NULL AND id IN", ids)})
            erased = sum(db.execute(f"UPDATE faces SET block = NULL, crop = NULL, erased = 1, described = 1"
                                    f" WHERE erased = 0 AND id IN ({','.join('?' * len(chunk))})", chunk).rowcount
                         for chunk in (ids[s:s + _CHUNK] for s in range(0, len(ids), _CHUNK)))
            if held:
                key = self._lib.key()
                gone = np.array(ids, np.int64)
                for block in self._blocks(db, key, held):
                    self._delete_blocks(db, [block.id])
                    keep = ~np.isin(block.ids, gone)
                    if keep.any():
                        insert_block(db, key, block.capture, block.ids[keep], block.vectors[keep])
        self._lib.flush_deleted()
        return erased

    def drop_embeddings(self, capture_id: int) -> int:
        """A capture's templates and crops (and its consents' templates) first, in their own
        transaction: if removing the rest is interrupted, what is left is no longer
        biometric. Returns templates dropped."""
        with self._lib.transaction() as db:
            embedded = self.count(capture_id, embedded=True)
            db.execute("DELETE FROM face_blocks WHERE capture_id = ?", (capture_id,))
            db.execute("UPDATE faces SET block = NULL, crop = NULL WHERE capture_id = ?"
                       " AND (block IS NOT NULL OR crop IS NOT NULL)", (capture_id,))
            db.execute("DELETE FROM consents WHERE capture_id = ?", (capture_id,))
        return embedded
