"""The public view (gigaface serve --public): anyone may see the anonymised pyramids, and
nothing else; a server without it answers 404 here."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse

from gigaface.library.files import capture_files
from gigaface.service.routes.tiles import Build, Level, dzi, pyramid_url, tile
from gigaface.service.schemas import CaptureId, Problem, PublicCapture
from gigaface.service.state import Service, service_of

router = APIRouter(tags=["public"])
State = Annotated[Service, Depends(service_of)]


def public_only(request: Request) -> None:
    if not request.app.state.service.config.public:
        raise HTTPException(404, "this server has no public view (gigaface serve --public)")


Public = Annotated[None, Depends(public_only)]


@router.get("/public/captures", response_model=list[PublicCapture], responses={404: {"model": Problem}})
def public_captures(_: Public, svc: State) -> list[PublicCapture]:
    listed = []
    for c in svc.library().captures.all():
        url = pyramid_url(f"/public/captures/{c.id}", capture_files(svc.db, c.id).public_pyramid)
        if url is not None:  # file names may say where or who: a neutral name
            listed.append(PublicCapture(id=c.id, name=f"capture {c.id}", width=c.width, height=c.height, url=url))
    return listed


@router.get("/public/captures/{capture_id:int}/{build}.dzi", response_class=FileResponse,
            responses={404: {"model": Problem}, 200: {"content": {"application/xml": {}}}})
def public_image_dzi(capture_id: CaptureId, build: Build, _: Public, svc: State) -> FileResponse:
    return dzi(svc, capture_id, "public", build)


@router.get("/public/captures/{capture_id:int}/{build}_files/{level:int}/{name}", response_class=FileResponse,
            responses={404: {"model": Problem}, 200: {"content": {"image/jpeg": {}}}})
def public_image_tile(capture_id: CaptureId, build: Build, level: Level, name: str, _: Public,
                      svc: State) -> FileResponse:
    return tile(svc, capture_id, "public", build, level, name)
