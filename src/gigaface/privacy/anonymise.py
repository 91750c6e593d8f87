"""Write a copy of an image with faces blurred or pixelated, streamed by libvips.

The output is one lazy libvips pipeline: for each band of face sizes, a shrunk-and-enlarged
copy of the image, chosen per pixel through a small mask of face boxes. libvips evaluates
it top to bottom while writing, so no step holds the whole image. The source file is only
read; the output appears under its name only once complete.

What is published carries pixels and an RGB colour profile, nothing else: the source's
EXIF (with its embedded thumbnail of the unblurred photo, GPS, dates, serial numbers),
XMP, IPTC and comments stay behind, and its EXIF orientation is applied to the pixels.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import pyvips

from gigaface.atomic import temporary_beside
from gigaface.errors import GigafaceError
from gigaface.engine.source import as_rgb8, error_text, loader_of, open_sequential, open_shrunk

STYLES = ("blur", "pixelate")
BOX_GROW = 0.2  # blur this much beyond the detector's box on every side: hair, ears, chin
MASK_MAX_PIXELS = 64_000_000


def _block(size: float) -> int:
    """Shrink factor for a face of this size: a face keeps about 6 blocks across."""
    return int(2 ** max(2, math.ceil(math.log2(max(size, 1) / 6))))


def anonymise(source: str, boxes: Iterable[tuple[float, float, float, float]], out: str,
              style: str = "blur", quality: int = 90) -> int:
    """Blur `boxes` (x, y, w, h in the source's pixels) in a copy of `source` written to `out`.

    Returns how many boxes were blurred.
    """
    if os.path.abspath(out) == os.path.abspath(source):
        raise GigafaceError(f"{out}: refusing to overwrite the original image")
    boxes = [b for b in boxes if b[2] > 0 and b[3] > 0]
    _write(blurred(source, boxes, style), out, quality)
    return len(boxes)


def blur_mask(boxes: Iterable[tuple[float, float, float, float]], width: int, height: int
              ) -> tuple[np.ndarray, int, list[int]]:
    """Where the copy is blurred: (mask, cell, blocks). One mask byte stands for a cell x cell
    square of the image: 0 is left as is, k is blurred with blocks[k - 1] pixels a block."""
    # Mask cell size: a power of two that keeps the mask small; boxes grow outward to it.
    cell = 1
    while (width // cell) * (height // cell) > MASK_MAX_PIXELS or cell < 4:
        cell *= 2
    mask = np.zeros((-(-height // cell), -(-width // cell)), np.uint8)
    blocks: list[int] = []
    for x, y, w, h in sorted((b for b in boxes if b[2] > 0 and b[3] > 0), key=lambda b: max(b[2], b[3])):
        block = _block(max(w, h))
        if block not in blocks:
            blocks.append(block)
        level = blocks.index(block) + 1
        g = BOX_GROW * max(w, h)
        x0, y0 = max(0, int((x - g) // cell)), max(0, int((y - g) // cell))
        x1, y1 = int(math.ceil((x + w + g) / cell)), int(math.ceil((y + h + g) / cell))
        mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], level)
    return mask, cell, blocks


def blurred(source: str, boxes: Iterable[tuple[float, float, float, float]], style: str = "blur") -> pyvips.Image:
    """`source` with `boxes` blurred, as a lazy libvips image to be read top to bottom once."""
    if style not in STYLES:
        raise GigafaceError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    try:
        image = as_rgb8(open_sequential(source))
        loader = loader_of(image)
    except pyvips.Error as exc:
        raise GigafaceError(f"{source}: cannot read ({error_text(exc)})") from None
    width, height = image.width, image.height
    mask, cell, blocks = blur_mask(boxes, width, height)

    out_image = image
    if blocks:
        mask_image = pyvips.Image.new_from_array(mask).cast("uchar").zoom(cell, cell).crop(0, 0, width, height)
        for level, block in enumerate(blocks, start=1):
            # Each branch reads the source on its own, so its rows arrive in order. A JPEG
            # branch decodes at 1/2-1/8 size (libjpeg's DCT scaling): a full-size decoder
            # costs ~200 MB of buffers at 27,000 px wide, a 1/8 one an eighth of that.
            branch, pre = open_shrunk(source, loader, block)
            branch = as_rgb8(branch)
            small = branch.shrink(block // pre, block // pre) if block > pre else branch
            if style == "pixelate":
                big = small.zoom(block, block)
            else:
                big = small.resize(block, kernel="linear").gaussblur(block / 4)
            big = big.embed(0, 0, width, height, extend="copy")
            out_image = (mask_image == level).ifthenelse(big, out_image)
    return out_image


def _write(image: pyvips.Image, out: str, quality: int) -> None:
    directory = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(directory):
        raise GigafaceError(f"{out}: folder {directory} does not exist")
    suffix = os.path.splitext(out)[1].lower()
    options: dict = {}
    if suffix in (".jpg", ".jpeg"):
        options = {"Q": quality}
    elif suffix in (".tif", ".tiff"):
        options = {"tile": True, "compression": "jpeg", "Q": quality,
                   "bigtiff": image.width * image.height * 3 > 3_500_000_000}
    elif suffix == ".webp":
        options = {"Q": quality}
    elif suffix != ".png":
        raise GigafaceError(f"{out}: choose an output ending in .jpg, .png, .tif or .webp")
    # A temporary of a writer that was killed is removed here, by the next write of `out`.
    with temporary_beside(out, suffix) as tmp:
        try:
            with upright(image, out) as turned:
                turned.write_to_file(tmp, **options, **publishable_metadata(turned))
        except pyvips.Error as exc:
            raise GigafaceError(f"{out}: cannot write ({error_text(exc)})") from None
        os.replace(tmp, out)


def publishable_metadata(image: pyvips.Image) -> dict:
    """Saver options that keep no metadata but an RGB colour profile (which only says how
    to show the pixels). A profile of another colour space is dropped too: `as_rgb8` has
    converted those pixels to sRGB."""
    if not pyvips.at_least_libvips(8, 15):
        return {"strip": True}  # older savers cannot keep the profile alone: keep nothing
    return {"keep": pyvips.ForeignKeep.ICC if has_rgb_profile(image) else pyvips.ForeignKeep.NONE}


def has_rgb_profile(image: pyvips.Image) -> bool:
    if not image.get_typeof("icc-profile-data"):
        return False
    profile = image.get("icc-profile-data")
    return len(profile) >= 20 and profile[16:20] == b"RGB "  # the header's data colour space


def orientation(image: pyvips.Image) -> int:
    """The EXIF orientation (1-8) the image's metadata asks for; 1 when none."""
    return int(image.get("orientation")) if image.get_typeof("orientation") else 1


@contextmanager
def upright(image: pyvips.Image, out: str) -> Iterator[pyvips.Image]:
    """`image` turned as its EXIF orientation says, with the tag gone: the published file
    shows the scene as the camera meant, whatever the viewer does with tags. Face boxes
    are in the stored pixel grid, so the blur comes first; turning needs the pixels in
    another order than a sequential read gives them, so the blurred image goes to a
    temporary file beside `out` (disk, not memory) and is turned from there."""
    if orientation(image) == 1:
        yield image
        return
    with temporary_beside(out, ".v") as spill:
        image.write_to_file(spill)
        yield pyvips.Image.new_from_file(spill).autorot()
