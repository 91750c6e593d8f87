"""Who is calling: an API token (gigaface serve) or `gigaface view`'s one local user, and
the route dependencies that say a route is for viewers or for admins (the gate reads them
to refuse a caller before any body is read)."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers

from gigaface.library.tokens import verify
from gigaface.library.audit_chain import local_user
from gigaface.service.state import Service

# `gigaface view`'s per-run secret travels in this header. A custom header also makes any
# cross-origin request a "preflighted" one, which this server never allows.
KEY_HEADER = "X-Gigaface-Key"

# Only for the OpenAPI document: the gate authenticates every /api request first.
bearer = HTTPBearer(auto_error=False, description="an API token from `gigaface token create`")


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

    @property
    def caller(self) -> str:
        """Whose event streams are counted together."""
        return f"token {self.token_id}" if self.token_id is not None else self.mode


def authenticate(service: Service, headers: Headers) -> Access:
    """Who is asking: the one answer, used by the gate before any body is read."""
    if service.config.local:
        return _local_caller(headers, service.config.local_key)
    scheme, _, secret = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "an API token is needed: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    token = verify(service.library(), secret.strip())
    if token is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    if token.last_used is None or time.time() - token.last_used > 60:
        service.library().tokens.touch(token.id)  # at most once a minute: a write costs the scan a lock
    return Access(token.role, token.name, "token", token.id)


def _local_caller(headers: Headers, key: str) -> Access:
    """`gigaface view`'s one user, known by this run's key: a page of another site cannot
    read it (it is in the URL's fragment, which browsers send nowhere)."""
    given = headers.get(KEY_HEADER, "")
    if not given or not secrets.compare_digest(given.encode("latin-1"), key.encode("latin-1")):
        raise HTTPException(401, "this viewer needs its key: open the address that `gigaface view` printed",
                            headers={"WWW-Authenticate": "GigafaceKey"})
    return Access("admin", "local user", "local")


def access(request: Request, _documented: Annotated[object, Depends(bearer)]) -> Access:
    who = getattr(request.state, "access", None)  # the gate's answer
    return who if who is not None else authenticate(request.app.state.service, request.headers)


def admin(who: Annotated[Access, Depends(access)]) -> Access:
    if who.role != "admin":
        raise HTTPException(403, "this needs an admin token")
    return who


Viewer = Annotated[Access, Depends(access)]
Admin = Annotated[Access, Depends(admin)]
