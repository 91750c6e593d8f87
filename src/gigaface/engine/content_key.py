"""What makes two scans the same capture: a key of the content, not of the path or the mtime."""
from __future__ import annotations

import hashlib
import os

from gigaface.engine.frames import Frame
from gigaface.engine.manifest import is_manifest, read_manifest
from gigaface.paths import require_regular_file


def capture_key(path: str, frames: list[Frame] | None = None) -> str:
    """What makes two scans the same capture: the content, not the path or the file's mtime.

    For an image, the SHA-256 of all of it: two files that differ anywhere are two
    captures (reading the file costs a fraction of decoding it); for a manifest, its
    location, its content and the SHA-256 of each of its frames (`frames`, when the
    caller has read the manifest already).
    """
    if not is_manifest(path):
        return f"image:sha256:{file_sha256(path)}"
    require_regular_file(path, "manifest")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read())
    if frames is None:  # the key only names the content: where frames may be is frames_of's to check
        frames = read_manifest(path, 2**62, frames_anywhere=True)
    for frame in frames:
        digest.update(bytes.fromhex(file_sha256(frame.path)))
    return f"manifest:sha256:{os.path.realpath(path)}:{digest.hexdigest()}"


def file_sha256(path: str) -> str:
    require_regular_file(path, "image")  # a FIFO would block the read forever
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def legacy_capture_key(path: str) -> str:
    """The key gigaface gave captures before schema 4: the size and the first and last MiB
    of an image (so two images differing only in the middle collided), or a manifest's
    location and text. Used only to find such captures and give them their full key."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if is_manifest(path):
            digest.update(f.read())
            return f"manifest:{os.path.realpath(path)}:{digest.hexdigest()[:24]}"
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            digest.update(f.read())
    return f"image:{size}:{digest.hexdigest()[:24]}"
