"""Pixels in, one region at a time: images opened lazily with pyvips and read top to bottom.

A JPEG cannot be read at random cheaply, so every reader here walks the image in
full-width bands, top to bottom (`access="sequential"`), and never holds the whole image.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyvips

from gigaface.errors import GigafaceError
from gigaface.paths import require_regular_file


DEFAULT_MAX_PIXELS = 4_000_000_000  # refuse decompression bombs; raise with --max-pixels
# Progressive JPEGs and interlaced PNGs cannot be decoded a band at a time: the decoder
# holds the whole image (about 2 bytes a sample for JPEG coefficients). Above this we
# refuse rather than break the memory bound.
UNSTREAMABLE_MAX_PIXELS = 250_000_000
JPEG_SHRINKS = (2, 4, 8)


@dataclass(frozen=True)
class ImageInfo:
    path: str
    width: int
    height: int
    loader: str


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_sequential(path: str, **options) -> pyvips.Image:
    # fail_on="truncated" turns libvips' "premature end of file" warning (which would
    # silently pad the image with grey) into an error we can report. libtiff reports a
    # strip or tile cut short only as a read error, which "truncated" lets through as
    # black rows (a 60,000 x 60,000 header with no pixels would be scanned for hours):
    # TIFFs fail on any decode error.
    fail_on = _fail_on(path)
    if fail_on != "error":  # not a TIFF, whose tiles and strips libtiff reads in any order
        try:
            return pyvips.Image.new_from_source(unmapped_source(path), "", access="sequential", fail_on=fail_on,
                                                **options)
        except (pyvips.Error, OSError):
            pass  # a format libvips reads from files only: open it by name, which also says what is wrong
    return pyvips.Image.new_from_file(path, access="sequential", fail_on=fail_on, **options)


def unmapped_source(path: str) -> pyvips.Source:
    """The file as libvips reads it through read() calls. Opened by name, libvips maps the
    file, and every page of it read stays in the process's resident set until the image is
    closed: a 2-GP JPEG's 345 MB, counted in every walk down it (the kernel could drop them,
    but RSS, and whoever watches it, counts them)."""
    stream = open(path, "rb", buffering=0)
    source = pyvips.SourceCustom()
    source.on_read(stream.read)
    source.on_seek(stream.seek)
    return source


def _fail_on(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return "truncated"  # libvips will say what is wrong with it
    return "error" if head in TIFF_MAGIC else "truncated"


def probe(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only; refuse what we cannot or should not decode."""
    require_regular_file(path, "image")  # before any open: a FIFO would block it forever
    try:
        image = open_sequential(path)
    except pyvips.Error as exc:
        raise GigafaceError(f"{path}: not an image that libvips can read ({error_text(exc)})") from None
    if image.width < 1 or image.height < 1:
        raise GigafaceError(f"{path}: image has no pixels")
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise GigafaceError(
            f"{path}: {image.width}x{image.height} is {pixels:,} pixels, over the limit of "
            f"{max_pixels:,}; raise it with --max-pixels if you trust this file"
        )
    layered = [field for field in ("jpeg-multiscan", "interlaced") if image.get_typeof(field) and image.get(field)]
    if layered and pixels > UNSTREAMABLE_MAX_PIXELS:
        raise GigafaceError(
            f"{path}: {'a progressive JPEG' if layered[0] == 'jpeg-multiscan' else 'an interlaced PNG'} this large "
            f"cannot be read band by band; convert it once, e.g. vips copy {path} big.tif[tile,compression=jpeg,bigtiff]")
    return ImageInfo(path, image.width, image.height, loader_of(image))


def loader_of(image: pyvips.Image) -> str:
    return image.get("vips-loader") if image.get_typeof("vips-loader") else ""


def open_shrunk(path: str, loader: str, factor: int) -> tuple[pyvips.Image, int]:
    """The image opened at 1/shrink size, shrink <= factor, and shrink: JPEGs decode at 1/2,
    1/4 or 1/8 with libjpeg's DCT scaling, far cheaper than decoding all and shrinking."""
    shrink = max((s for s in JPEG_SHRINKS if s <= factor), default=1) if loader.startswith("jpegload") else 1
    return open_sequential(path, **({"shrink": shrink} if shrink > 1 else {})), shrink


def error_text(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[:2])[:200] if text else type(exc).__name__


def as_rgb8(image: pyvips.Image) -> pyvips.Image:
    """Any libvips image as 3-band 8-bit sRGB: flatten alpha, convert grey/CMYK/16-bit."""
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255] if image.bands > 2 else [255])
    if image.interpretation not in ("srgb",) or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def load_scaled(info: ImageInfo, scale: float) -> tuple[pyvips.Image, float]:
    """A lazy, sequential RGB view of the image at about `scale`; returns it and the exact scale.

    Downscaling a JPEG uses libjpeg's shrink-on-load, which decodes far fewer pixels.
    """
    try:
        image = as_rgb8(open_shrunk(info.path, info.loader, round(1 / scale) if scale < 1 else 1)[0])
    except pyvips.Error as exc:
        raise GigafaceError(f"{info.path}: cannot read ({error_text(exc)})") from None
    if image.width != round(info.width * scale):
        residual = scale * info.width / image.width
        if abs(residual - 1) > 1e-6:
            image = image.resize(residual, kernel="linear" if residual > 1 else "lanczos3")
    return image, image.width / info.width


STRIP_ROWS = 64  # rows fetched from libvips at a time: the only transient copy of pixels


def read_rows(image: pyvips.Image, y0: int, y1: int, path: str = "",
              region: pyvips.Region | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [y0, y1) of `image`, fetched in strips into `out` (allocated when not given).

    Pass the same `region` for every read of one reader: each crop().numpy() would be a
    pipeline of its own, and libvips drops its caches when one ends, so a sequential JPEG
    fails ("out of order read") as soon as a read starts inside a strip the decoder has
    passed. Filling `out` strip by strip keeps the transient copy to STRIP_ROWS rows,
    whatever the image's width.
    """
    region = region or pyvips.Region.new(image)
    if out is None:
        out = np.empty((y1 - y0, image.width, image.bands), np.uint8)
    try:
        for y in range(y0, y1, STRIP_ROWS):
            h = min(STRIP_ROWS, y1 - y)
            out[y - y0 : y - y0 + h] = np.frombuffer(region.fetch(0, y, image.width, h), np.uint8).reshape(
                h, image.width, image.bands)
    except pyvips.Error as exc:
        raise GigafaceError(f"{path or 'image'}: cannot decode rows {y0}-{y1} ({error_text(exc)})") from None
    return out


@dataclass
class Band:
    index: int
    top: int  # first row of `pixels` in the scaled image
    core_top: int  # rows [core_top, core_bottom) are owned by this band
    core_bottom: int
    pixels: np.ndarray


def bands(image: pyvips.Image, core_rows: int, margin: int, start: int = 0, path: str = "",
          prefetch: bool = True, stop: int | None = None) -> Iterator[Band]:
    """Full-width bands that own `core_rows` rows each and see `margin` rows beyond both edges;
    bands `start` to `stop` (exclusive; None: to the bottom).

    Rows shared with the previous band are carried over in memory, so each row is decoded
    once; with `prefetch` the next band is decoded in a thread while the caller works
    (libvips releases the GIL while decoding).
    """
    height = image.height
    count = (height + core_rows - 1) // core_rows

    def produce() -> Iterator[Band]:
        region = pyvips.Region.new(image)  # made and used in the thread that reads
        previous: Band | None = None
        for index in range(start, count if stop is None else min(stop, count)):
            core_top = index * core_rows
            core_bottom = min(height, core_top + core_rows)
            top, bottom = max(0, core_top - margin), min(height, core_bottom + margin)
            pixels = np.empty((bottom - top, image.width, image.bands), np.uint8)
            have = top
            if previous is not None:
                prev_bottom = previous.top + previous.pixels.shape[0]
                if previous.top <= top < prev_bottom:
                    have = min(bottom, prev_bottom)
                    pixels[: have - top] = previous.pixels[top - previous.top : have - previous.top]
            read_rows(image, have, bottom, path, region, out=pixels[have - top :])
            previous = Band(index, top, core_top, core_bottom, pixels)
            yield previous

    if not prefetch:
        yield from produce()
        return
    yield from _prefetched(produce())


_DONE = object()


def _prefetched(items: Iterator) -> Iterator:
    """`items`, each produced in a thread while the consumer works on the one before.

    A hand-over, not a queue: the thread starts the next item only once the consumer has
    taken the last, so at most two bands are alive (a queue of one would allow three).
    """
    wanted = threading.Semaphore(0)
    handed: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in items:
                while not wanted.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                handed.put(item)
            wanted.acquire()
            handed.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            handed.put(exc)

    thread = threading.Thread(target=worker, daemon=True, name="band-prefetch")
    thread.start()
    try:
        while True:
            wanted.release()
            item = handed.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            item = None  # drop our reference before asking for the next
    finally:
        stop.set()


class RowWindow:
    """A sliding window of rows for work that needs whole regions (face chips, blurs).

    Call `rows(y0, y1)` with non-decreasing `y1` and `y1 - y0 <= keep`. Rows live in a ring
    of `keep + step` full-width rows, so memory is fixed however tall the image is; a
    request returns a copy of just the rows (and columns) asked for.
    """

    STEP = 256  # rows read ahead at a time

    def __init__(self, image: pyvips.Image, keep: int, step: int = STEP, path: str = ""):
        self.image, self.keep, self.step, self.path = image, keep, step, path
        self.region = pyvips.Region.new(image)
        self.capacity = keep + step
        self.pixels = np.empty((min(self.capacity, image.height), image.width, image.bands), np.uint8)
        self.bottom = 0  # rows [top, bottom) are held

    @property
    def top(self) -> int:
        return max(0, self.bottom - self.pixels.shape[0])

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        y0, y1 = max(0, y0), min(self.image.height, y1)
        if y1 > self.bottom:
            # Read ahead by `step`, but never so far that row y0 is overwritten.
            target = min(self.image.height, max(y1, min(self.bottom + self.step, y0 + self.pixels.shape[0])))
            self._load(self.bottom, target)
        if y0 < self.top:
            raise ValueError(f"rows {y0}-{y1} already dropped (window starts at {self.top})")
        index = np.arange(y0, y1) % self.pixels.shape[0]
        return self.pixels[index, x0:x1]

    def _load(self, y0: int, y1: int) -> None:
        size = self.pixels.shape[0]
        y = y0
        while y < y1:
            # Up to the end of the ring at a time, so each read lands in one slice.
            h = min(y1 - y, size - y % size)
            read_rows(self.image, y, y + h, self.path, self.region, out=self.pixels[y % size : y % size + h])
            y += h
        self.bottom = y1
