"""Reading what a published file carries besides its pixels, from its bytes (no library's
interpretation in between), and a synthetic EXIF photo that carries everything it must not.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyvips

SOI = b"\xff\xd8\xff"
# TIFF/EXIF tags that must not be published: the EXIF and GPS sub-IFDs, XMP, IPTC, Photoshop
# resources (which hold IPTC and thumbnails), maker notes, descriptions, camera and owner.
TIFF_PRIVATE_TAGS = {34665: "ExifIFD", 34853: "GPSInfo", 700: "XMP", 33723: "IPTC", 34377: "Photoshop",
                     37500: "MakerNote", 270: "ImageDescription", 271: "Make", 272: "Model",
                     305: "Software", 306: "DateTime", 315: "Artist", 33432: "Copyright"}


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the first scan."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    i, out = 2, []
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        if marker == 0xDA:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    i, out = 8, []
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        out.append((kind, data[i + 8 : i + 8 + length]))
        i += 12 + length
    return out


def webp_chunks(data: bytes) -> list[bytes]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", "not a WebP"
    i, out = 12, []
    while i + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[i : i + 8])
        out.append(kind)
        i += 8 + length + (length & 1)
    return out


def tiff_tags(data: bytes) -> set[int]:
    """Every tag in every IFD of the main chain (and SubIFDs) of a TIFF or BigTIFF."""
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    tags: set[int] = set()
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    seen = set()
    while offset and offset not in seen:
        seen.add(offset)
        count = struct.unpack(order + ("Q" if big else "H"), data[offset : offset + (8 if big else 2)])[0]
        entry0, size = offset + (8 if big else 2), (20 if big else 12)
        for k in range(count):
            tags.add(struct.unpack(order + "H", data[entry0 + k * size : entry0 + k * size + 2])[0])
        end = entry0 + count * size
        offset = struct.unpack(order + ("Q" if big else "I"), data[end : end + (8 if big else 4)])[0]
    return tags


def assert_publishable(path: Path | str, icc: bytes | None = None) -> None:
    """Nothing but pixels, and at most the colour profile `icc`, in the file at `path`."""
    data = Path(path).read_bytes()
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        segments = jpeg_segments(data)
        app = [(m, p[:14]) for m, p in segments if 0xE0 <= m <= 0xEF or m == 0xFE]
        allowed = [(m, p) for m, p in app if (m == 0xE0 and p.startswith(b"JFIF\0"))
                   or (m == 0xE2 and p.startswith(b"ICC_PROFILE\0"))]
        assert app == allowed, f"{path}: metadata segments {app}"
        assert data.count(SOI) == 1, f"{path}: an embedded JPEG (a thumbnail)"
    elif suffix == ".png":
        kinds = [k for k, _ in png_chunks(data)]
        assert set(kinds) <= {b"IHDR", b"IDAT", b"IEND", b"iCCP", b"pHYs", b"sRGB", b"gAMA", b"cHRM"}, (path, set(kinds))
    elif suffix == ".webp":
        kinds = webp_chunks(data)
        assert set(kinds) <= {b"VP8 ", b"VP8L", b"VP8X", b"ICCP", b"ALPH"}, (path, kinds)
    elif suffix in (".tif", ".tiff"):
        private = tiff_tags(data) & set(TIFF_PRIVATE_TAGS)
        assert not private, f"{path}: {[TIFF_PRIVATE_TAGS[t] for t in private]}"
    else:
        raise AssertionError(f"no check for {suffix}")
    assert icc_profile(data) == icc, f"{path}: not the colour profile it should carry"


def icc_profile(data: bytes) -> bytes | None:
    """The ICC profile a file carries, as libvips reads it (joined from a JPEG's chunks)."""
    image = pyvips.Image.new_from_buffer(data, "")
    return image.get("icc-profile-data") if image.get_typeof("icc-profile-data") else None


# --- a synthetic photo with everything a phone puts in one -------------------------------------
def _ifd(entries: list[tuple[int, int, int, bytes]], start: int, next_ifd: int) -> bytes:
    """A little-endian IFD at `start`, its out-of-line values right after it."""
    data_at = start + 2 + 12 * len(entries) + 4
    head, extra = struct.pack("<H", len(entries)), b""
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            head += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, kind, count, data_at + len(extra))
            extra += value + b"\0" * (len(value) & 1)
    return head + struct.pack("<I", next_ifd) + extra


def exif_block(orientation: int, thumbnail: bytes) -> bytes:
    """APP1 payload: IFD0 (orientation, camera, GPS pointer), a GPS IFD, IFD1 with a JPEG thumbnail."""
    ascii_ = lambda text: text.encode() + b"\0"  # noqa: E731
    rational = lambda *values: b"".join(struct.pack("<II", round(v * 1000), 1000) for v in values)  # noqa: E731
    at_gps, at_ifd1, at_thumb = 512, 1024, 1536
    ifd0 = _ifd([(0x0112, 3, 1, struct.pack("<H", orientation)), (0x010F, 2, 8, ascii_("GigaCam")),
                 (0x0110, 2, 12, ascii_("Model 1234X")), (0x0132, 2, 20, ascii_("2024:05:01 12:00:00")),
                 (0x8825, 4, 1, struct.pack("<I", at_gps))], 8, at_ifd1)
    gps = _ifd([(0x0000, 1, 4, bytes([2, 3, 0, 0])), (0x0001, 2, 2, b"N\0"), (0x0002, 5, 3, rational(52, 22, 7.5)),
                (0x0003, 2, 2, b"E\0"), (0x0004, 5, 3, rational(4, 53, 41.2))], at_gps, 0)
    ifd1 = _ifd([(0x0103, 3, 1, struct.pack("<H", 6)), (0x0201, 4, 1, struct.pack("<I", at_thumb)),
                 (0x0202, 4, 1, struct.pack("<I", len(thumbnail)))], at_ifd1, 0)
    tiff = bytearray(b"II*\0" + struct.pack("<I", 8))
    for at, block in ((8, ifd0), (at_gps, gps), (at_ifd1, ifd1), (at_thumb, thumbnail)):
        assert len(tiff) <= at, "the synthetic EXIF's blocks overlap"
        tiff += b"\0" * (at - len(tiff)) + block
    return b"Exif\0\0" + bytes(tiff)


def exif_photo(path: Path | str, rgb: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG of `rgb` (stored as is) whose EXIF says to turn it, with GPS, camera fields, an
    XMP packet and a thumbnail of the very same pixels."""
    image = pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).copy(interpretation="srgb")
    thumbnail = image.thumbnail_image(160).jpegsave_buffer(Q=80, keep=pyvips.ForeignKeep.NONE)
    body = image.jpegsave_buffer(Q=92, keep=pyvips.ForeignKeep.NONE)
    exif = exif_block(orientation, thumbnail)
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description photographer='Ann'/></x:xmpmeta>"
    segments = b"".join(b"\xff" + bytes([m]) + struct.pack(">H", 2 + len(p)) + p for m, p in ((0xE1, exif), (0xE1, xmp)))
    Path(path).write_bytes(body[:2] + segments + body[2:])
    return Path(path)
