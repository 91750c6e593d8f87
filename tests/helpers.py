"""Synthetic test images built from real faces (skimage's astronaut) and shared helpers."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pyvips
import skimage.data

# CenterFace's box for the astronaut's face in skimage.data.astronaut() (512x512), as
# x, y, w, h, measured once with gigaface's detector: (181.4, 57.9)-(270.0, 178.1).
ASTRONAUT_FACE = (181.4, 57.9, 88.6, 120.2)
# A patch around that face: its centre is the face box's centre; 190 x 230 px.
_PATCH = (131, 3, 321, 233)  # x0, y0, x1, y1 in the astronaut image
_PATCH_FACE_H = ASTRONAUT_FACE[3]
_PATCH_FACE_W = ASTRONAUT_FACE[2]


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def face_patch(face_height: float) -> np.ndarray:
    """The astronaut's head, scaled so that the detector's face box is ~face_height tall."""
    x0, y0, x1, y1 = _PATCH
    patch = astronaut()[y0:y1, x0:x1]
    f = face_height / _PATCH_FACE_H
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    return cv2.resize(patch, (round(patch.shape[1] * f), round(patch.shape[0] * f)), interpolation=interp)


def expected_box(cx: float, cy: float, face_height: float) -> tuple[float, float, float, float]:
    """Where the detector's box should be for a face_patch(face_height) centred at (cx, cy)."""
    f = face_height / _PATCH_FACE_H
    w, h = _PATCH_FACE_W * f, _PATCH_FACE_H * f
    return (cx - w / 2, cy - h / 2, w, h)


def paste_centred(canvas: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> tuple[int, int]:
    """Paste `patch` with its centre at (cx, cy); returns its top-left. Must fit entirely."""
    h, w = patch.shape[:2]
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    assert 0 <= x0 and 0 <= y0 and x0 + w <= canvas.shape[1] and y0 + h <= canvas.shape[0], (cx, cy, w, h)
    canvas[y0 : y0 + h, x0 : x0 + w] = patch
    return x0, y0


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Mid-grey with mild noise and a soft gradient: no faces, not flat."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(90, 150, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def crowd(width: int, height: int, faces: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """A background with an astronaut face of height s centred at each (cx, cy, s)."""
    canvas = background(width, height, seed)
    for cx, cy, s in faces:
        paste_centred(canvas, face_patch(s), cx, cy)
    return canvas


def write_image(path: Path | str, rgb: np.ndarray, **options) -> Path:
    """Write an RGB (or grey) uint8/uint16 array with libvips; the suffix picks the format."""
    pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).write_to_file(str(path), **options)
    return Path(path)


def read_image(path: Path | str) -> np.ndarray:
    """The whole image as (h, w, 3) uint8 RGB, read with random access."""
    image = pyvips.Image.new_from_file(str(path))
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    return image.colourspace("srgb").numpy()


def iou(a, b) -> float:
    """IoU of two boxes given as x, y, w, h."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def drop_column(con, table: str, column: str) -> None:
    """Make `table` as an older gigaface made it, without `column` (for migration tests).

    SQLite's own DROP COLUMN trips over the comments in our CREATE TABLE text ("incomplete
    input"), so the table is made again from its own text minus the column's line."""
    import re

    sql = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    lines = [line for line in sql.splitlines() if not re.match(rf"\s*{column}\s", line)]
    sql = re.sub(r",(\s*--[^\n]*)?(\s*)\)\s*$", r"\1\2)", "\n".join(lines))  # no comma before the ")"
    kept = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[1] != column]
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute("PRAGMA legacy_alter_table = ON")
    con.execute(f"ALTER TABLE {table} RENAME TO {table}_before")
    con.execute(sql)
    con.execute(f"INSERT INTO {table} ({', '.join(kept)}) SELECT {', '.join(kept)} FROM {table}_before")
    con.execute(f"DROP TABLE {table}_before")
    con.execute("PRAGMA legacy_alter_table = OFF")


def as_schema_4(con, key) -> None:
    """Make a library as gigaface made it before templates were sealed in blocks: each face's
    own sealed float32 template in `faces.embedding`, no face_blocks (for migration tests)."""
    from gigaface.library.sealed_blocks import unseal_block

    templates = []
    for block_id, capture_id, sealed in con.execute("SELECT id, capture_id, sealed FROM face_blocks").fetchall():
        block = unseal_block(key, sealed, block_id, capture_id)
        templates += [(key.seal(v.astype("float32").tobytes()), int(i)) for i, v in zip(block.ids, block.vectors)]
    con.execute("ALTER TABLE faces ADD COLUMN embedding BLOB")
    con.executemany("UPDATE faces SET embedding = ? WHERE id = ?", templates)
    con.execute("ALTER TABLE faces DROP COLUMN block")
    con.execute("DROP TABLE face_blocks")
    con.execute("DELETE FROM sqlite_sequence WHERE name = 'face_blocks'")
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
