"""The REST service and the viewer's web server: FastAPI on uvicorn, one library per server.

    gigaface serve library.db            tokens required (admin / viewer), any interface
    gigaface view library.db             one local user, no tokens, 127.0.0.1 only

Scans run in a job process of their own (`jobs.py`), so the server keeps answering while a
scan holds the CPU. Reference photos for a search stay in memory and are gone when the
request ends.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import starlette.formparsers
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from . import __version__
from .artifacts import capture_files, uploads_folder
from .errors import GigafaceError
from . import consent
from .index import AuditEntry, CaptureRecord, Consent, Face, Library
from .jobs import JobRunner
from .plan import settings_for
from .scan_job import capture_key, frames_of
from .consent import revealed
from .erasure import forget
from .job_worker import stale
from .retention import Purged, purge, remove
from .search import DEFAULT_THRESHOLD, Reference, ReferencePool, audited_rank, local_user
from .source import DEFAULT_MAX_PIXELS
from .tokens import verify

WEB = Path(__file__).parent / "web"
OPENSEADRAGON = WEB / "node_modules" / "openseadragon" / "build" / "openseadragon"
MAX_PHOTO_BYTES = 25 << 20      # one reference photo
MAX_PHOTOS = 8
MAX_BODY_BYTES = MAX_PHOTOS * MAX_PHOTO_BYTES + (1 << 20)   # any request but an upload
DEFAULT_MAX_UPLOAD = 4 << 30
TILE_NAME = re.compile(r"\d{1,6}_\d{1,6}\.jpg")  # whole name only: fullmatch
# Magic numbers of the formats libvips reads that people upload: a cheap check on the
# first bytes, so a wrong file is refused before gigabytes of it are received.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
               b"RIFF", b"GIF8", b"BM", b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")

# Starlette keeps multipart files in memory up to this size and spools larger ones to a
# temporary file; a reference photo must never reach the disk, so anything we accept
# stays in memory (larger photos are refused by the body limit).
starlette.formparsers.MultiPartParser.spool_max_size = MAX_BODY_BYTES


# --- response models (they make the OpenAPI document exact) ------------------------------
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
    box: list[float]
    distance: float
    match: bool
    quality: Quality


class SearchOut(BaseModel):
    threshold: float
    references: list[ReferenceOut]
    matches: list[MatchOut]


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
    name: str
    width: int
    height: int


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
    faces_erased: int
    consents_removed: int
    captures: list[CaptureErasureOut]


class Problem(BaseModel):
    detail: str


CaptureId = Annotated[int, PathParam(ge=0, le=2**62)]
ERRORS = {400: {"model": Problem}, 401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}}
ADDED = {200: {"model": CaptureOut, "description": "the same image is already in the library: that capture"}}


@dataclass(frozen=True)
class Access:
    role: str
    name: str
    mode: str
    token_id: int | None = None

    @property
    def who(self) -> str:
        """How the audit log names this caller."""
        return f"token {self.token_id} ({self.name})" if self.token_id is not None else local_user()


@dataclass(frozen=True)
class Config:
    db: str
    local: bool = False         # `gigaface view`: one local user, no tokens
    public: bool = False        # anonymous read-only access to the anonymised pyramids
    max_upload: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    run_jobs: bool = True
    purge_every: float = 60.0   # seconds between removals of expired captures


class _BodyLimit:
    """Refuse request bodies over a limit, whether announced by Content-Length or not.
    Uploads have their own, larger limit, checked while they stream to disk."""

    def __init__(self, app, limit: int, exempt: tuple[str, ...]):
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit >> 20} MB")
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit >> 20} MB"}, status_code=413)


def create_app(config: Config) -> FastAPI:
    Library(config.db)  # a clear error now rather than on the first request
    runner = JobRunner(config.db) if config.run_jobs else None
    local = threading.local()
    pool_lock = threading.Lock()
    pool_holder: list[ReferencePool] = []

    def reference_pool() -> ReferencePool:
        with pool_lock:  # started at the first search: a server that only shows starts fast
            if not pool_holder:
                pool_holder.append(ReferencePool())
            return pool_holder[0]

    def library() -> Library:
        # sqlite3 connections belong to their thread; FastAPI runs handlers in a pool.
        lib = getattr(local, "library", None)
        if lib is None:
            lib = local.library = Library(config.db)
        return lib

    def purge_expired() -> list[Purged]:
        return purge(library(), config.db, before_remove=runner.cancel if runner is not None else None)

    async def purge_now_and_then() -> None:
        while True:
            try:
                await asyncio.to_thread(purge_expired)
            except GigafaceError as exc:  # e.g. the library is locked by a long write: next time
                print(f"gigaface: purge: {exc}", flush=True)
            await asyncio.sleep(config.purge_every)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if runner is not None:
            runner.start()
        purging = asyncio.create_task(purge_now_and_then()) if config.run_jobs else None
        yield
        if purging is not None:
            purging.cancel()
        if runner is not None:
            await asyncio.to_thread(runner.stop)
        with pool_lock:
            for pool in pool_holder:
                pool.close()

    # No redirects to a slash-less path: a probe like ".../10/../" gets a plain 404, not a
    # redirect that echoes it back.
    app = FastAPI(title="gigaface", version=__version__, lifespan=lifespan, redirect_slashes=False,
                  description="Faces in gigapixel crowd images: captures, faces, search, exports, deep zoom.")
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES, exempt=("/api/captures/upload",))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list them all.
            # A literal path ("/api/captures/upload") beats a template that also matches it.
            routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(request.url.path)]
            routes = [r for r in routes if "{" not in r.path] or routes
            allowed = sorted({m for r in routes for m in r.methods})
            return JSONResponse({"detail": "method not allowed"}, status_code=405,
                                headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(sqlite3.DatabaseError)
    async def _damaged(_request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        # Pages of the library went bad under the server: say so, and keep serving the rest.
        return JSONResponse({"detail": f"the library file is damaged ({exc})"}, status_code=503)

    @app.exception_handler(GigafaceError)
    async def _user_error(_request: Request, exc: GigafaceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    bearer = HTTPBearer(auto_error=False, description="an API token from `gigaface token create`")

    def access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Access:
        if config.local:
            return Access("admin", "local user", "local")
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "an API token is needed: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        token = verify(library(), credentials.credentials)
        if token is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if token.last_used is None or time.time() - token.last_used > 60:
            library().touch_token(token.id)  # at most once a minute: a write costs the scan a lock
        return Access(token.role, token.name, "token", token.id)

    def admin(who: Annotated[Access, Depends(access)]) -> Access:
        if who.role != "admin":
            raise HTTPException(403, "this needs an admin token")
        return who

    Viewer = Annotated[Access, Depends(access)]
    Admin = Annotated[Access, Depends(admin)]

    def capture_or_404(capture_id: int) -> CaptureRecord:
        try:
            return library().capture(capture_id)
        except GigafaceError:
            raise HTTPException(404, f"no capture {capture_id}") from None

    def capture_out(c: CaptureRecord) -> CaptureOut:
        lib = library()
        job = lib.job(c.id)
        files = capture_files(config.db, c.id)
        exports_ready = os.path.exists(files.public_pyramid) and all(map(os.path.exists, files.exports(c.frames)))
        if job is not None:
            state, stage, error = job.state, job.stage, job.error
            progress = Progress(done=job.done, total=job.total, faces=job.faces)
        else:  # scanned by the CLI
            state = "done" if c.stage == "done" else "running"
            stage, error = c.stage, None
            progress = Progress(done=0, total=0, faces=0)
        return CaptureOut(
            id=c.id, name=os.path.basename(c.source), source=c.source, kind=c.kind, width=c.width,
            height=c.height, state=state, stage=stage, progress=progress, faces=lib.face_count(c.id),
            pyramid=os.path.exists(files.pyramid), export=exports_ready, error=error,
            created_at=c.created_at, finished_at=c.finished_at, expires_at=c.expires_at)

    # --- health and identity -------------------------------------------------------
    @app.get("/api/health", response_model=Health, tags=["service"])
    def health() -> Health:
        return Health(status="ok", version=__version__, public=config.public)

    @app.get("/api/me", response_model=Me, responses=ERRORS, tags=["service"])
    def me(who: Viewer) -> Me:
        return Me(role=who.role, name=who.name, mode=who.mode)

    # --- captures ------------------------------------------------------------------
    @app.get("/api/captures", response_model=list[CaptureOut], responses=ERRORS, tags=["captures"])
    def list_captures(who: Viewer) -> list[CaptureOut]:
        return [capture_out(c) for c in library().captures()]

    def add(path: str, preset: str, min_face: float | None, owned: str | None) -> tuple[CaptureRecord, bool]:
        lib = library()
        settings = settings_for(preset, min_face)
        if lib.is_own_file(path):
            raise GigafaceError(f"{path}: is the library itself, not an image")
        kind, frames = frames_of(path, config.max_pixels)
        key = capture_key(path)
        existing = lib.capture_by_key(key)
        if existing is not None:
            return existing, False
        width = max(f.x + f.width for f in frames)
        height = max(f.y + f.height for f in frames)
        capture = lib.create_capture(key, os.path.abspath(path), kind, width, height, frames, settings.to_dict())
        lib.put_job(capture.id, owned_file=owned)
        if runner is not None:
            runner.submit(capture.id)
        return capture, True

    @app.post("/api/captures", response_model=CaptureOut, status_code=201, responses={**ERRORS, **ADDED},
              tags=["captures"],
              summary="Add an image or camera-array manifest that is on the server, and scan it")
    def add_capture(body: AddCapture, who: Admin, response: Response) -> CaptureOut:
        capture, new = add(body.path, body.preset, body.min_face, None)
        if not new:
            response.status_code = 200  # already in the library: nothing to do
        return capture_out(capture)

    @app.post("/api/captures/upload", response_model=CaptureOut, status_code=201,
              responses={**ERRORS, **ADDED, 413: {"model": Problem}, 415: {"model": Problem}}, tags=["captures"],
              summary="Upload an image (the request body is the file) and scan it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_capture(request: Request, who: Admin, response: Response,
                             filename: Annotated[str, Query(min_length=1, max_length=200)],
                             preset: Literal["fast", "balanced", "accurate"] = "balanced") -> CaptureOut:
        name = _safe_name(filename)
        if name.lower().endswith(".json"):
            raise HTTPException(400, "upload images only; add camera-array manifests by their server path")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_upload):
            raise HTTPException(413, f"upload over the limit of {config.max_upload >> 20} MB")
        folder = os.path.join(uploads_folder(config.db), secrets.token_hex(8))
        os.makedirs(folder)
        partial = os.path.join(folder, ".partial")
        try:
            try:
                await _receive(request, partial, config.max_upload)
            except HTTPException as exc:
                if exc.status_code == 400:
                    exc.detail = f"{name}: {exc.detail}"
                raise
            final = os.path.join(folder, name)
            os.replace(partial, final)
            capture, new = await asyncio.to_thread(add, final, preset, None, final)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not new:
            shutil.rmtree(folder, ignore_errors=True)  # the same image is already there
            response.status_code = 200
        return capture_out(capture)

    @app.get("/api/captures/{capture_id:int}", response_model=CaptureOut, responses=ERRORS, tags=["captures"])
    def get_capture(capture_id: CaptureId, who: Viewer) -> CaptureOut:
        return capture_out(capture_or_404(capture_id))

    @app.get("/api/captures/{capture_id:int}/events", responses={**ERRORS, 200: {
        "content": {"text/event-stream": {}}, "description": "the capture as JSON after each change"}},
        tags=["captures"], summary="Server-sent events: the capture's progress until its job ends")
    def capture_events(capture_id: CaptureId, who: Viewer) -> StreamingResponse:
        capture_or_404(capture_id)

        def stream():
            last, quiet_since, started = None, time.monotonic(), time.monotonic()
            while time.monotonic() - started < 6 * 3600:
                try:
                    current = capture_out(library().capture(capture_id)).model_dump_json()
                except GigafaceError:
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
                time.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/api/captures/{capture_id:int}", status_code=204, responses=ERRORS, tags=["captures"],
                summary="Delete a capture: its faces, embeddings, pyramids, exports and uploaded file")
    def delete_capture(capture_id: CaptureId, who: Admin) -> Response:
        capture_or_404(capture_id)
        if runner is not None:
            runner.cancel(capture_id)
        remove(library(), config.db, library().capture(capture_id))
        return Response(status_code=204)

    # --- faces ---------------------------------------------------------------------
    @app.get("/api/captures/{capture_id:int}/faces", response_model=FacePage, responses=ERRORS, tags=["faces"])
    def list_faces(capture_id: CaptureId, who: Viewer,
                   offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                   min_size: Annotated[float | None, Query(ge=0, le=1e6, description="px, the box's longer side")] = None,
                   max_size: Annotated[float | None, Query(ge=0, le=1e6)] = None,
                   min_score: Annotated[float | None, Query(ge=0, le=10)] = None,
                   min_sharpness: Annotated[float | None, Query(ge=0, le=1e9)] = None,
                   min_frontalness: Annotated[float | None, Query(ge=0, le=1)] = None) -> FacePage:
        capture_or_404(capture_id)
        total, faces = library().face_page(capture_id, offset, limit, min_size, max_size, min_score,
                                           min_sharpness, min_frontalness)
        return FacePage(total=total, offset=offset, limit=limit, items=[_face_out(f) for f in faces])

    def face_or_404(face_id: int) -> Face:
        found = library().faces_by_id([face_id])
        if not found:
            raise HTTPException(404, f"no face {face_id}")
        return found[0]

    @app.get("/api/faces/{face_id:int}", response_model=FaceOut, responses=ERRORS, tags=["faces"])
    def get_face(face_id: Annotated[int, PathParam(ge=0, le=2**62)], who: Viewer) -> FaceOut:
        return _face_out(face_or_404(face_id))

    @app.get("/api/faces/{face_id:int}/crop.jpg", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
             response_class=Response, tags=["faces"])
    def face_crop(face_id: Annotated[int, PathParam(ge=0, le=2**62)], who: Viewer) -> Response:
        face_or_404(face_id)
        data = library().crop(face_id)
        if not data:
            raise HTTPException(404, f"face {face_id} has no crop yet")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # --- search --------------------------------------------------------------------
    @app.post("/api/captures/{capture_id:int}/search", response_model=SearchOut,
              responses={**ERRORS, 413: {"model": Problem}}, tags=["search"],
              summary="Rank the capture's faces by likeness to the person in the photos (not stored)")
    def search(capture_id: CaptureId, who: Viewer, photos: Annotated[list[UploadFile], File(description="photos of one person")],
               top: Annotated[int, Query(ge=1, le=1000)] = 20,
               threshold: Annotated[float, Query(gt=0, le=2)] = DEFAULT_THRESHOLD) -> SearchOut:
        capture_or_404(capture_id)
        library().key()  # a library without its key cannot be searched: say so before any work
        refs = read_references(photos)
        matches = audited_rank(library(), refs, [capture_id], who.who, top=top, threshold=threshold)
        return SearchOut(
            threshold=threshold, references=[ReferenceOut(name=r.path, faces_in_photo=r.faces_in_photo) for r in refs],
            matches=[MatchOut(rank=m.rank, face_id=m.face.id, box=[round(v, 1) for v in m.face.box],
                              distance=round(m.distance, 4), match=m.match, quality=Quality(**m.face.quality))
                     for m in matches])

    def read_references(photos: list[UploadFile]) -> list[Reference]:
        """Reference embeddings from uploaded photos, decoded in memory only."""
        if not 1 <= len(photos) <= MAX_PHOTOS:
            raise HTTPException(400, f"give 1 to {MAX_PHOTOS} photos")
        refs = []
        for photo in photos:
            data = photo.file.read(MAX_PHOTO_BYTES + 1)
            name = _safe_name(photo.filename or "photo")
            if len(data) > MAX_PHOTO_BYTES:
                raise HTTPException(413, f"{name}: over {MAX_PHOTO_BYTES >> 20} MB")
            if not data.startswith(IMAGE_MAGIC):
                raise HTTPException(400, f"{name}: not an image")
            refs.append(reference_pool().reference(name, data))
            del data
        return refs

    # --- consent, erasure, audit, retention -------------------------------------------
    def redo_files(capture_id: int, originals_too: bool) -> None:
        """Who is shown changed: stop the capture's job, remove what shows the wrong people,
        and queue a job that makes it again."""
        if runner is not None:
            runner.cancel(capture_id)
        stale(config.db, capture_id, originals_too)
        lib = library()
        capture = lib.capture(capture_id)
        lib.put_job(capture_id, stage="pyramid" if capture.stage == "done" else capture.stage)
        if runner is not None:
            runner.submit(capture_id)

    def consent_out(c: Consent, shown: dict[int, int]) -> ConsentOut:
        face = next((f for f, consent_id in shown.items() if consent_id == c.id), None)
        return ConsentOut(id=c.id, capture=c.capture, name=c.name, note=c.note, created_at=c.created_at,
                          face_shown=face)

    @app.get("/api/captures/{capture_id:int}/consents", response_model=list[ConsentOut], responses=ERRORS,
             tags=["consent"], summary="People who asked to be shown unblurred in the capture's exports")
    def list_consents(capture_id: CaptureId, who: Admin) -> list[ConsentOut]:
        capture_or_404(capture_id)
        shown = revealed(library(), capture_id)
        return [consent_out(c, shown) for c in library().consents(capture_id)]

    @app.post("/api/captures/{capture_id:int}/consents", response_model=ConsentOut, status_code=201,
              responses={**ERRORS, 413: {"model": Problem}}, tags=["consent"],
              summary="Add a person's consent from their own photo (the photo is not stored)")
    def add_consent(capture_id: CaptureId, who: Admin,
                    photo: Annotated[UploadFile, File(description="the person's own photo")],
                    name: Annotated[str, Form(min_length=1, max_length=200)],
                    note: Annotated[str, Form(max_length=2000)] = "") -> ConsentOut:
        capture_or_404(capture_id)
        library().key()
        ref = read_references([photo])[0]
        added = consent.add(library(), capture_id, ref, name, note)
        redo_files(capture_id, originals_too=False)
        return consent_out(added, revealed(library(), capture_id))

    @app.delete("/api/consents/{consent_id:int}", status_code=204, responses=ERRORS, tags=["consent"],
                summary="Withdraw a consent: the person is blurred again")
    def remove_consent(consent_id: Annotated[int, PathParam(ge=0, le=2**62)], who: Admin) -> Response:
        try:
            removed = library().remove_consent(consent_id)
        except GigafaceError:
            raise HTTPException(404, f"no consent {consent_id}") from None
        redo_files(removed.capture, originals_too=False)
        return Response(status_code=204)

    @app.post("/api/forget", response_model=ErasureOut, responses={**ERRORS, 413: {"model": Problem}},
              tags=["consent"], summary="Erase a person on request, in every capture (the photos are not stored)")
    def forget_person(who: Admin, photos: Annotated[list[UploadFile], File(description="photos of the person")],
                      threshold: Annotated[float, Query(gt=0, le=2)] = DEFAULT_THRESHOLD) -> ErasureOut:
        library().key()
        report = forget(library(), read_references(photos), who.who, threshold)
        for entry in report.captures:
            redo_files(entry.capture, originals_too=True)
        return ErasureOut(**report.to_dict())

    @app.get("/api/audit", response_model=list[AuditEntry], responses=ERRORS, tags=["consent"],
             summary="The audit log: every search, by whom, over which captures")
    def audit_log(who: Admin, since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
                  limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[AuditEntry]:
        return library().audit(since=since, limit=limit)

    @app.post("/api/purge", response_model=list[Purged], responses=ERRORS, tags=["consent"],
              summary="Remove the captures whose retention has passed now (the service also does it every minute)")
    def purge_now(who: Admin) -> list[Purged]:
        return purge_expired()

    # --- exports and pyramids ------------------------------------------------------
    @app.get("/api/captures/{capture_id:int}/export", response_class=FileResponse, tags=["exports"],
             responses={**ERRORS, 409: {"model": Problem}, 200: {"content": {"image/jpeg": {}, "image/tiff": {}}}},
             summary="The anonymised image: every face blurred (frame k of a camera-array capture)")
    def export(capture_id: CaptureId, who: Viewer, frame: Annotated[int, Query(ge=0, le=100_000)] = 0) -> FileResponse:
        capture = capture_or_404(capture_id)
        paths = capture_files(config.db, capture_id).exports(capture.frames)
        if frame >= len(paths):
            raise HTTPException(404, f"capture {capture_id} has {len(paths)} frame(s)")
        if not os.path.exists(paths[frame]):
            raise HTTPException(409, f"capture {capture_id}: the export is not ready yet")
        return FileResponse(paths[frame], filename=f"{Path(capture.frames[frame].path).stem}-anonymised"
                            f"{Path(paths[frame]).suffix}")

    def dzi(capture_id: int, which: str) -> FileResponse:
        capture_or_404(capture_id)
        files = capture_files(config.db, capture_id)
        path = files.pyramid if which == "pyramid" else files.public_pyramid
        if not os.path.exists(path):
            raise HTTPException(404, f"capture {capture_id}: the {which} pyramid is not ready yet")
        return FileResponse(path, media_type="application/xml", headers={"Cache-Control": "no-cache"})

    def tile(capture_id: int, which: str, level: int, name: str) -> FileResponse:
        if not TILE_NAME.fullmatch(name):
            raise HTTPException(404, "no such tile")
        folder = capture_files(config.db, capture_id).tiles(which)
        path = os.path.join(folder, str(level), name)
        if not os.path.isfile(path):
            raise HTTPException(404, "no such tile")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    TILE_RESPONSES = {**ERRORS, 200: {"content": {"image/jpeg": {}}}}
    Level = Annotated[int, PathParam(ge=0, le=64)]

    @app.get("/api/captures/{capture_id:int}/pyramid.dzi", response_class=FileResponse, tags=["deep zoom"],
             responses={**ERRORS, 200: {"content": {"application/xml": {}}}})
    def pyramid_dzi(capture_id: CaptureId, who: Viewer) -> FileResponse:
        return dzi(capture_id, "pyramid")

    @app.get("/api/captures/{capture_id:int}/pyramid_files/{level:int}/{name}", response_class=FileResponse,
             tags=["deep zoom"], responses=TILE_RESPONSES)
    def pyramid_tile(capture_id: CaptureId, level: Level, name: str, who: Viewer) -> FileResponse:
        return tile(capture_id, "pyramid", level, name)

    @app.get("/api/captures/{capture_id:int}/public.dzi", response_class=FileResponse, tags=["deep zoom"],
             responses={**ERRORS, 200: {"content": {"application/xml": {}}}})
    def public_dzi(capture_id: CaptureId, who: Viewer) -> FileResponse:
        return dzi(capture_id, "public")

    @app.get("/api/captures/{capture_id:int}/public_files/{level:int}/{name}", response_class=FileResponse,
             tags=["deep zoom"], responses=TILE_RESPONSES)
    def public_tile(capture_id: CaptureId, level: Level, name: str, who: Viewer) -> FileResponse:
        return tile(capture_id, "public", level, name)

    # --- the public, anonymised-only view -------------------------------------------
    def public_only() -> None:
        if not config.public:
            raise HTTPException(404, "this server has no public view (gigaface serve --public)")

    Public = Annotated[None, Depends(public_only)]

    @app.get("/public/captures", response_model=list[PublicCapture], responses={404: {"model": Problem}},
             tags=["public"])
    def public_captures(_: Public) -> list[PublicCapture]:
        ready = [c for c in library().captures()
                 if os.path.exists(capture_files(config.db, c.id).public_pyramid)]
        return [PublicCapture(id=c.id, name=os.path.basename(c.source), width=c.width, height=c.height)
                for c in ready]

    @app.get("/public/captures/{capture_id:int}/image.dzi", response_class=FileResponse, tags=["public"],
             responses={404: {"model": Problem}, 200: {"content": {"application/xml": {}}}})
    def public_image_dzi(capture_id: CaptureId, _: Public) -> FileResponse:
        return dzi(capture_id, "public")

    @app.get("/public/captures/{capture_id:int}/image_files/{level:int}/{name}", response_class=FileResponse,
             tags=["public"], responses={404: {"model": Problem}, 200: {"content": {"image/jpeg": {}}}})
    def public_image_tile(capture_id: CaptureId, level: Level, name: str, _: Public) -> FileResponse:
        return tile(capture_id, "public", level, name)

    # --- the web pages -------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/public", include_in_schema=False)
    def public_page() -> FileResponse:
        public_only()
        return FileResponse(WEB / "public.html", headers={"Cache-Control": "no-cache"})

    if OPENSEADRAGON.is_dir():
        app.mount("/static/vendor/openseadragon", StaticFiles(directory=OPENSEADRAGON), name="openseadragon")
    else:
        @app.get("/static/vendor/openseadragon/{rest:path}", include_in_schema=False)
        def no_openseadragon(rest: str) -> Response:
            return Response("// OpenSeadragon is not installed: run `make setup` (npm ci in src/gigaface/web)\n",
                            status_code=404, media_type="text/javascript")
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _face_out(f: Face) -> FaceOut:
    return FaceOut(id=f.id, capture=f.capture, box=[round(v, 1) for v in f.box], score=round(f.score, 4),
                   landmarks=[[round(x, 1), round(y, 1)] for x, y in f.landmarks],
                   quality=Quality(**f.quality), embedded=f.embedded, erased=f.erased)


def _safe_name(filename: str) -> str:
    """A file name from a client, reduced to its last component in a safe alphabet."""
    base = os.path.basename(filename.replace("\\", "/")).strip()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).lstrip(".") or "upload"
    return base[:120]


async def _receive(request: Request, path: str, limit: int) -> None:
    """Stream the request body into `path`, refusing more than `limit` bytes and content
    that does not start like an image."""
    received = 0
    with open(path, "wb") as out:
        async for chunk in request.stream():
            if not received and chunk and not chunk[:16].startswith(IMAGE_MAGIC):
                raise HTTPException(415, "not an image (JPEG, PNG, TIFF, WebP, GIF, BMP or JPEG 2000)")
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"upload over the limit of {limit >> 20} MB")
            await asyncio.to_thread(out.write, chunk)
    if not received:
        raise HTTPException(400, "empty upload")
    if not _ends_whole(path):
        raise HTTPException(400, "the upload is cut short (the file's end marker is missing)")


def _ends_whole(path: str) -> bool:
    """JPEG and PNG name their end: an upload cut short is found here, not an hour into its
    scan. Other formats are checked as the scan decodes them."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        tail = f.read().rstrip(b"\x00\r\n ")
    if head.startswith(b"\xff\xd8\xff"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG"):
        return tail.endswith(b"IEND\xaeB`\x82")
    return True


def serve(config: Config, host: str, port: int, on_ready=None) -> None:
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=30))
    if on_ready is not None:
        def wait():
            while not server.started:
                time.sleep(0.05)
            on_ready()
        threading.Thread(target=wait, daemon=True).start()
    server.run()
