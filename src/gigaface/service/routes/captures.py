"""Captures: list, add (a server path or an upload), follow a job's progress, delete."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gigaface.engine.plan import settings_for
from gigaface.errors import GigafaceError
from gigaface import ingest
from gigaface.library.files import capture_files, private_folder, uploads_folder
from gigaface.library.records import CaptureRecord
from gigaface.privacy.retention import remove
from gigaface.service.auth import Access, Admin, Viewer
from gigaface.service.policies import body_limit
from gigaface.service.routes.tiles import pyramid_url
from gigaface.service.schemas import ADDED, ERRORS, TOO_LARGE, AddCapture, CaptureId, CaptureOut, Problem, Progress
from gigaface.service.state import Service, service_of
from gigaface.service.streams import SlotStream
from gigaface.service.uploads import receive, safe_name, server_path

router = APIRouter(tags=["captures"])
State = Annotated[Service, Depends(service_of)]


def capture_out(svc: Service, c: CaptureRecord, who: Access) -> CaptureOut:
    lib = svc.library()
    job = lib.jobs.get(c.id)
    files = capture_files(svc.db, c.id)
    exports_ready = os.path.exists(files.public_pyramid) and all(map(os.path.exists, files.exports(c.frames)))
    if job is not None:
        state, stage, error = job.state, job.stage, job.error
        progress = Progress(done=job.done, total=job.total, faces=job.faces)
    else:  # scanned by the CLI
        state = "done" if c.stage == "done" else "running"
        stage, error = c.stage, None
        progress = Progress(done=0, total=0, faces=0)
    if who.role != "admin":  # where the server keeps its files is no viewer's business
        error = _without_folders(error, [c.source, *(f.path for f in c.frames)])
    return CaptureOut(
        id=c.id, name=os.path.basename(c.source), source=c.source if who.role == "admin" else os.path.basename(c.source),
        kind=c.kind, width=c.width, height=c.height, state=state, stage=stage, progress=progress,
        faces=lib.faces.count(c.id), pyramid=os.path.exists(files.pyramid), export=exports_ready, error=error,
        pyramid_url=pyramid_url(f"/api/captures/{c.id}/pyramid", files.pyramid),
        public_url=pyramid_url(f"/api/captures/{c.id}/public", files.public_pyramid),
        created_at=c.created_at, finished_at=c.finished_at, expires_at=c.expires_at)


def _without_folders(text: str | None, paths: list[str]) -> str | None:
    """`text` with each path reduced to its file name."""
    if text is None:
        return None
    for path in sorted(set(paths), key=len, reverse=True):
        text = text.replace(path, os.path.basename(path))
    return text


def _add(svc: Service, path: str, preset: str, min_face: float | None, owned: str | None) -> tuple[CaptureRecord, bool]:
    """The capture of this image or manifest, with a queued job if it is new."""
    lib = svc.library()
    capture, made = ingest.add_capture(lib, path, settings_for(preset, min_face), svc.config.max_pixels)
    if made:  # else already there, or a CLI scan of the same file made it meanwhile
        lib.jobs.put(capture.id, owned_file=owned)
        svc.submit(capture.id)
    return capture, made


@router.get("/api/captures", response_model=list[CaptureOut], responses=ERRORS)
def list_captures(svc: State, who: Viewer) -> list[CaptureOut]:
    return [capture_out(svc, c, who) for c in svc.library().captures.all()]


@router.post("/api/captures", response_model=CaptureOut, status_code=201,
             responses={**ERRORS, **ADDED, **TOO_LARGE},
             summary="Add an image or camera-array manifest from the server's data folder (serve --data-dir), and scan it")
def add_capture(body: AddCapture, svc: State, who: Admin, response: Response) -> CaptureOut:
    capture, new = _add(svc, server_path(svc.config.data_dir, body.path), body.preset, body.min_face, None)
    if not new:
        response.status_code = 200  # already in the library: nothing to do
    return capture_out(svc, capture, who)


@router.post("/api/captures/upload", response_model=CaptureOut, status_code=201,
             responses={**ERRORS, **ADDED, **TOO_LARGE, 415: {"model": Problem}},
             summary="Upload an image (the request body is the file) and scan it",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
@body_limit("max_upload")
async def upload_capture(request: Request, svc: State, who: Admin, response: Response,
                         filename: Annotated[str, Query(min_length=1, max_length=200)],
                         preset: Literal["fast", "balanced", "accurate"] = "balanced") -> CaptureOut:
    name = safe_name(filename)
    if name.lower().endswith(".json"):
        raise HTTPException(400, "upload images only; add camera-array manifests by their server path")
    folder = private_folder(svc.db, os.path.join(uploads_folder(svc.db), secrets.token_hex(8)))
    partial = os.path.join(folder, ".partial")
    try:
        try:
            await receive(request, partial, svc.config.max_upload)
        except HTTPException as exc:
            if exc.status_code == 400:
                exc.detail = f"{name}: {exc.detail}"
            raise
        final = os.path.join(folder, name)
        os.replace(partial, final)
        capture, new = await asyncio.to_thread(_add, svc, final, preset, None, final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not new:
        shutil.rmtree(folder, ignore_errors=True)  # the same image is already there
        response.status_code = 200
    return await run_in_threadpool(capture_out, svc, capture, who)


@router.get("/api/captures/{capture_id:int}", response_model=CaptureOut, responses=ERRORS)
def get_capture(capture_id: CaptureId, svc: State, who: Viewer) -> CaptureOut:
    return capture_out(svc, svc.capture_or_404(capture_id), who)


def _capture_json(svc: Service, capture_id: int, who: Access) -> str | None:
    try:
        return capture_out(svc, svc.library().captures.get(capture_id), who).model_dump_json()
    except GigafaceError:
        return None  # deleted


async def _events(request: Request, svc: Service, capture_id: int, who: Access) -> AsyncIterator[str]:
    """The capture after each change, until its job ends. Async: an open stream holds no
    thread, only a library read every half second."""
    last, quiet_since, started = None, time.monotonic(), time.monotonic()
    while time.monotonic() - started < 6 * 3600 and not await request.is_disconnected():
        current = await run_in_threadpool(_capture_json, svc, capture_id, who)
        if current is None:
            yield "event: deleted\ndata: {}\n\n"
            return
        if current != last:
            yield f"data: {current}\n\n"
            last, quiet_since = current, time.monotonic()
            if json.loads(current)["state"] in ("done", "failed"):
                return
        elif time.monotonic() - quiet_since > 15:
            yield ": still here\n\n"  # keeps proxies from closing an idle stream
            quiet_since = time.monotonic()
        await asyncio.sleep(0.5)


@router.get("/api/captures/{capture_id:int}/events", responses={**ERRORS, 429: {"model": Problem}, 200: {
    "content": {"text/event-stream": {}}, "description": "the capture as JSON after each change"}},
    summary="Server-sent events: the capture's progress until its job ends")
async def capture_events(request: Request, capture_id: CaptureId, svc: State, who: Viewer) -> StreamingResponse:
    await run_in_threadpool(svc.capture_or_404, capture_id)
    give_back = svc.streams.take(who.caller)
    return SlotStream(_events(request, svc, capture_id, who), give_back, media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.delete("/api/captures/{capture_id:int}", status_code=204, responses=ERRORS,
               summary="Delete a capture: its faces, embeddings, pyramids, exports and uploaded file")
def delete_capture(capture_id: CaptureId, svc: State, who: Admin) -> Response:
    svc.capture_or_404(capture_id)
    svc.cancel_job(capture_id)
    remove(svc.library(), svc.db, svc.library().captures.get(capture_id))
    return Response(status_code=204)
