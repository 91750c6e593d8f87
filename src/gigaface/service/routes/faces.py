"""A capture's faces, one face, and its crop."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from gigaface.library.records import Face
from gigaface.service.auth import Viewer
from gigaface.service.schemas import ERRORS, CaptureId, FaceOut, FacePage, RecordId
from gigaface.service.state import Service, service_of

router = APIRouter(tags=["faces"])
State = Annotated[Service, Depends(service_of)]


@router.get("/api/captures/{capture_id:int}/faces", response_model=FacePage, responses=ERRORS)
def list_faces(capture_id: CaptureId, svc: State, who: Viewer,
               offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
               min_size: Annotated[float | None, Query(ge=0, le=1e6, description="px, the box's longer side")] = None,
               max_size: Annotated[float | None, Query(ge=0, le=1e6)] = None,
               min_score: Annotated[float | None, Query(ge=0, le=10)] = None,
               min_sharpness: Annotated[float | None, Query(ge=0, le=1e9)] = None,
               min_frontalness: Annotated[float | None, Query(ge=0, le=1)] = None) -> FacePage:
    svc.capture_or_404(capture_id)
    total, faces = svc.library().faces.page(capture_id, offset, limit, min_size, max_size, min_score,
                                           min_sharpness, min_frontalness)
    return FacePage(total=total, offset=offset, limit=limit, items=[FaceOut.of(f) for f in faces])


def _face_or_404(svc: Service, face_id: int) -> Face:
    found = svc.library().faces.by_id([face_id])
    if not found:
        raise HTTPException(404, f"no face {face_id}")
    return found[0]


@router.get("/api/faces/{face_id:int}", response_model=FaceOut, responses=ERRORS)
def get_face(face_id: RecordId, svc: State, who: Viewer) -> FaceOut:
    return FaceOut.of(_face_or_404(svc, face_id))


@router.get("/api/faces/{face_id:int}/crop.jpg", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
            response_class=Response)
def face_crop(face_id: RecordId, svc: State, who: Viewer) -> Response:
    _face_or_404(svc, face_id)
    data = svc.library().faces.crop(face_id)
    if not data:
        raise HTTPException(404, f"face {face_id} has no crop yet")
    # Not kept by the browser: a face erased later must not stay in its cache (the page
    # keeps the crops it fetched for as long as it is open).
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})
