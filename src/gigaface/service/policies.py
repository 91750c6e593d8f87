"""Each route's Policy for the gate, read off the route itself: who may call it (its own
dependencies: one place says a route is for admins) and the body it takes (`body_limit`)."""
from __future__ import annotations

from collections.abc import Callable

from fastapi.routing import APIRoute

from gigaface.service.gate import SMALL_BODY, Policy, route_of


def body_limit(limit: int | str) -> Callable:
    """The largest request body a route takes: bytes, or the name of the server's Config
    field that holds them (the gate refuses more before the route runs); routes without
    one take SMALL_BODY."""
    def mark(endpoint: Callable) -> Callable:
        endpoint.body_limit = limit
        return endpoint
    return mark


def route_policies(routes, viewer: Callable, admin: Callable, config: object) -> dict[int, Policy]:
    """Each API route's Policy, by the route's id."""
    policies = {}
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        calls = _dependency_calls(route.dependant)
        role = "admin" if admin in calls else "viewer" if viewer in calls else None
        limit = getattr(route.endpoint, "body_limit", SMALL_BODY)
        policies[id(route)] = Policy(role, getattr(config, limit) if isinstance(limit, str) else limit)
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
