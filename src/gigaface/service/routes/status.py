"""Whether the server is up, and who the caller is."""
from __future__ import annotations

from fastapi import APIRouter, Request

from gigaface import __version__
from gigaface.service.auth import Viewer
from gigaface.service.schemas import ERRORS, Health, Me

router = APIRouter(tags=["service"])


@router.get("/api/health", response_model=Health)
def health(request: Request) -> Health:
    return Health(status="ok", version=__version__, public=request.app.state.service.config.public)


@router.get("/api/me", response_model=Me, responses=ERRORS)
def me(who: Viewer) -> Me:
    return Me(role=who.role, name=who.name, mode=who.mode)
