"""Which scales to look at and how to cut each into tiles.

Each pass looks at the image at one scale and owns a range of face sizes. Tiles of one
pass share a grid of square cores; a tile is its core plus a margin on every side, and
keeps only faces whose centre lies in its core, so merging tiles is a filter, not a
search. The margin is half the largest face the pass keeps, so those faces are seen whole.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from gigaface.errors import GigafaceError

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
    flip: bool = False  # also look at each tile mirrored (test-time augmentation)
    # Scores of upscaled passes run low for faces that are really there, so across
    # passes they are put on one scale before the merge ranks them (fitted on WIDER FACE).
    weight: float = 1.0
    # Read the image at native scale and enlarge each tile on its own: the band in memory
    # stays native-sized. For the pass that looks for tiny faces.
    upscale_tiles: bool = False
    # Look only in tiles near faces the passes before this one found (detect.seeded_tiles):
    # small faces are in crowds, and most of a panorama is not.
    seeded: bool = False

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin

    @property
    def looks(self) -> int:
        """Inferences per tile."""
        return 2 if self.flip else 1

    @property
    def up(self) -> int:
        """How much each tile is enlarged from native rows (1: the image is read at `scale`)."""
        return round(self.scale) if self.upscale_tiles else 1


# Where the names a library and the API use for settings differ from the attributes.
STORED_NAMES = {"score_threshold": "threshold", "blur_score_threshold": "blur_threshold"}
# Names older libraries stored, read as today's attributes.
LEGACY_NAMES = {"blur_upscale": "small_face_pass"}


@dataclass(frozen=True)
class Settings:
    preset: str = "balanced"
    min_face: float = 10.0
    score_threshold: float = 0.5  # the detector's score, not a distance between faces
    nms_iou: float = 0.4
    min_embed: float = 20.0  # px: smaller faces get a quality record and a crop, no embedding
    tile: int = TILE
    # The sensitive operating point: everything the detector sees down to here is blurred
    # in every published image, though only faces at score_threshold/min_face are listed (counted,
    # described, searched). A blurred false face costs nothing; a sharp real one leaks.
    blur_score_threshold: float = 0.12
    blur_min_face: float = 4.0
    # Look for faces under 32 px in a 2x pass too (tiles enlarged one by one from native
    # rows), where the native pass saw faces: at native scale the detector misses most
    # faces under 16 px.
    small_face_pass: bool = True

    def to_dict(self) -> dict:
        """The settings as a library stores them with a capture (and the API shows them): under
        the names they had when "threshold" meant only this, so older libraries resume."""
        return {STORED_NAMES.get(k, k): v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, stored: dict) -> "Settings":
        names = {v: k for k, v in STORED_NAMES.items()} | LEGACY_NAMES
        return cls(**{names.get(k, k): v for k, v in stored.items()})

    @property
    def detect_score_threshold(self) -> float:
        return min(self.score_threshold, self.blur_score_threshold)

    @property
    def looks_for_small_faces(self) -> bool:
        """Whether the passes end with upscaled, seeded ones for faces under the native pass's
        comfortable size: the preset's choice, or a --min-face under it."""
        return self.small_face_pass or self.min_face < DETECTOR_FLOOR

    @property
    def decode_score_threshold(self) -> float:
        """What the passes keep from the detector: down to the detection floor, and with
        small-face passes further, down to the faint faces that tell them where to look (only
        the merge drops those)."""
        if self.looks_for_small_faces:
            return min(self.detect_score_threshold, SEED_SCORE)
        return self.detect_score_threshold

    @property
    def detect_min_face(self) -> float:
        return min(self.min_face, self.blur_min_face)

    def listed(self, scores: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Which detections are faces at the precise operating point. The score must pass the
        threshold strictly, as the detector's own decoding did before there was a blur point."""
        return (scores > self.score_threshold) & (sizes >= self.min_face)

    def listing_only(self) -> "Settings":
        """These settings without the blur point: the listed faces, at the cost of today's passes."""
        return replace(self, blur_score_threshold=self.score_threshold, blur_min_face=self.min_face)


# Measured on the WIDER FACE images of bench/report.md, section 1 (every face counted): a 2x
# pass for faces under 32 px, run only on the tiles near faces the native pass found (20 %
# of its tiles), with its scores weighted by 1.3, took `balanced` from AP50 0.48 to 0.82 and
# recall at the blur point (score 0.12) to 0.90 for 10-16 px faces and 0.94 for 16-32 px.
# Listed at score 0.5, where 91 % of what is listed is a labelled face. Mirrored tiles at 2x
# added 0.01 recall for twice the pass's work. `fast` keeps to the native scale (blur point
# from bench/privacy.py: 0.15 and 6 px); `accurate` lists at a sensitive point already.
PRESET_DEFAULTS = {
    "fast": dict(min_face=18.0, score_threshold=0.5, blur_score_threshold=0.15, blur_min_face=6.0,
                 small_face_pass=False),
    "balanced": dict(min_face=10.0, score_threshold=0.5, blur_score_threshold=0.12, blur_min_face=4.0,
                     small_face_pass=True),
    # A low threshold and a looser NMS: on WIDER FACE each step of the threshold from 0.35
    # down to 0.12 bought more recall on tiny faces than it cost in precision, and faces in
    # a crowd overlap more than NMS at 0.4 lets through.
    "accurate": dict(min_face=4.0, score_threshold=0.12, nms_iou=0.5, blur_score_threshold=0.12, blur_min_face=4.0,
                     small_face_pass=True),
}
# Native-pass margin per preset: larger margins see larger faces at native scale at the
# cost of more overlap between tiles (more tiles per megapixel).
NATIVE_MARGIN = {"fast": 48, "balanced": 64, "accurate": 96}
SMALL_FACE_MAX = 32.0  # px: the 2x pass's largest face, native pixels
# Faces the passes before it found, scored over SEED_SCORE and smaller than SEED_MAX_SIZE,
# seed the small-face pass. At native scale the detector scores faces of 11-14 px 0.05-0.11
# (astronaut faces on a plain ground, the hardest case: no bigger face near them). Small
# seeds only: on the 100-MP WIDER mosaic seeds of any size had the 2x pass run 37 % of its
# tiles, seeds under 24 px 21 %, with the same recall; on the WIDER images 35 % and 20 %.
SEED_SCORE = 0.05
SEED_MAX_SIZE = 24.0
SMALL_FACE_WEIGHT = 1.3  # its scores, put on the native pass's scale (fitted on WIDER FACE)


def settings_for(preset: str = "balanced", min_face: float | None = None, **overrides) -> Settings:
    if preset not in PRESETS:
        raise GigafaceError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESET_DEFAULTS[preset])
    if min_face is not None:
        if not MIN_FACE_FLOOR <= min_face:
            raise GigafaceError(f"--min-face {min_face:g}: the detector cannot look for faces under {MIN_FACE_FLOOR} px")
        values["min_face"] = float(min_face)
        values["blur_min_face"] = min(values["blur_min_face"], float(min_face))
    if overrides.get("min_embed") is not None and overrides["min_embed"] < 0:
        raise GigafaceError("--min-embed cannot be negative")
    values.update({k: v for k, v in overrides.items() if v is not None})
    # Asking to list more never blurs less.
    values["blur_score_threshold"] = min(values["blur_score_threshold"], values["score_threshold"])
    return Settings(preset=preset, **values)


def plan_passes(width: int, height: int, settings: Settings) -> list[Pass]:
    """Passes that together cover the detection floor (min_face, or the lower blur_min_face)
    up to the image's size: the listing passes, the finest-scale one and the small-face pass
    reaching down to the floor."""
    passes = listing_passes(width, height, settings)
    floor = settings.detect_min_face
    return [replace(p, min_size=min(p.min_size, floor)) if i == 0 or p.seeded else p for i, p in enumerate(passes)]


def listing_passes(width: int, height: int, settings: Settings) -> list[Pass]:
    """The passes that find the listed faces, min_face..image size: the native pass, coarser
    passes for faces as large as the image, then the upscaled passes for small faces, seeded
    by the faces all the others found."""
    tile = settings.tile
    native_margin = NATIVE_MARGIN[settings.preset]
    accurate = settings.preset == "accurate"
    small = settings.looks_for_small_faces
    passes: list[Pass] = []
    # With an upscaled pass below it, the native pass starts where the detector is at ease
    # (the ranges overlap; the merge removes duplicates).
    native_min = max(settings.min_face, DETECTOR_FLOOR) if small and accurate else settings.min_face
    passes.append(Pass(1.0, native_margin, native_min, 2.0 * native_margin, tile, flip=accurate))
    covered = 2.0 * native_margin
    largest_possible = min(width, height)
    scale = 1.0
    if accurate and covered < largest_possible:
        passes.append(Pass(0.5, 96, covered * 0.25, 2 * 96 / 0.5, tile, flip=True))
        covered, scale = 2 * 96 / 0.5, 0.5
    while covered < largest_possible:
        scale /= 4
        margin = min(160, (tile - 64) // 2)
        top = 2 * margin / scale
        passes.append(Pass(scale, margin, min(COARSE_MIN / scale, covered * 0.6), top, tile, flip=accurate))
        covered = top
    if small:
        # Last, so that the faces every other pass found say where the crowds are; each
        # margin (at its scale) holds its largest face whole. `accurate` looks at small faces
        # at 3x and at 2x (mirrored too), whose misses differ; mirrored at 3x, it added more
        # false faces than found ones.
        if accurate:
            # Read at 3x by libvips, not tile by tile: a tile's 640 px are no whole number of
            # native rows at 3x.
            passes.append(Pass(3.0, 64, settings.min_face, 40.0, tile, weight=1.3, seeded=True))
            passes.append(Pass(2.0, 96, max(settings.min_face, 6.0), 80.0, tile, flip=True, weight=1.15,
                               upscale_tiles=True, seeded=True))
        else:
            passes.append(Pass(2.0, int(SMALL_FACE_MAX), min(settings.min_face, SMALL_FACE_MAX), SMALL_FACE_MAX,
                               tile, weight=SMALL_FACE_WEIGHT, upscale_tiles=True, seeded=True))
    return passes


def tile_columns(width: int, p: Pass) -> list[tuple[int, int]]:
    """(core_x0, core_x1) of each tile column at pass scale."""
    return [(x, min(width, x + p.core)) for x in range(0, width, p.core)]
