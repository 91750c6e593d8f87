"""The REST service and the viewer's web server: FastAPI on uvicorn, one library per server.

    gigaface serve library.db            tokens required (admin / viewer), any interface
    gigaface view library.db             one local user, 127.0.0.1 only, a key per run

Scans run in a job process of their own (`runner.py`, `worker.py`), so the server keeps
answering while a scan holds the CPU. Reference photos for a search stay in memory and are
gone when the request ends. What is refused before a route runs (hosts, other sites'
pages, callers, body sizes) is in `gate.py`; the routes are in `routes/`, one module per
resource, and reach the server's state (`state.Service`) through `app.state.service`.
"""
from __future__ import annotations

import functools
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gigaface import __version__
from gigaface.errors import GigafaceError
from gigaface.service.auth import access, admin, authenticate
from gigaface.service.gate import Gate, HostCheck
from gigaface.service.policies import policy_for, route_policies
from gigaface.service.routes import captures, faces, governance, pages, public, search, status, tiles
from gigaface.service.state import Config, Service
from gigaface.service.uploads import keep_photos_in_memory

__all__ = ["Config", "create_app"]
ROUTERS = (status, captures, faces, search, governance, tiles, public, pages)  # in the API document's order


def create_app(config: Config) -> FastAPI:
    service = Service(config)
    keep_photos_in_memory()
    # No redirects to a slash-less path: a probe like ".../10/../" gets a plain 404, not a
    # redirect that echoes it back.
    # Swagger UI is served from this server (see routes/pages.py), never from a CDN.
    app = FastAPI(title="gigaface", version=__version__, lifespan=lambda _app: service.running(),
                  redirect_slashes=False, docs_url=None, redoc_url=None,
                  description="Faces in gigapixel crowd images: captures, faces, search, exports, deep zoom.",
                  exception_handlers={StarletteHTTPException: _http_error, sqlite3.DatabaseError: _damaged,
                                      GigafaceError: _user_error})
    app.state.service = service
    for module in ROUTERS:
        # The routes themselves, not include_router: the gate finds each request's route
        # (and its Policy) among the app's own routes, and newer FastAPI's include_router
        # puts a router's routes behind one opaque route.
        app.router.routes.extend(module.router.routes)
    pages.mount_static(app)
    policies = route_policies(app.router.routes, viewer=access, admin=admin, config=config)
    app.add_middleware(Gate, hosts=HostCheck(config.host, config.allow_hosts),
                       authenticate=functools.partial(authenticate, service),
                       policy=lambda scope: policy_for(policies, app.router.routes, scope))
    return app


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list them all.
        # A literal path ("/api/captures/upload") beats a template that also matches it.
        routes = [r for r in request.app.routes if isinstance(r, APIRoute) and r.path_regex.match(request.url.path)]
        routes = [r for r in routes if "{" not in r.path] or routes
        allowed = sorted({m for r in routes for m in r.methods})
        return JSONResponse({"detail": "method not allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, exc)


async def _damaged(_request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
    # Pages of the library went bad under the server: say so, and keep serving the rest.
    return JSONResponse({"detail": f"the library file is damaged ({exc})"}, status_code=503)


async def _user_error(_request: Request, exc: GigafaceError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)
