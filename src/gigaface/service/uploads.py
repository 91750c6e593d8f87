"""What clients hand the server: uploaded images, reference photos, and paths to files
under the server's data folder; each checked before anything decodes or opens it."""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Callable

import starlette.formparsers
from fastapi import HTTPException, Request, UploadFile

from gigaface.engine.manifest import is_manifest
from gigaface.errors import GigafaceError
from gigaface.references import Reference, ReferencePool
from gigaface.service.gate import SMALL_BODY

MAX_PHOTO_BYTES = 25 << 20      # one reference photo
MAX_PHOTOS = 8
PHOTOS_BODY = MAX_PHOTOS * MAX_PHOTO_BYTES + SMALL_BODY   # a search or an erasure
MAX_BODY_BYTES = PHOTOS_BODY    # the largest body of any request but an upload
DEFAULT_MAX_UPLOAD = 4 << 30
# Magic numbers of the formats libvips reads that people upload: a cheap check on the
# first bytes, so a wrong file is refused before gigabytes of it are received.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
               b"RIFF", b"GIF8", b"BM", b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")


def keep_photos_in_memory() -> None:
    """Starlette keeps multipart files in memory up to this size and spools larger ones to
    a temporary file; a reference photo must never reach the disk, so anything we accept
    stays in memory (larger photos are refused by the body limit). Process-wide: called
    when an app is made, not when this module is imported."""
    starlette.formparsers.MultiPartParser.spool_max_size = MAX_BODY_BYTES


def safe_name(filename: str) -> str:
    """A file name from a client, reduced to its last component in a safe alphabet."""
    base = os.path.basename(filename.replace("\\", "/")).strip()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).lstrip(".") or "upload"
    return base[:120]


async def receive(request: Request, path: str, limit: int) -> None:
    """Stream the request body into `path`, refusing more than `limit` bytes and content
    that does not start like an image."""
    received = 0
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        async for chunk in request.stream():
            if not received and chunk and not chunk[:16].startswith(IMAGE_MAGIC):
                raise HTTPException(415, "not an image (JPEG, PNG, TIFF, WebP, GIF, BMP or JPEG 2000)")
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"upload over the limit of {limit >> 20} MB")
            await asyncio.to_thread(out.write, chunk)
    if not received:
        raise HTTPException(400, "empty upload")
    if not _ends_whole(path):
        raise HTTPException(400, "the upload is cut short (the file's end marker is missing)")


def _ends_whole(path: str) -> bool:
    """JPEG and PNG name their end: an upload cut short is found here, not an hour into its
    scan. Other formats are checked as the scan decodes them."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        tail = f.read().rstrip(b"\x00\r\n ")
    if head.startswith(b"\xff\xd8\xff"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG"):
        return tail.endswith(b"IEND\xaeB`\x82")
    return True


def read_references(pool: Callable[[], ReferencePool], photos: list[UploadFile]) -> list[Reference]:
    """Reference embeddings from uploaded photos, decoded in memory only; `pool` is asked
    for the reference workers only once a photo passed its checks."""
    if not 1 <= len(photos) <= MAX_PHOTOS:
        raise HTTPException(400, f"give 1 to {MAX_PHOTOS} photos")
    refs = []
    for photo in photos:
        data = photo.file.read(MAX_PHOTO_BYTES + 1)
        name = safe_name(photo.filename or "photo")
        if len(data) > MAX_PHOTO_BYTES:
            raise HTTPException(413, f"{name}: over {MAX_PHOTO_BYTES >> 20} MB")
        if not data.startswith(IMAGE_MAGIC):
            raise HTTPException(400, f"{name}: not an image")
        refs.append(pool().reference(name, data))
        del data
    return refs


def server_path(data_dir: str | None, path: str) -> str:
    """A client's path to an image or manifest, as the real path under the data folder,
    checked to be a regular file before anything opens it (a FIFO would block forever)."""
    if data_dir is None:
        raise HTTPException(403, "this server takes uploads only (POST /api/captures/upload);"
                                 " start it with --data-dir DIR to add files by their path under DIR")
    real = _inside(data_dir, path)
    _regular_file(real, path)
    if is_manifest(real):
        for k, frame in enumerate(_manifest_files(real)):
            _regular_file(_inside(data_dir, frame, f"{path}: frame {k}"), f"{path}: frame {k}", missing_ok=True)
    return real


def _inside(data_dir: str, path: str, shown: str | None = None) -> str:
    """The real path of `path` (relative to the data folder, or absolute), if it is under the
    data folder. The error is the same whether or not the path exists: the server's other
    files are not an admin's to probe."""
    real = os.path.realpath(os.path.join(data_dir, path))
    if os.path.commonpath([real, data_dir]) != data_dir:
        raise HTTPException(403, f"{shown or path}: not in the server's data folder")
    return real


def _regular_file(real: str, shown: str, missing_ok: bool = False) -> None:
    """Refuse what is not a plain file before anything opens it: a FIFO blocks its reader
    forever, a device never ends."""
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise GigafaceError(f"{shown}: no such file") from None
    except OSError as exc:
        raise GigafaceError(f"{shown}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise GigafaceError(f"{shown}: is a directory, not an image")
    if not stat.S_ISREG(mode):
        raise GigafaceError(f"{shown}: not a regular file")


def _manifest_files(path: str) -> list[str]:
    """The frame files a manifest names, joined to its folder as `manifest.read_manifest`
    joins them, to be checked before it opens them. A manifest that does not parse gives
    none: read_manifest then says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(64 << 20))
    except (OSError, ValueError, RecursionError):
        return []
    entries = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return []
    base = os.path.dirname(path)
    return [os.path.join(base, e["file"]) for e in entries
            if isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"] and "\0" not in e["file"]]
