"""Models gigaface derives from the installed model files (CenterFace with our input, dlib's
descriptor as an ONNX graph, the landmark trees as arrays), built once per content and kept
between processes in a per-user cache folder.

Building them takes `import onnx` and a pass over the source (0.5-0.7 s a command that
loads the models); reading a cached one takes milliseconds. The key is the SHA-256 of the
source file, of what is asked for, and of the code that builds it, so a changed model file
or a changed builder never meets an old entry. The cache is only for speed: an absent,
unreadable or damaged entry (each ends with the SHA-256 of its content) is built again, and
a home that cannot be written to means building in every process.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable

from gigaface.atomic import write_bytes
from gigaface.errors import GigafaceError

_DIGEST = 32
_BUILT: dict[str, bytes] = {}


def cache_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gigaface")


def read_model_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise GigafaceError(f"cannot read the {what} {path}: {exc.strerror}") from None


def derived(source: bytes, name: str, build: Callable[[], bytes], builders: tuple[str, ...]) -> bytes:
    """`build()`'s bytes for this `source` content and `name` (what is asked of it, e.g. a
    shape), from this process's memory, the cache folder, or built now and kept in both.
    `builders`: the modules whose code decides the result."""
    digest = hashlib.sha256(source)
    digest.update(name.encode())
    for module in builders:
        with open(sys.modules[module].__file__, "rb") as f:
            digest.update(f.read())
    key = digest.hexdigest()
    if key not in _BUILT:
        path = os.path.join(cache_folder(), f"{name}-{key[:32]}.bin")
        _BUILT[key] = _load(path) or _store(path, build())
    return _BUILT[key]


def _load(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    return body if len(data) > _DIGEST and hashlib.sha256(body).digest() == digest else None


def _store(path: str, data: bytes) -> bytes:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes(path, data + hashlib.sha256(data).digest())
    except OSError:
        pass  # a read-only home: each process builds the model itself
    return data
