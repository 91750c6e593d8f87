"""What a capture is made of: one image, or a camera array's frames placed in a panorama."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    """One image of a capture, placed at (x, y) in the capture's panorama."""

    path: str
    x: int
    y: int
    width: int
    height: int


def panorama_size(frames: Iterable[Frame]) -> tuple[int, int]:
    """Width and height of the panorama the frames span (from 0, 0: nothing is stitched)."""
    frames = list(frames)
    return max(f.x + f.width for f in frames), max(f.y + f.height for f in frames)
