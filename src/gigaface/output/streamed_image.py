"""Write an image far larger than memory from full-width bands.

The bands are streamed as an uncompressed PNG through a ``pyvips.SourceCustom``
straight into a libvips saver, so neither side ever holds the whole image.  PNG
is the wire format because the libvips bundled with pyvips has no PPM loader and
memory-maps raw files whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyvips

from gigaface.atomic import temporary_beside

__all__ = ["write_streamed"]

# Bands are copied into PNG scanlines this many bytes at a time, so the copy
# stays small however tall the caller's bands are.
SCANLINE_BYTES = 8_000_000


def write_streamed(path: Path, width: int, height: int, bands: Iterable[np.ndarray],
                   on_progress: Callable[[int, int], None] | None = None, **save_options) -> None:
    """Write a `width` x `height` RGB image to `path`, format from its suffix
    (e.g. ``Q=90`` for a JPEG).  `bands` gives (rows, width, 3) uint8 arrays,
    top to bottom, `height` rows in all; a band is copied before the next one is
    asked for, so a producer may reuse its buffer.

    `on_progress(rows_done, height)` is called after each band, from a libvips
    worker thread, which is also where `bands` is iterated.  The file appears
    only once complete.
    """
    path = Path(path)
    stream = _png_stream(width, height, bands, on_progress)
    pending = memoryview(b"")
    failure: list[BaseException] = []

    def read(size: int) -> memoryview | None:
        # Runs on a libvips thread.  An exception escaping here would only
        # look like end-of-file to libvips, so keep it and raise it later.
        nonlocal pending
        try:
            while not pending:
                pending = memoryview(next(stream))
        except StopIteration:
            return None
        except BaseException as exc:
            failure.append(exc)
            return None
        piece, pending = pending[:size], pending[size:]
        return piece

    source = pyvips.SourceCustom()
    source.on_read(read)
    with temporary_beside(str(path), suffix=path.suffix) as tmp:  # libvips reads the suffix
        image = pyvips.Image.pngload_source(source, access="sequential", fail_on="truncated")
        try:
            image.write_to_file(tmp, **save_options)
        except pyvips.Error:
            if not failure:
                raise
        if failure:             # the real cause of a truncated stream
            raise failure[0]
        os.replace(tmp, path)


def _png_stream(width: int, height: int, bands: Iterable[np.ndarray],
                on_progress: Callable[[int, int], None] | None) -> Iterator[bytes | memoryview]:
    """An RGB PNG whose deflate stream uses stored (uncompressed) blocks, so
    scanlines are passed on without compression work."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    yield b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    yield chunk(b"IDAT", b"\x78\x01")                       # zlib header
    # Filter byte 0 (none) then RGB per row; the filter column is never written.
    scanlines = np.zeros((max(1, SCANLINE_BYTES // (1 + 3 * width)), 1 + 3 * width), np.uint8)
    adler, done = 1, 0
    for band in bands:
        if band.ndim != 3 or band.shape[1:] != (width, 3) or band.dtype != np.uint8:
            raise ValueError(f"band of shape {band.shape} ({band.dtype}); expected (rows, {width}, 3) uint8")
        if done + len(band) > height:
            raise ValueError(f"bands give more than the {height} rows of the image")
        for r0 in range(0, len(band), len(scanlines)):
            rows = band[r0:r0 + len(scanlines)]
            scanlines[:len(rows), 1:] = rows.reshape(len(rows), -1)
            data = memoryview(scanlines[:len(rows)].reshape(-1))
            adler = zlib.adler32(data, adler)
            blocks = range(0, len(data), 0xFFFF)
            yield struct.pack(">I", len(data) + 5 * len(blocks)) + b"IDAT"
            crc = zlib.crc32(b"IDAT")
            for i in blocks:
                n = min(0xFFFF, len(data) - i)
                head = struct.pack("<BHH", 0, n, n ^ 0xFFFF)     # stored block, not final
                crc = zlib.crc32(data[i:i + n], zlib.crc32(head, crc))
                yield head
                yield data[i:i + n]
            yield struct.pack(">I", crc)
        done += len(band)
        if on_progress is not None:
            on_progress(done, height)
    if done != height:
        raise ValueError(f"bands gave {done} rows of the image's {height}")
    # An empty final block, then the checksum of all the scanlines.
    yield chunk(b"IDAT", struct.pack("<BHH", 1, 0, 0xFFFF) + struct.pack(">I", adler))
    yield chunk(b"IEND", b"")
