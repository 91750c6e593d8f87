"""Which scales to look at and how to cut each into tiles.

Each pass looks at the image at one scale and owns a range of face sizes. Tiles of one
pass share a grid of square cores; a tile is its core plus a margin on every side, and
keeps only faces whose centre lies in its core, so merging tiles is a filter, not a
search. The margin is half the largest face the pass keeps, so those faces are seen whole.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import GigafaceError

PRESETS = ("fast", "balanced", "accurate")
TILE = 640
DETECTOR_FLOOR = 16  # px: below this the detector at native scale misses about half the faces
COARSE_MIN = 20  # px at pass scale: smallest face a downscaled pass is trusted with
MIN_FACE_FLOOR = 4  # px: even upscaled 4x, smaller faces are below the detector's reach


@dataclass(frozen=True)
class Pass:
    scale: float
    margin: int  # pixels at pass scale
    min_size: float  # native pixels, inclusive
    max_size: float  # native pixels, exclusive
    tile: int = TILE

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin


@dataclass(frozen=True)
class Settings:
    preset: str = "balanced"
    min_face: float = 16.0
    threshold: float = 0.45
    nms_iou: float = 0.4
    min_embed: float = 20.0  # px: smaller faces get a quality record and a crop, no embedding
    tile: int = TILE

    def to_dict(self) -> dict:
        return asdict(self)


PRESET_DEFAULTS = {
    "fast": dict(min_face=18.0, threshold=0.5),
    "balanced": dict(min_face=16.0, threshold=0.45),
    "accurate": dict(min_face=8.0, threshold=0.35),
}
# Native-pass margin per preset: larger margins see larger faces at native scale at the
# cost of more overlap between tiles (more tiles per megapixel).
NATIVE_MARGIN = {"fast": 48, "balanced": 64, "accurate": 96}


def settings_for(preset: str = "balanced", min_face: float | None = None, **overrides) -> Settings:
    if preset not in PRESETS:
        raise GigafaceError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESET_DEFAULTS[preset])
    if min_face is not None:
        if not MIN_FACE_FLOOR <= min_face:
            raise GigafaceError(f"--min-face {min_face:g}: the detector cannot look for faces under {MIN_FACE_FLOOR} px")
        values["min_face"] = float(min_face)
    if overrides.get("min_embed") is not None and overrides["min_embed"] < 0:
        raise GigafaceError("--min-embed cannot be negative")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(preset=preset, **values)


def plan_passes(width: int, height: int, settings: Settings) -> list[Pass]:
    """Passes from the finest scale to the coarsest, together covering min_face..image size."""
    tile = settings.tile
    native_margin = NATIVE_MARGIN[settings.preset]
    passes: list[Pass] = []
    native_min = settings.min_face
    if settings.min_face < DETECTOR_FLOOR:
        # Upscale so the smallest asked-for face reaches the detector's comfortable size.
        up = 2.0 if settings.min_face * 2 >= DETECTOR_FLOOR or settings.preset != "accurate" else 4.0
        up_margin = 48
        passes.append(Pass(up, up_margin, settings.min_face, (2 * up_margin) / up, tile))
        native_min = DETECTOR_FLOOR * 0.75  # overlap the ranges; the merge removes duplicates
    passes.append(Pass(1.0, native_margin, native_min, 2.0 * native_margin, tile))
    covered = 2.0 * native_margin
    largest_possible = min(width, height)
    scale = 1.0
    if settings.preset == "accurate" and covered < largest_possible:
        passes.append(Pass(0.5, 96, covered * 0.4, 2 * 96 / 0.5, tile))
        covered, scale = 2 * 96 / 0.5, 0.5
    while covered < largest_possible:
        scale /= 4
        margin = min(160, (tile - 64) // 2)
        top = 2 * margin / scale
        passes.append(Pass(scale, margin, min(COARSE_MIN / scale, covered * 0.6), top, tile))
        covered = top
    return passes


def tile_columns(width: int, p: Pass) -> list[tuple[int, int]]:
    """(core_x0, core_x1) of each tile column at pass scale."""
    return [(x, min(width, x + p.core)) for x in range(0, width, p.core)]
