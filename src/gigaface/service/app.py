"""The REST service and the viewer's web server: FastAPI on uvicorn, one library per server.

    gigaface serve library.db            tokens required (admin / viewer), any interface
    gigaface view library.db             one local user, 127.0.0.1 only, a key per run

Scans run in a job process of their own (`jobs.py`), so the server keeps answering while a
scan holds the CPU. Reference photos for a search stay in memory and are gone when the
request ends. What is refused before a route runs (hosts, other sites' pages, callers,
body sizes) is in `gate.py`.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import starlette.formparsers
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gigaface import __version__
from gigaface.library.files import capture_files, private_folder, pyramid_build, uploads_folder
from gigaface.errors import GigafaceError
from gigaface.privacy import consent
from gigaface.service.gate import SMALL_BODY, Gate, HostCheck, Policy, route_of
from gigaface.library.records import AuditEntry, CaptureRecord, Consent, Face
from gigaface.library.store import Library
from gigaface.service.runner import JobRunner
from gigaface.engine.manifest import is_manifest
from gigaface.engine.plan import settings_for
from gigaface.ingest import capture_key, existing_capture, frames_of
from gigaface.privacy.consent import revealed
from gigaface.privacy.erasure import MAX_FORGET_THRESHOLD, forget
from gigaface.service.worker import stale
from gigaface.privacy.retention import Purged, purge, remove
from gigaface.search import DEFAULT_THRESHOLD, MAX_THRESHOLD, Reference, ReferencePool, audited_rank, local_user
from gigaface.engine.source import DEFAULT_MAX_PIXELS
from gigaface.library.tokens import verify

WEB = Path(__file__).parent / "web"
OPENSEADRAGON = WEB / "node_modules" / "openseadragon" / "build" / "openseadragon"
SWAGGER_UI = WEB / "node_modules" / "swagger-ui-dist"
MAX_PHOTO_BYTES = 25 << 20      # one reference photo
MAX_PHOTOS = 8
PHOTOS_BODY = MAX_PHOTOS * MAX_PHOTO_BYTES + SMALL_BODY   # a search or an erasure
MAX_BODY_BYTES = PHOTOS_BODY    # the largest body of any request but an upload
DEFAULT_MAX_UPLOAD = 4 << 30
TILE_NAME = re.compile(r"\d{1,6}_\d{1,6}\.jpg")  # whole name only: fullmatch
# `gigaface view`'s per-run secret travels in this header. A custom header also makes any
# cross-origin request a "preflighted" one, which this server never allows.
KEY_HEADER = "X-Gigaface-Key"
# Server-sent event streams are cheap (async) but each polls the library: a few per
# caller is all a page needs, and the total keeps a set of viewer tokens from piling up.
MAX_STREAMS_PER_CALLER = 4
MAX_STREAMS = 32
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
ERRORS = {400: {"model": Problem}, 401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}}
TOO_LARGE = {413: {"model": Problem}}
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
    local: bool = False         # `gigaface view`: one local user, no tokens...
    local_key: str | None = None    # ...but this run's secret, in the X-Gigaface-Key header
    public: bool = False        # anonymous read-only access to the anonymised pyramids
    max_upload: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    run_jobs: bool = True
    purge_every: float = 60.0   # seconds between removals of expired captures
    data_dir: str | None = None     # captures by server path only from under here; None: uploads only
    host: str = "127.0.0.1"     # the address the server listens on
    allow_hosts: tuple[str, ...] = ()   # more Host names it answers for (behind a DNS name)


def body_limit(limit: int) -> Callable:
    """The largest request body a route takes (the gate refuses more before the route
    runs); routes without one take SMALL_BODY."""
    def mark(endpoint: Callable) -> Callable:
        endpoint.body_limit = limit
        return endpoint
    return mark


class StreamSlots:
    """How many event streams each caller (and everyone) has open; 429 beyond the caps."""

    def __init__(self, per_caller: int, total: int):
        self.per_caller, self.total = per_caller, total
        self.open: Counter[str] = Counter()
        self.lock = threading.Lock()

    def take(self, caller: str) -> Callable[[], None]:
        """A slot for `caller`; returns the function that gives it back (once)."""
        with self.lock:
            if self.open[caller] >= self.per_caller or sum(self.open.values()) >= self.total:
                raise HTTPException(429, f"too many open event streams (at most {self.per_caller} per caller,"
                                         f" {self.total} in all): close one, or poll GET /api/captures/ID",
                                    headers={"Retry-After": "15"})
            self.open[caller] += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self.lock:
                if not given_back.is_set():
                    given_back.set()
                    self.open[caller] -= 1
        return give_back


class _SlotStream(StreamingResponse):
    """A streamed response that gives its slot back however it ends (finished, client gone,
    cancelled, or never started)."""

    def __init__(self, content, give_back: Callable[[], None], **options):
        super().__init__(content, **options)
        self.give_back = give_back

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.give_back()


def create_app(config: Config) -> FastAPI:
    if config.local and not config.local_key:
        raise ValueError("a local server needs its run's key (Config.local_key)")
    Library(config.db)  # a clear error now rather than on the first request
    runner = JobRunner(config.db) if config.run_jobs else None
    streams = StreamSlots(MAX_STREAMS_PER_CALLER, MAX_STREAMS)
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
    # Swagger UI is served from this server (see /docs below), never from a CDN.
    app = FastAPI(title="gigaface", version=__version__, lifespan=lifespan, redirect_slashes=False,
                  docs_url=None, redoc_url=None,
                  description="Faces in gigapixel crowd images: captures, faces, search, exports, deep zoom.")

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

    # Only for the OpenAPI document: the gate authenticates every /api request first.
    bearer = HTTPBearer(auto_error=False, description="an API token from `gigaface token create`")

    def authenticate(headers: Headers) -> Access:
        """Who is asking: the one answer, used by the gate before any body is read."""
        if config.local:
            return _local_caller(headers, config.local_key)
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HTTPException(401, "an API token is needed: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        token = verify(library(), secret.strip())
        if token is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if token.last_used is None or time.time() - token.last_used > 60:
            library().tokens.touch(token.id)  # at most once a minute: a write costs the scan a lock
        return Access(token.role, token.name, "token", token.id)

    def access(request: Request, _documented: Annotated[object, Depends(bearer)]) -> Access:
        who = getattr(request.state, "access", None)
        return who if who is not None else authenticate(request.headers)

    def admin(who: Annotated[Access, Depends(access)]) -> Access:
        if who.role != "admin":
            raise HTTPException(403, "this needs an admin token")
        return who

    Viewer = Annotated[Access, Depends(access)]
    Admin = Annotated[Access, Depends(admin)]

    def capture_or_404(capture_id: int) -> CaptureRecord:
        try:
            return library().captures.get(capture_id)
        except GigafaceError:
            raise HTTPException(404, f"no capture {capture_id}") from None

    def capture_out(c: CaptureRecord, who: Access) -> CaptureOut:
        lib = library()
        job = lib.jobs.get(c.id)
        files = capture_files(config.db, c.id)
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
            pyramid_url=_pyramid_url(f"/api/captures/{c.id}/pyramid", files.pyramid),
            public_url=_pyramid_url(f"/api/captures/{c.id}/public", files.public_pyramid),
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
        return [capture_out(c, who) for c in library().captures.all()]

    def add(path: str, preset: str, min_face: float | None, owned: str | None) -> tuple[CaptureRecord, bool]:
        lib = library()
        settings = settings_for(preset, min_face)
        if lib.is_own_file(path):
            raise GigafaceError(f"{path}: is the library itself, not an image")
        kind, frames = frames_of(path, config.max_pixels)
        key = capture_key(path)
        existing = existing_capture(lib, path, key)  # also a capture an older version keyed by path
        if existing is not None:
            return existing, False
        width = max(f.x + f.width for f in frames)
        height = max(f.y + f.height for f in frames)
        capture, made = lib.captures.find_or_create(key, os.path.abspath(path), kind, width, height, frames,
                                                   settings.to_dict())
        if not made:  # a CLI scan of the same file made it meanwhile
            return capture, False
        lib.jobs.put(capture.id, owned_file=owned)
        if runner is not None:
            runner.submit(capture.id)
        return capture, True

    def server_path(path: str) -> str:
        """A client's path to an image or manifest, as the real path under the data folder,
        checked to be a regular file before anything opens it (a FIFO would block forever)."""
        if config.data_dir is None:
            raise HTTPException(403, "this server takes uploads only (POST /api/captures/upload);"
                                     " start it with --data-dir DIR to add files by their path under DIR")
        real = _inside(config.data_dir, path)
        _regular_file(real, path)
        if is_manifest(real):
            for k, frame in enumerate(_manifest_files(real)):
                _regular_file(_inside(config.data_dir, frame, f"{path}: frame {k}"), f"{path}: frame {k}",
                              missing_ok=True)
        return real

    @app.post("/api/captures", response_model=CaptureOut, status_code=201,
              responses={**ERRORS, **ADDED, **TOO_LARGE}, tags=["captures"],
              summary="Add an image or camera-array manifest from the server's data folder (serve --data-dir), and scan it")
    def add_capture(body: AddCapture, who: Admin, response: Response) -> CaptureOut:
        capture, new = add(server_path(body.path), body.preset, body.min_face, None)
        if not new:
            response.status_code = 200  # already in the library: nothing to do
        return capture_out(capture, who)

    @app.post("/api/captures/upload", response_model=CaptureOut, status_code=201,
              responses={**ERRORS, **ADDED, **TOO_LARGE, 415: {"model": Problem}}, tags=["captures"],
              summary="Upload an image (the request body is the file) and scan it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    @body_limit(config.max_upload)
    async def upload_capture(request: Request, who: Admin, response: Response,
                             filename: Annotated[str, Query(min_length=1, max_length=200)],
                             preset: Literal["fast", "balanced", "accurate"] = "balanced") -> CaptureOut:
        name = _safe_name(filename)
        if name.lower().endswith(".json"):
            raise HTTPException(400, "upload images only; add camera-array manifests by their server path")
        folder = private_folder(config.db, os.path.join(uploads_folder(config.db), secrets.token_hex(8)))
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
        return await run_in_threadpool(capture_out, capture, who)

    @app.get("/api/captures/{capture_id:int}", response_model=CaptureOut, responses=ERRORS, tags=["captures"])
    def get_capture(capture_id: CaptureId, who: Viewer) -> CaptureOut:
        return capture_out(capture_or_404(capture_id), who)

    def capture_json(capture_id: int, who: Access) -> str | None:
        try:
            return capture_out(library().captures.get(capture_id), who).model_dump_json()
        except GigafaceError:
            return None  # deleted

    async def events(request: Request, capture_id: int, who: Access) -> AsyncIterator[str]:
        """The capture after each change, until its job ends. Async: an open stream holds no
        thread, only a library read every half second."""
        last, quiet_since, started = None, time.monotonic(), time.monotonic()
        while time.monotonic() - started < 6 * 3600 and not await request.is_disconnected():
            current = await run_in_threadpool(capture_json, capture_id, who)
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

    @app.get("/api/captures/{capture_id:int}/events", responses={**ERRORS, 429: {"model": Problem}, 200: {
        "content": {"text/event-stream": {}}, "description": "the capture as JSON after each change"}},
        tags=["captures"], summary="Server-sent events: the capture's progress until its job ends")
    async def capture_events(request: Request, capture_id: CaptureId, who: Viewer) -> StreamingResponse:
        await run_in_threadpool(capture_or_404, capture_id)
        give_back = streams.take(_caller(who))
        return _SlotStream(events(request, capture_id, who), give_back, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/api/captures/{capture_id:int}", status_code=204, responses=ERRORS, tags=["captures"],
                summary="Delete a capture: its faces, embeddings, pyramids, exports and uploaded file")
    def delete_capture(capture_id: CaptureId, who: Admin) -> Response:
        capture_or_404(capture_id)
        if runner is not None:
            runner.cancel(capture_id)
        remove(library(), config.db, library().captures.get(capture_id))
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
        total, faces = library().faces.page(capture_id, offset, limit, min_size, max_size, min_score,
                                           min_sharpness, min_frontalness)
        return FacePage(total=total, offset=offset, limit=limit, items=[_face_out(f) for f in faces])

    def face_or_404(face_id: int) -> Face:
        found = library().faces.by_id([face_id])
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
        data = library().faces.crop(face_id)
        if not data:
            raise HTTPException(404, f"face {face_id} has no crop yet")
        # Not kept by the browser: a face erased later must not stay in its cache (the page
        # keeps the crops it fetched for as long as it is open).
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    # --- search --------------------------------------------------------------------
    @app.post("/api/captures/{capture_id:int}/search", response_model=SearchOut,
              responses={**ERRORS, 413: {"model": Problem}}, tags=["search"],
              summary="Rank the capture's faces by likeness to the person in the photos (not stored)")
    @body_limit(PHOTOS_BODY)
    def search(capture_id: CaptureId, who: Viewer, photos: Annotated[list[UploadFile], File(description="photos of one person")],
               top: Annotated[int, Query(ge=1, le=1000)] = 20,
               threshold: Annotated[float, Query(gt=0, le=MAX_THRESHOLD)] = DEFAULT_THRESHOLD) -> SearchOut:
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
        capture = lib.captures.get(capture_id)
        lib.jobs.put(capture_id, stage="pyramid" if capture.stage == "done" else capture.stage)
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
        return [consent_out(c, shown) for c in library().consents.all(capture_id)]

    @app.post("/api/captures/{capture_id:int}/consents", response_model=ConsentOut, status_code=201,
              responses={**ERRORS, 413: {"model": Problem}}, tags=["consent"],
              summary="Add a person's consent from their own photo (the photo is not stored)")
    @body_limit(MAX_PHOTO_BYTES + SMALL_BODY)
    def add_consent(capture_id: CaptureId, who: Admin,
                    photo: Annotated[UploadFile, File(description="the person's own photo")],
                    name: Annotated[str, Form(min_length=1, max_length=200)],
                    note: Annotated[str, Form(max_length=2000)] = "") -> ConsentOut:
        capture_or_404(capture_id)
        library().key()
        ref = read_references([photo])[0]
        added = consent.add(library(), capture_id, ref, name, note, who=who.who)
        redo_files(capture_id, originals_too=False)
        return consent_out(added, revealed(library(), capture_id))

    @app.delete("/api/consents/{consent_id:int}", status_code=204, responses=ERRORS, tags=["consent"],
                summary="Withdraw a consent: the person is blurred again")
    def remove_consent(consent_id: Annotated[int, PathParam(ge=0, le=2**62)], who: Admin) -> Response:
        if not any(c.id == consent_id for c in library().consents.all()):
            raise HTTPException(404, f"no consent {consent_id}")
        removed = consent.remove(library(), consent_id, who=who.who)  # audited under the token
        redo_files(removed.capture, originals_too=False)
        return Response(status_code=204)

    @app.post("/api/forget", response_model=ErasureOut, responses={**ERRORS, 413: {"model": Problem}},
              tags=["consent"], summary="Erase a person on request, in every capture (the photos are not stored)")
    @body_limit(PHOTOS_BODY)
    def forget_person(who: Admin, photos: Annotated[list[UploadFile], File(description="photos of the person")],
                      threshold: Annotated[float, Query(gt=0, le=MAX_FORGET_THRESHOLD)] = DEFAULT_THRESHOLD,
                      dry_run: Annotated[bool, Query(description="report what would be erased; change nothing")] = False,
                      ) -> ErasureOut:
        library().key()
        report = forget(library(), read_references(photos), who.who, threshold, dry_run=dry_run)
        if not dry_run:
            for entry in report.captures:
                redo_files(entry.capture, originals_too=True)
        return ErasureOut(**report.to_dict(), dry_run=dry_run)

    @app.get("/api/audit", response_model=AuditOut, responses=ERRORS, tags=["consent"],
             summary="The audit log: every search, by whom, over which captures, and whether its chain holds")
    def audit_log(who: Admin, since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
                  limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> AuditOut:
        log = library().audit.log(since=since, limit=limit)
        return AuditOut(chain=AuditChainOut(**log.verdict.to_dict()), entries=list(log))

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

    # Pyramid URLs carry the build (artifacts.pyramid_build): a rebuild after an erasure or
    # a withdrawn consent changes every URL, and the old ones answer 404, so no browser
    # shows a tile it cached from before. The capture's JSON names the current ones.
    def pyramid_file(capture_id: int, which: str, build: str) -> tuple[str, str]:
        """(descriptor, tile folder) of the capture's pyramid if `build` is its current one."""
        files = capture_files(config.db, capture_id)
        path = files.pyramid if which == "pyramid" else files.public_pyramid
        current = pyramid_build(path)
        if current is None:
            raise HTTPException(404, f"capture {capture_id}: the {which} pyramid is not ready yet")
        if build != current:
            raise HTTPException(404, f"capture {capture_id}: that {which} pyramid was replaced;"
                                     " the capture's pyramid_url names the current one")
        return path, files.tiles(which)

    def dzi(capture_id: int, which: str, build: str) -> FileResponse:
        capture_or_404(capture_id)
        path, _ = pyramid_file(capture_id, which, build)
        return FileResponse(path, media_type="application/xml", headers={"Cache-Control": "no-cache"})

    def tile(capture_id: int, which: str, build: str, level: int, name: str) -> FileResponse:
        if not TILE_NAME.fullmatch(name):
            raise HTTPException(404, "no such tile")
        _, folder = pyramid_file(capture_id, which, build)
        path = os.path.join(folder, str(level), name)
        if not os.path.isfile(path):
            raise HTTPException(404, "no such tile")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    TILE_RESPONSES = {**ERRORS, 200: {"content": {"image/jpeg": {}}}}
    DZI_RESPONSES = {**ERRORS, 200: {"content": {"application/xml": {}}}}
    Level = Annotated[int, PathParam(ge=0, le=64)]
    Build = Annotated[str, PathParam(max_length=64, description="the build, from the capture's pyramid_url")]

    @app.get("/api/captures/{capture_id:int}/pyramid/{build}.dzi", response_class=FileResponse,
             tags=["deep zoom"], responses=DZI_RESPONSES)
    def pyramid_dzi(capture_id: CaptureId, build: Build, who: Viewer) -> FileResponse:
        return dzi(capture_id, "pyramid", build)

    @app.get("/api/captures/{capture_id:int}/pyramid/{build}_files/{level:int}/{name}", response_class=FileResponse,
             tags=["deep zoom"], responses=TILE_RESPONSES)
    def pyramid_tile(capture_id: CaptureId, build: Build, level: Level, name: str, who: Viewer) -> FileResponse:
        return tile(capture_id, "pyramid", build, level, name)

    @app.get("/api/captures/{capture_id:int}/public/{build}.dzi", response_class=FileResponse,
             tags=["deep zoom"], responses=DZI_RESPONSES)
    def public_dzi(capture_id: CaptureId, build: Build, who: Viewer) -> FileResponse:
        return dzi(capture_id, "public", build)

    @app.get("/api/captures/{capture_id:int}/public/{build}_files/{level:int}/{name}", response_class=FileResponse,
             tags=["deep zoom"], responses=TILE_RESPONSES)
    def public_tile(capture_id: CaptureId, build: Build, level: Level, name: str, who: Viewer) -> FileResponse:
        return tile(capture_id, "public", build, level, name)

    # --- the public, anonymised-only view -------------------------------------------
    def public_only() -> None:
        if not config.public:
            raise HTTPException(404, "this server has no public view (gigaface serve --public)")

    Public = Annotated[None, Depends(public_only)]

    @app.get("/public/captures", response_model=list[PublicCapture], responses={404: {"model": Problem}},
             tags=["public"])
    def public_captures(_: Public) -> list[PublicCapture]:
        listed = []
        for c in library().captures.all():
            url = _pyramid_url(f"/public/captures/{c.id}", capture_files(config.db, c.id).public_pyramid)
            if url is not None:  # file names may say where or who: a neutral name
                listed.append(PublicCapture(id=c.id, name=f"capture {c.id}", width=c.width, height=c.height, url=url))
        return listed

    @app.get("/public/captures/{capture_id:int}/{build}.dzi", response_class=FileResponse, tags=["public"],
             responses={404: {"model": Problem}, 200: {"content": {"application/xml": {}}}})
    def public_image_dzi(capture_id: CaptureId, build: Build, _: Public) -> FileResponse:
        return dzi(capture_id, "public", build)

    @app.get("/public/captures/{capture_id:int}/{build}_files/{level:int}/{name}", response_class=FileResponse,
             tags=["public"], responses={404: {"model": Problem}, 200: {"content": {"image/jpeg": {}}}})
    def public_image_tile(capture_id: CaptureId, build: Build, level: Level, name: str, _: Public) -> FileResponse:
        return tile(capture_id, "public", build, level, name)

    # --- the web pages -------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/public", include_in_schema=False)
    def public_page() -> FileResponse:
        public_only()
        return FileResponse(WEB / "public.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        if not SWAGGER_UI.is_dir():
            return HTMLResponse("Swagger UI is not installed: run `make setup` (npm ci in src/gigaface/service/web);"
                                " the API document is at /openapi.json", status_code=404)
        # Its script and style from this server: a page of the API should load nothing from elsewhere.
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="gigaface API",
                                   swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
                                   oauth2_redirect_url=None)

    vendor(app, "openseadragon", OPENSEADRAGON)
    vendor(app, "swagger-ui", SWAGGER_UI)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    policies = route_policies(app.router.routes, viewer=access, admin=admin)
    app.add_middleware(Gate, hosts=HostCheck(config.host, config.allow_hosts), authenticate=authenticate,
                       policy=lambda scope: policy_for(policies, app.router.routes, scope))
    return app


def vendor(app: FastAPI, name: str, folder: Path) -> None:
    """/static/vendor/NAME: a package from npm (src/gigaface/service/web/node_modules), or a clear 404."""
    if folder.is_dir():
        app.mount(f"/static/vendor/{name}", StaticFiles(directory=folder), name=name)
        return

    @app.get(f"/static/vendor/{name}/{{rest:path}}", include_in_schema=False)
    def not_installed(rest: str) -> Response:
        return Response(f"// {name} is not installed: run `make setup` (npm ci in src/gigaface/service/web)\n",
                        status_code=404, media_type="text/javascript")


def route_policies(routes, viewer: Callable, admin: Callable) -> dict[int, Policy]:
    """Each API route's Policy (by the route's id): who may call it (from its own dependencies: one place says
    a route is for admins) and the body it takes (`body_limit`)."""
    policies = {}
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        calls = _dependency_calls(route.dependant)
        role = "admin" if admin in calls else "viewer" if viewer in calls else None
        policies[id(route)] = Policy(role, getattr(route.endpoint, "body_limit", SMALL_BODY))
    return policies


def _dependency_calls(dependant) -> set:
    calls = set()
    for sub in dependant.dependencies:
        calls.add(sub.call)
        calls |= _dependency_calls(sub)
    return calls


def policy_for(policies: dict[int, Policy], routes, scope: dict) -> Policy:
    """The Policy of the route that will answer; any other /api path (a 404 or 405 to be)
    is for callers who said who they are, so that probing it tells a stranger nothing."""
    route = route_of(routes, scope)
    if id(route) in policies:
        return policies[id(route)]
    path = scope["path"]
    return Policy("viewer" if path.startswith("/api/") or path == "/api" else None)


def _local_caller(headers: Headers, key: str) -> Access:
    """`gigaface view`'s one user, known by this run's key: a page of another site cannot
    read it (it is in the URL's fragment, which browsers send nowhere)."""
    given = headers.get(KEY_HEADER, "")
    if not given or not secrets.compare_digest(given.encode("latin-1"), key.encode("latin-1")):
        raise HTTPException(401, "this viewer needs its key: open the address that `gigaface view` printed",
                            headers={"WWW-Authenticate": "GigafaceKey"})
    return Access("admin", "local user", "local")


def _caller(who: Access) -> str:
    return f"token {who.token_id}" if who.token_id is not None else who.mode


def _pyramid_url(prefix: str, dzi: str) -> str | None:
    build = pyramid_build(dzi)
    return f"{prefix}/{build}.dzi" if build is not None else None


def _without_folders(text: str | None, paths: list[str]) -> str | None:
    """`text` with each path reduced to its file name."""
    if text is None:
        return None
    for path in sorted(set(paths), key=len, reverse=True):
        text = text.replace(path, os.path.basename(path))
    return text


def _inside(data_dir: str, path: str, shown: str | None = None) -> str:
    """The real path of `path` (relative to the data folder, or absolute), if it is under the
    data folder. The error is the same whether or not the path exists: the server's other
    files are not an admin's to probe."""
    real = os.path.realpath(os.path.join(data_dir, path))
    if os.path.commonpath([real, data_dir]) != data_dir:
        raise HTTPException(403, f"{shown or path}: not in the server's data folder")
    return real


def _regular_file(real: str, shown: str, missing_ok: bool = False) -> None:
    """Refuse what is not a plain file before anything opens it: a FIFO blocks its reader
    forever, a device never ends."""
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise GigafaceError(f"{shown}: no such file") from None
    except OSError as exc:
        raise GigafaceError(f"{shown}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise GigafaceError(f"{shown}: is a directory, not an image")
    if not stat.S_ISREG(mode):
        raise GigafaceError(f"{shown}: not a regular file")


def _manifest_files(path: str) -> list[str]:
    """The frame files a manifest names, joined to its folder as `manifest.read_manifest`
    joins them, to be checked before it opens them. A manifest that does not parse gives
    none: read_manifest then says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(64 << 20))
    except (OSError, ValueError, RecursionError):
        return []
    entries = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return []
    base = os.path.dirname(path)
    return [os.path.join(base, e["file"]) for e in entries
            if isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"] and "\0" not in e["file"]]


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
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
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


def serve(config: Config, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Run the service on `sock`, a socket the caller bound (so that a refused address or
    port is found, and said, before anything starts)."""
    import uvicorn

    app = create_app(config)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=30))
    if on_ready is not None:
        def wait():
            while not server.started:
                time.sleep(0.05)
            on_ready()
        threading.Thread(target=wait, daemon=True).start()
    server.run(sockets=[sock])
