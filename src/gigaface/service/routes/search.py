"""Search a capture for the person in some photos (held in memory for the request only)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile

from gigaface.search import DEFAULT_MATCH_THRESHOLD, MAX_MATCH_THRESHOLD, audited_rank
from gigaface.service.auth import Viewer
from gigaface.service.policies import body_limit
from gigaface.service.schemas import ERRORS, CaptureId, MatchOut, Problem, ReferenceOut, SearchOut
from gigaface.service.state import Service, service_of
from gigaface.service.uploads import PHOTOS_BODY, read_references

router = APIRouter(tags=["search"])
State = Annotated[Service, Depends(service_of)]


@router.post("/api/captures/{capture_id:int}/search", response_model=SearchOut,
             responses={**ERRORS, 413: {"model": Problem}},
             summary="Rank the capture's faces by likeness to the person in the photos (not stored)")
@body_limit(PHOTOS_BODY)
def search(capture_id: CaptureId, svc: State, who: Viewer,
           photos: Annotated[list[UploadFile], File(description="photos of one person")],
           top: Annotated[int, Query(ge=1, le=1000)] = 20,
           threshold: Annotated[float, Query(gt=0, le=MAX_MATCH_THRESHOLD)] = DEFAULT_MATCH_THRESHOLD) -> SearchOut:
    svc.capture_or_404(capture_id)
    svc.library().key()  # a library without its key cannot be searched: say so before any work
    refs = read_references(svc.reference_pool, photos)
    matches = audited_rank(svc.library(), refs, [capture_id], who.who, top=top, match_threshold=threshold)
    return SearchOut(
        threshold=threshold, references=[ReferenceOut(name=r.path, faces_in_photo=r.faces_in_photo) for r in refs],
        matches=[MatchOut.of(m) for m in matches])
