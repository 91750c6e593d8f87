"""DeepZoom pyramids for the viewer, made by libvips' dzsave from a streamed read.

A pyramid is `NAME.dzi` plus `NAME_files/`. It is written into a temporary folder beside
its destination and moved into place tiles first, descriptor last: a `.dzi` that exists is
always complete.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence

import pyvips

from gigaface.atomic import temporary_beside
from gigaface.errors import GigafaceError
from gigaface.engine.frames import Frame, panorama_size
from gigaface.engine.source import as_rgb8, error_text, open_sequential

TILE = 254      # + 1 px overlap each side = 256-px tiles, OpenSeadragon's default
QUALITY = 85


def composed(frames: Sequence[Frame], images: Sequence[pyvips.Image] | None = None) -> pyvips.Image:
    """The capture's panorama as one lazy image: a single image as is, camera-array frames
    placed at their offsets on black (each frame is still decoded top to bottom). `images`
    replaces the frames' files, e.g. with blurred copies."""
    images = list(images) if images is not None else [open_sequential(f.path) for f in frames]
    images = [as_rgb8(image) for image in images]
    if len(frames) == 1 and frames[0].x == 0 and frames[0].y == 0:
        return images[0]
    width, height = panorama_size(frames)
    canvas = pyvips.Image.black(width, height, bands=3).cast("uchar").copy(interpretation="srgb")
    for frame, image in zip(frames, images):
        canvas = canvas.insert(image, frame.x, frame.y)
    return canvas


def build_pyramid(image: pyvips.Image, dzi: str, on_progress: Callable[[int], None] | None = None) -> str:
    """Write `image` as a DeepZoom pyramid at `dzi` (…/NAME.dzi), replacing any earlier one.

    `on_progress(percent)` is called from libvips as the image is read.
    """
    if not dzi.endswith(".dzi"):
        raise ValueError("a DeepZoom descriptor ends in .dzi")
    folder = os.path.dirname(os.path.abspath(dzi))
    name = os.path.basename(dzi)[: -len(".dzi")]
    os.makedirs(folder, exist_ok=True)
    # Work folders of a run that was killed are removed by the next build of this pyramid.
    with temporary_beside(dzi, folder=True) as work:
        if on_progress is not None:
            image.set_progress(True)
            image.signal_connect("eval", lambda _image, progress: on_progress(int(progress.percent)))
        try:
            # keep=NONE: tiles and vips-properties.xml carry pixels only, no EXIF, XMP or GPS.
            image.dzsave(os.path.join(work, name), tile_size=TILE, overlap=1, suffix=f".jpg[Q={QUALITY}]",
                         keep=pyvips.ForeignKeep.NONE)
        except pyvips.Error as exc:
            raise GigafaceError(f"{dzi}: cannot build the pyramid ({error_text(exc)})") from None
        remove_pyramid(dzi)
        os.replace(os.path.join(work, f"{name}_files"), os.path.join(folder, f"{name}_files"))
        os.replace(os.path.join(work, f"{name}.dzi"), dzi)
    return dzi


def remove_pyramid(dzi: str) -> None:
    """Descriptor first, so that a half-removed pyramid never looks complete."""
    if os.path.exists(dzi):
        os.remove(dzi)
    shutil.rmtree(dzi[: -len(".dzi")] + "_files", ignore_errors=True)
