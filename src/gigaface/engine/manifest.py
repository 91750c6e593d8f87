"""Camera-array captures: a JSON manifest of frames and where each lands in the panorama.

    {"frames": [{"file": "cam00.jpg", "x": 0, "y": 0}, {"file": "cam01.jpg", "x": 3800, "y": 0}]}

Paths are relative to the manifest, and must stay inside its folder (symbolic links
resolved): a manifest handed to the service could otherwise make it read any image on the
server. `frames_anywhere` (the CLI's `scan --frames-anywhere`) lifts that for a manifest
the user trusts. Frames may overlap; nothing is stitched.
"""
from __future__ import annotations

import json
import os

from gigaface.errors import GigafaceError
from gigaface.engine.frames import Frame, panorama_size
from gigaface.paths import require_regular_file
from gigaface.engine.source import DEFAULT_MAX_PIXELS, probe

MAX_FRAMES = 100_000


def is_manifest(path: str) -> bool:
    return path.lower().endswith(".json")


def read_manifest(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, frames_anywhere: bool = False) -> list[Frame]:
    if not os.path.exists(path):
        raise GigafaceError(f"{path}: cannot read manifest (no such file)")
    require_regular_file(path, "manifest")  # a FIFO would block the open forever
    try:
        with open(path, "rb") as f:
            raw = f.read(64 * 1024 * 1024 + 1)
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot read manifest ({exc.strerror})") from None
    if len(raw) > 64 * 1024 * 1024:
        raise GigafaceError(f"{path}: manifest larger than 64 MB")
    try:
        data = json.loads(raw)
    except RecursionError:  # [[[[...: json recurses once per level
        raise GigafaceError(f"{path}: not a valid JSON manifest (nested too deeply)") from None
    except ValueError as exc:  # bad syntax or encoding, or a number of thousands of digits
        reason = str(exc).split(";")[0]  # not Python's advice to raise its digit limit
        raise GigafaceError(f"{path}: not a valid JSON manifest ({reason})") from None
    entries = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise GigafaceError(f"{path}: a manifest needs a non-empty \"frames\" list")
    if len(entries) > MAX_FRAMES:
        raise GigafaceError(f"{path}: more than {MAX_FRAMES} frames")
    base = os.path.dirname(os.path.abspath(path))
    frames: list[Frame] = []
    for i, entry in enumerate(entries):
        where = f"{path}: frame {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise GigafaceError(f"{where}: needs a \"file\" string")
        if "\0" in entry["file"]:
            raise GigafaceError(f"{where}: the file name holds a NUL character")
        x, y = entry.get("x", 0), entry.get("y", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
            raise GigafaceError(f"{where}: x and y must be whole numbers of pixels")
        if x < 0 or y < 0:
            raise GigafaceError(f"{where}: negative offset ({x}, {y}); the panorama starts at 0, 0")
        if max(x, y) >= max_pixels:  # checked before the offset is printed or stored
            raise GigafaceError(f"{where}: offset too large for a panorama under the pixel limit of {max_pixels:,}")
        file = os.path.normpath(os.path.join(base, entry["file"]))
        if not frames_anywhere and not _inside(file, base):
            raise GigafaceError(f"{where}: {entry['file']!r} is outside the manifest's folder"
                                " (allow it with --frames-anywhere if you trust this manifest)")
        info = probe(file, max_pixels)
        frames.append(Frame(file, x, y, info.width, info.height))
    width, height = panorama_size(frames)
    if width * height > max_pixels:
        raise GigafaceError(f"{path}: the panorama would be {width}x{height}, over the pixel limit")
    return frames


def frames_of(path: str, max_pixels: int, frames_anywhere: bool = False) -> tuple[str, list[Frame]]:
    """The kind of input and its frames; a manifest's frames must lie in its folder unless
    `frames_anywhere`."""
    if is_manifest(path):
        return "manifest", read_manifest(path, max_pixels, frames_anywhere=frames_anywhere)
    info = probe(path, max_pixels)
    return "image", [Frame(os.path.abspath(path), 0, 0, info.width, info.height)]


def _inside(file: str, folder: str) -> bool:
    real, top = os.path.realpath(file), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top
