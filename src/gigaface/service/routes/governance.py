"""Consent, erasure, the audit log and retention (tagged "consent" in the API document)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile

from gigaface.library.records import Consent
from gigaface.privacy import consent
from gigaface.privacy.consent import revealed
from gigaface.privacy.erasure import MAX_FORGET_THRESHOLD, forget
from gigaface.privacy.retention import Purged
from gigaface.search import DEFAULT_MATCH_THRESHOLD
from gigaface.service.auth import Admin
from gigaface.service.gate import SMALL_BODY
from gigaface.service.policies import body_limit
from gigaface.service.schemas import (ERRORS, AuditChainOut, AuditOut, CaptureId, ConsentOut, ErasureOut, Problem,
                                      RecordId)
from gigaface.service.state import Service, service_of
from gigaface.service.uploads import MAX_PHOTO_BYTES, PHOTOS_BODY, read_references

router = APIRouter(tags=["consent"])
State = Annotated[Service, Depends(service_of)]


def _consent_out(c: Consent, shown: dict[int, int]) -> ConsentOut:
    face = next((f for f, consent_id in shown.items() if consent_id == c.id), None)
    return ConsentOut(id=c.id, capture=c.capture, name=c.name, note=c.note, created_at=c.created_at,
                      face_shown=face)


@router.get("/api/captures/{capture_id:int}/consents", response_model=list[ConsentOut], responses=ERRORS,
            summary="People who asked to be shown unblurred in the capture's exports")
def list_consents(capture_id: CaptureId, svc: State, who: Admin) -> list[ConsentOut]:
    svc.capture_or_404(capture_id)
    shown = revealed(svc.library(), capture_id)
    return [_consent_out(c, shown) for c in svc.library().consents.all(capture_id)]


@router.post("/api/captures/{capture_id:int}/consents", response_model=ConsentOut, status_code=201,
             responses={**ERRORS, 413: {"model": Problem}},
             summary="Add a person's consent from their own photo (the photo is not stored)")
@body_limit(MAX_PHOTO_BYTES + SMALL_BODY)
def add_consent(capture_id: CaptureId, svc: State, who: Admin,
                photo: Annotated[UploadFile, File(description="the person's own photo")],
                name: Annotated[str, Form(min_length=1, max_length=200)],
                note: Annotated[str, Form(max_length=2000)] = "") -> ConsentOut:
    svc.capture_or_404(capture_id)
    svc.library().key()
    ref = read_references(svc.reference_pool, [photo])[0]
    added = consent.add(svc.library(), capture_id, ref, name, note, who=who.who)
    svc.refresh(capture_id, originals_too=False)
    return _consent_out(added, revealed(svc.library(), capture_id))


@router.delete("/api/consents/{consent_id:int}", status_code=204, responses=ERRORS,
               summary="Withdraw a consent: the person is blurred again")
def remove_consent(consent_id: RecordId, svc: State, who: Admin) -> Response:
    if not any(c.id == consent_id for c in svc.library().consents.all()):
        raise HTTPException(404, f"no consent {consent_id}")
    removed = consent.remove(svc.library(), consent_id, who=who.who)  # audited under the token
    svc.refresh(removed.capture, originals_too=False)
    return Response(status_code=204)


@router.post("/api/forget", response_model=ErasureOut, responses={**ERRORS, 413: {"model": Problem}},
             summary="Erase a person on request, in every capture (the photos are not stored)")
@body_limit(PHOTOS_BODY)
def forget_person(svc: State, who: Admin, photos: Annotated[list[UploadFile], File(description="photos of the person")],
                  threshold: Annotated[float, Query(gt=0, le=MAX_FORGET_THRESHOLD)] = DEFAULT_MATCH_THRESHOLD,
                  dry_run: Annotated[bool, Query(description="report what would be erased; change nothing")] = False,
                  ) -> ErasureOut:
    svc.library().key()
    report = forget(svc.library(), read_references(svc.reference_pool, photos), who.who, threshold, dry_run=dry_run,
                    index=svc.index)
    if not dry_run:
        for entry in report.captures:
            svc.refresh(entry.capture, originals_too=True)
    return ErasureOut(**report.to_dict(), dry_run=dry_run)


@router.get("/api/audit", response_model=AuditOut, responses=ERRORS,
            summary="The audit log: every search, by whom, over which captures, and whether its chain holds")
def audit_log(svc: State, who: Admin, since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
              limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> AuditOut:
    log = svc.library().audit.log(since=since, limit=limit)
    return AuditOut(chain=AuditChainOut(**log.verdict.to_dict()), entries=list(log))


@router.post("/api/purge", response_model=list[Purged], responses=ERRORS,
             summary="Remove the captures whose retention has passed now (the service also does it every minute)")
def purge_now(svc: State, who: Admin) -> list[Purged]:
    return svc.purge_expired()
