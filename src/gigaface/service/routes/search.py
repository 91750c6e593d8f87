"""Search the library (every capture, or some) or one capture for the person in some photos
(held in memory for the request only). Pages come from one ranking: the server's index
keeps the last rankings, so the next page is sliced from it, not ranked again."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Query, Response, UploadFile

from gigaface.search import DEFAULT_MATCH_THRESHOLD, MAX_MATCH_THRESHOLD, audited_rank
from gigaface.service.auth import Viewer
from gigaface.service.policies import body_limit
from gigaface.service.schemas import ERRORS, CaptureId, MatchOut, Problem, ReferenceOut, SearchOut
from gigaface.service.state import Service, service_of
from gigaface.service.uploads import PHOTOS_BODY, read_references

router = APIRouter(tags=["search"])
State = Annotated[Service, Depends(service_of)]
Photos = Annotated[list[UploadFile], File(description="photos of one person")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="ranks to skip: 20 for the second page of 20")]
Limit = Annotated[int | None, Query(ge=1, le=1000, description="matches in this page (default 20)")]
Threshold = Annotated[float, Query(gt=0, le=MAX_MATCH_THRESHOLD)]
PAGE = 20


@router.post("/api/search", response_model=SearchOut, responses={**ERRORS, 413: {"model": Problem}},
             summary="Rank the library's faces (every capture, or those named) by likeness to the person"
                     " in the photos (not stored)")
@body_limit(PHOTOS_BODY)
def search_library(svc: State, who: Viewer, photos: Photos, response: Response,
                   capture: Annotated[list[int] | None, Query(description="only these captures (repeat)")] = None,
                   offset: Offset = 0, limit: Limit = None,
                   threshold: Threshold = DEFAULT_MATCH_THRESHOLD) -> SearchOut:
    for c in capture or ():
        svc.capture_or_404(c)
    return _search(svc, who.who, photos, response, capture or None, offset, limit or PAGE, threshold)


@router.post("/api/captures/{capture_id:int}/search", response_model=SearchOut,
             responses={**ERRORS, 413: {"model": Problem}},
             summary="Rank the capture's faces by likeness to the person in the photos (not stored)")
@body_limit(PHOTOS_BODY)
def search_capture(capture_id: CaptureId, svc: State, who: Viewer, photos: Photos, response: Response,
                   offset: Offset = 0, limit: Limit = None,
                   top: Annotated[int | None, Query(ge=1, le=1000, deprecated=True,
                                                    description="the older name of limit")] = None,
                   threshold: Threshold = DEFAULT_MATCH_THRESHOLD) -> SearchOut:
    svc.capture_or_404(capture_id)
    if limit is not None and top is not None and limit != top:
        raise HTTPException(422, "give limit or top (its older name), not both")
    return _search(svc, who.who, photos, response, [capture_id], offset, limit or top or PAGE, threshold)


def _search(svc: Service, who: str, photos: list[UploadFile], response: Response, captures: list[int] | None,
            offset: int, limit: int, threshold: float) -> SearchOut:
    svc.library().key()  # a library without its key cannot be searched: say so before any work
    started = time.perf_counter()
    refs = read_references(svc.reference_pool, photos)
    read = time.perf_counter()
    matches = audited_rank(svc.library(), refs, captures, who, top=limit, offset=offset, match_threshold=threshold,
                           index=svc.index)
    ranked = time.perf_counter()
    # How long each part took, for the load benchmark and anyone's browser tools: reading
    # the photos, the index (syncing it and ranking: exact or ivf), the whole ranking
    # (with reading the faces and the audit row).
    response.headers["Server-Timing"] = (f"photos;dur={(read - started) * 1000:.1f}, "
                                         f"index;dur={matches.index_ms:.1f};desc=\"{matches.method}\", "
                                         f"rank;dur={(ranked - read) * 1000:.1f}")
    return SearchOut(
        threshold=threshold, references=[ReferenceOut(name=r.path, faces_in_photo=r.faces_in_photo) for r in refs],
        matches=[MatchOut.of(m) for m in matches], offset=offset, searched=matches.searched)
