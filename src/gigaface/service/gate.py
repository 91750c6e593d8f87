"""The service's front door: what is refused before any route runs or any body is read.

In order: a Host this server does not answer for (421: DNS rebinding), a state-changing
request from another site (403: cross-site request forgery), a caller who cannot say who
they are (401) or may not use the route (403), a body over the route's limit (413).
FastAPI reads and parses a request's body before it runs the route's dependencies, so
these checks live in an ASGI middleware in front of it.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# What Sec-Fetch-Site says of a request a page of another site made (sub-domains included).
FOREIGN_SITES = ("cross-site", "same-site")
SMALL_BODY = 64 << 10  # any request but photos and uploads: a capture registration is ~200 bytes
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::\d{1,5})?")


def host_form(address: str) -> str:
    """How a Host header names an address: IPv6 literals in brackets, names in lower case."""
    address = address.strip().lower()
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


class HostCheck:
    """The Host names a server answers for: loopback, the address it is bound to and names
    given with --allow-host. A server bound to every interface also answers for any IP
    literal: DNS rebinding needs a name the attacker controls, never a bare address."""

    def __init__(self, bound: str, extra: Iterable[str] = ()):
        self.names = {*LOOPBACK_NAMES, *(host_form(n) for n in extra)}
        self.any_ip = bound.strip() in WILDCARDS
        if not self.any_ip:
            self.names.add(host_form(bound))

    def allows(self, header: str | None) -> bool:
        match = _HOST.fullmatch((header or "").strip().lower())
        if match is None:
            return False
        name = match.group(1)
        return name in self.names or (self.any_ip and _is_ip(name))


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names this very server (scheme's default port allowed)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null": a sandboxed frame, a file: page, a redirect across origins
    default = ":80" if parts.scheme == "http" else ":443"

    def bare(netloc: str) -> str:
        netloc = netloc.lower()
        return netloc[: -len(default)] if netloc.endswith(default) else netloc

    return bare(parts.netloc) == bare(host.strip())


def from_another_site(method: str, headers: Headers) -> bool:
    """A state-changing request sent by a page of another origin. Browsers send Origin with
    every cross-origin POST and Sec-Fetch-Site with every request; programs send neither,
    and need a token (or, for `gigaface view`, the run's key) anyway."""
    if method not in UNSAFE_METHODS:
        return False
    if headers.get("sec-fetch-site", "").lower() in FOREIGN_SITES:
        return True
    origin = headers.get("origin")
    return origin is not None and not same_origin(origin, headers.get("host", ""))


@dataclass(frozen=True)
class Policy:
    """What a route asks of a request before it runs: `role` None (anyone), "viewer" or
    "admin", and the largest body it takes."""
    role: str | None
    body: int = SMALL_BODY


NO_BODY = Policy(None, 0)


def size_text(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def _refusal(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class Gate:
    """ASGI middleware: host, origin, caller and body size, in that order, before the app.

    `authenticate(headers)` says who the caller is (or raises HTTPException 401) and runs
    in the thread pool, as it reads the library; its answer is left in
    `scope["state"]["access"]` for the routes. `policy(scope)` gives the route's Policy.
    """

    def __init__(self, app, hosts: HostCheck, authenticate: Callable[[Headers], object],
                 policy: Callable[[dict], Policy]):
        self.app, self.hosts, self.authenticate, self.policy = app, hosts, authenticate, policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refused, policy = await self._check(scope, headers)
        if refused is not None:
            return await refused(scope, receive, send)
        await self.app(scope, _limited(receive, policy.body), send)

    async def _check(self, scope, headers: Headers) -> tuple[JSONResponse | None, Policy]:
        if not self.hosts.allows(headers.get("host")):
            return _refusal(421, "this server does not answer for that Host name"
                                 " (gigaface serve --allow-host NAME adds one)"), NO_BODY
        if from_another_site(scope["method"], headers):
            return _refusal(403, "a page of another site may not change anything here"), NO_BODY
        policy = self.policy(scope)
        if policy.role is not None:
            try:
                who = await run_in_threadpool(self.authenticate, headers)
            except HTTPException as exc:
                return _refusal(exc.status_code, exc.detail, exc.headers), policy
            if policy.role == "admin" and getattr(who, "role", None) != "admin":
                return _refusal(403, "this needs an admin token"), policy
            scope.setdefault("state", {})["access"] = who
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > policy.body):
            return _refusal(413, f"request body over {size_text(policy.body)}"), policy
        return None, policy


def _limited(receive, limit: int) -> Callable[[], Awaitable[dict]]:
    """`receive`, refusing a body (announced or chunked) that grows past `limit`."""
    seen = 0

    async def counted() -> dict:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise HTTPException(413, f"request body over {size_text(limit)}")
        return message

    return counted


def route_of(routes, scope) -> object | None:
    """The route that will answer `scope` (method and path), as the router will pick it."""
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None
