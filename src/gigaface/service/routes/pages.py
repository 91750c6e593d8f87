"""The web pages: the viewer, the public view, the API's Swagger page, and their static
files (the npm packages among them are served from here, never from a CDN)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from gigaface.service.routes.public import public_only

WEB = Path(__file__).parent.parent / "web"
OPENSEADRAGON = WEB / "node_modules" / "openseadragon" / "build" / "openseadragon"
SWAGGER_UI = WEB / "node_modules" / "swagger-ui-dist"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index_page() -> FileResponse:
    return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/public")
def public_page(request: Request) -> FileResponse:
    public_only(request)
    return FileResponse(WEB / "public.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def api_docs(request: Request) -> HTMLResponse:
    if not SWAGGER_UI.is_dir():
        return HTMLResponse("Swagger UI is not installed: run `make setup` (npm ci in src/gigaface/service/web);"
                            " the API document is at /openapi.json", status_code=404)
    # Its script and style from this server: a page of the API should load nothing from elsewhere.
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="gigaface API",
                               swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                               swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                               swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
                               oauth2_redirect_url=None)


def mount_static(app: FastAPI) -> None:
    """/static: the pages' own files, and /static/vendor/NAME for each npm package."""
    _vendor(app, "openseadragon", OPENSEADRAGON)
    _vendor(app, "swagger-ui", SWAGGER_UI)
    app.mount("/static", StaticFiles(directory=WEB), name="static")


def _vendor(app: FastAPI, name: str, folder: Path) -> None:
    """/static/vendor/NAME: a package from npm (src/gigaface/service/web/node_modules), or a clear 404."""
    if folder.is_dir():
        app.mount(f"/static/vendor/{name}", StaticFiles(directory=folder), name=name)
        return

    @app.get(f"/static/vendor/{name}/{{rest:path}}", include_in_schema=False)
    def not_installed(rest: str) -> Response:
        return Response(f"// {name} is not installed: run `make setup` (npm ci in src/gigaface/service/web)\n",
                        status_code=404, media_type="text/javascript")
