"""The service's response and request models: they make the OpenAPI document exact.

Records come in through their own `to_dict()` (Face, Match, Job), so that a face reads the
same in the API, the CLI's JSON and the Python API.
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from gigaface.library.records import AuditEntry, Face
from gigaface.search import Match


class Progress(BaseModel):
    done: int
    total: int
    faces: int


class CaptureOut(BaseModel):
    id: int
    name: str
    source: str
    kind: Literal["image", "manifest"]
    width: int
    height: int
    state: Literal["queued", "running", "done", "failed"]
    stage: str
    progress: Progress
    faces: int
    pyramid: bool
    export: bool
    pyramid_url: str | None = Field(description="the DeepZoom descriptor of the current build of the pyramid"
                                                " (a rebuild changes every URL: cached tiles are never shown)")
    public_url: str | None = Field(description="the same for the pyramid of the anonymised copy")
    error: str | None
    created_at: float
    finished_at: float | None
    expires_at: float | None = Field(description="when the capture is removed (the library's retention)")


class Quality(BaseModel):
    size: float | None = None
    sharpness: float | None = None
    frontalness: float | None = None


class FaceOut(BaseModel):
    id: int
    capture: int
    box: list[float] = Field(description="x, y, width, height in panorama pixels")
    score: float
    landmarks: list[list[float]]
    quality: Quality
    embedded: bool
    erased: bool = Field(description="the person asked to be forgotten: no embedding, no crop, always blurred")

    @classmethod
    def of(cls, face: Face) -> "FaceOut":
        return cls.model_validate(face.to_dict())  # the fields it leaves out (source) are ignored


class FacePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[FaceOut]


class ReferenceOut(BaseModel):
    name: str
    faces_in_photo: int


class MatchOut(BaseModel):
    rank: int
    face_id: int
    capture: int
    box: list[float]
    distance: float
    match: bool
    quality: Quality

    @classmethod
    def of(cls, match: Match) -> "MatchOut":
        return cls.model_validate(match.to_dict())


class SearchOut(BaseModel):
    threshold: float
    references: list[ReferenceOut]
    matches: list[MatchOut]
    offset: int = Field(0, description="rank of the first match, less one")
    searched: int = Field(0, description="faces ranked in all: page on with offset until it is reached")


class Me(BaseModel):
    role: Literal["admin", "viewer"]
    name: str
    mode: Literal["local", "token"]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    public: bool


class AddCapture(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="an image or camera-array manifest on the server")
    preset: Literal["fast", "balanced", "accurate"] = "balanced"
    min_face: float | None = Field(None, ge=4, le=10_000)


class PublicCapture(BaseModel):
    id: int
    name: str = Field(description="a neutral name: the file's own name may say where or who")
    width: int
    height: int
    url: str = Field(description="the DeepZoom descriptor of the current build of the anonymised pyramid")


class ConsentOut(BaseModel):
    id: int
    capture: int
    name: str
    note: str
    created_at: float
    face_shown: int | None = Field(description="the face this consent reveals in the exports, if any")


class CaptureErasureOut(BaseModel):
    capture: int
    faces: list[int]
    boxes: list[list[float]]
    consents: list[int]


class ErasureOut(BaseModel):
    threshold: float
    dry_run: bool = Field(description="only a report: nothing was erased or withdrawn")
    faces_erased: int
    consents_removed: int
    captures: list[CaptureErasureOut]


class AuditChainOut(BaseModel):
    ok: bool = Field(description="every row and the log's keyed head verify: nothing was edited, cut or wiped")
    rows: int
    problem: str | None = None
    row: int | None = Field(None, description="the first row that does not verify")


class AuditOut(BaseModel):
    chain: AuditChainOut
    entries: list[AuditEntry]


class Problem(BaseModel):
    detail: str


CaptureId = Annotated[int, PathParam(ge=0, le=2**62)]
RecordId = Annotated[int, PathParam(ge=0, le=2**62)]
ERRORS = {400: {"model": Problem}, 401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}}
TOO_LARGE = {413: {"model": Problem}}
ADDED = {200: {"model": CaptureOut, "description": "the same image is already in the library: that capture"}}
