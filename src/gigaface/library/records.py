"""The plain records a library hands out: what its rows mean, with no database attached."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gigaface.engine.frames import Frame  # noqa: F401  (a capture's record holds its frames)
from gigaface.library.audit_chain import AuditVerdict


@dataclass(frozen=True)
class CaptureRecord:
    id: int
    key: str
    source: str
    kind: str
    width: int
    height: int
    frames: tuple[Frame, ...]
    settings: dict
    stage: str
    created_at: float
    finished_at: float | None
    elapsed: float
    expires_at: float | None = None


@dataclass(frozen=True)
class Face:
    id: int
    capture: int
    frame: int  # index into the capture's frames: two frames may share a path, never an index
    source: str  # that frame's path
    box: tuple[float, float, float, float]  # x, y, w, h in panorama pixels
    score: float
    landmarks: list[list[float]]
    quality: dict = field(default_factory=dict)
    embedded: bool = False
    erased: bool = False
    listed: bool = True  # False: seen only at the blur point, kept only to be blurred

    def to_dict(self) -> dict:
        return {
            "id": self.id, "capture": self.capture, "source": self.source,
            "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "quality": self.quality, "embedded": self.embedded, "erased": self.erased,
        }


@dataclass(frozen=True)
class Job:
    """The service's background work on one capture: scan, then pyramid and export."""

    capture: int
    state: str
    stage: str
    done: int
    total: int
    faces: int
    error: str | None
    owned_file: str | None
    updated_at: float

    def to_dict(self) -> dict:
        return {"state": self.state, "stage": self.stage, "error": self.error,
                "progress": {"done": self.done, "total": self.total, "faces": self.faces}}


@dataclass(frozen=True)
class Consent:
    """A person who asked to be visible in a capture's exports (their embedding stays sealed
    in the library)."""

    id: int
    capture: int
    name: str
    note: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    who: str
    purpose: str
    captures: list[int]
    reference_hash: str
    results: int
    matches: int


class AuditLog(list):
    """Audit entries (a list of AuditEntry), with the verdict on the whole log's chain."""

    def __init__(self, entries: Iterable[AuditEntry], verdict: AuditVerdict):
        super().__init__(entries)
        self.verdict = verdict


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    created_at: float
    last_used: float | None
    revoked: bool
