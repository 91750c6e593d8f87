"""A contact sheet: crops in a grid, each with a few lines of text under it, as one PNG."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from gigaface.errors import GigafaceError
from gigaface.atomic import temporary_beside

CELL_W, CELL_H, PAD = 160, 200, 8
MARKED, PLAIN = (40, 160, 60), (150, 150, 150)  # frame colours, RGB


@dataclass(frozen=True)
class Cell:
    crop: bytes | None  # an encoded image (the library's JPEG crop), or None for an empty frame
    lines: list[str]
    marked: bool  # framed in green instead of grey


def write_contact_sheet(cells: Sequence[Cell], out: str, columns: int = 6) -> str:
    rows = max(1, -(-len(cells) // columns))
    sheet = np.full((rows * CELL_H + PAD, columns * CELL_W + PAD, 3), 245, np.uint8)
    side = CELL_W - 2 * PAD
    for k, cell in enumerate(cells):
        r, c = divmod(k, columns)
        x0, y0 = PAD + c * CELL_W, PAD + r * CELL_H
        if cell.crop:
            crop = cv2.imdecode(np.frombuffer(cell.crop, np.uint8), cv2.IMREAD_COLOR)
            f = side / max(crop.shape[:2])
            crop = cv2.resize(crop, (max(1, int(crop.shape[1] * f)), max(1, int(crop.shape[0] * f))),
                              interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
            sheet[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        cv2.rectangle(sheet, (x0 - 3, y0 - 3), (x0 + side + 2, y0 + side + 2), MARKED if cell.marked else PLAIN, 3)
        for j, text in enumerate(cell.lines):
            cv2.putText(sheet, text, (x0, y0 + CELL_W - PAD + 14 + 14 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                        (20, 20, 20), 1, cv2.LINE_AA)
    with temporary_beside(out, suffix=".png") as tmp:  # OpenCV picks the format by the suffix
        if not cv2.imwrite(tmp, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise GigafaceError(f"{out}: cannot write PNG")
        os.chmod(tmp, 0o600)  # the crops of a person's matches, sharp: for the owner's eyes only
        os.replace(tmp, out)
    return out
