"""A capture's published images: the anonymised export, and the DeepZoom pyramids.

Pyramid URLs carry the build (files.pyramid_build): a rebuild after an erasure or a
withdrawn consent changes every URL, and the old ones answer 404, so no browser shows a
tile it cached from before. The capture's JSON names the current ones.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from gigaface.library.files import capture_files, pyramid_build
from gigaface.service.auth import Viewer
from gigaface.service.schemas import ERRORS, CaptureId, Problem
from gigaface.service.state import Service, service_of

TILE_NAME = re.compile(r"\d{1,6}_\d{1,6}\.jpg")  # whole name only: fullmatch
TILE_RESPONSES = {**ERRORS, 200: {"content": {"image/jpeg": {}}}}
DZI_RESPONSES = {**ERRORS, 200: {"content": {"application/xml": {}}}}
Level = Annotated[int, PathParam(ge=0, le=64)]
Build = Annotated[str, PathParam(max_length=64, description="the build, from the capture's pyramid_url")]

router = APIRouter()
State = Annotated[Service, Depends(service_of)]


def pyramid_url(prefix: str, dzi: str) -> str | None:
    build = pyramid_build(dzi)
    return f"{prefix}/{build}.dzi" if build is not None else None


def _pyramid_file(svc: Service, capture_id: int, which: str, build: str) -> tuple[str, str]:
    """(descriptor, tile folder) of the capture's pyramid if `build` is its current one."""
    files = capture_files(svc.db, capture_id)
    path = files.pyramid if which == "pyramid" else files.public_pyramid
    current = pyramid_build(path)
    if current is None:
        raise HTTPException(404, f"capture {capture_id}: the {which} pyramid is not ready yet")
    if build != current:
        raise HTTPException(404, f"capture {capture_id}: that {which} pyramid was replaced;"
                                 " the capture's pyramid_url names the current one")
    return path, files.tiles(which)


def dzi(svc: Service, capture_id: int, which: str, build: str) -> FileResponse:
    svc.capture_or_404(capture_id)
    path, _ = _pyramid_file(svc, capture_id, which, build)
    return FileResponse(path, media_type="application/xml", headers={"Cache-Control": "no-cache"})


def tile(svc: Service, capture_id: int, which: str, build: str, level: int, name: str) -> FileResponse:
    if not TILE_NAME.fullmatch(name):
        raise HTTPException(404, "no such tile")
    _, folder = _pyramid_file(svc, capture_id, which, build)
    path = os.path.join(folder, str(level), name)
    if not os.path.isfile(path):
        raise HTTPException(404, "no such tile")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/api/captures/{capture_id:int}/export", response_class=FileResponse, tags=["exports"],
            responses={**ERRORS, 409: {"model": Problem}, 200: {"content": {"image/jpeg": {}, "image/tiff": {}}}},
            summary="The anonymised image: every face blurred (frame k of a camera-array capture)")
def export(capture_id: CaptureId, svc: State, who: Viewer,
           frame: Annotated[int, Query(ge=0, le=100_000)] = 0) -> FileResponse:
    capture = svc.capture_or_404(capture_id)
    paths = capture_files(svc.db, capture_id).exports(capture.frames)
    if frame >= len(paths):
        raise HTTPException(404, f"capture {capture_id} has {len(paths)} frame(s)")
    if not os.path.exists(paths[frame]):
        raise HTTPException(409, f"capture {capture_id}: the export is not ready yet")
    return FileResponse(paths[frame], filename=f"{Path(capture.frames[frame].path).stem}-anonymised"
                        f"{Path(paths[frame]).suffix}")


@router.get("/api/captures/{capture_id:int}/pyramid/{build}.dzi", response_class=FileResponse,
            tags=["deep zoom"], responses=DZI_RESPONSES)
def pyramid_dzi(capture_id: CaptureId, build: Build, svc: State, who: Viewer) -> FileResponse:
    return dzi(svc, capture_id, "pyramid", build)


@router.get("/api/captures/{capture_id:int}/pyramid/{build}_files/{level:int}/{name}", response_class=FileResponse,
            tags=["deep zoom"], responses=TILE_RESPONSES)
def pyramid_tile(capture_id: CaptureId, build: Build, level: Level, name: str, svc: State,
                 who: Viewer) -> FileResponse:
    return tile(svc, capture_id, "pyramid", build, level, name)


@router.get("/api/captures/{capture_id:int}/public/{build}.dzi", response_class=FileResponse,
            tags=["deep zoom"], responses=DZI_RESPONSES)
def public_dzi(capture_id: CaptureId, build: Build, svc: State, who: Viewer) -> FileResponse:
    return dzi(svc, capture_id, "public", build)


@router.get("/api/captures/{capture_id:int}/public/{build}_files/{level:int}/{name}", response_class=FileResponse,
            tags=["deep zoom"], responses=TILE_RESPONSES)
def public_tile(capture_id: CaptureId, build: Build, level: Level, name: str, svc: State,
                who: Viewer) -> FileResponse:
    return tile(svc, capture_id, "public", build, level, name)
