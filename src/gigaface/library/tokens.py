"""API tokens: random secrets shown once, kept only as their SHA-256.

A token carries 256 random bits, so a fast hash is enough: there is nothing to guess
that a slow password hash would protect.
"""
from __future__ import annotations

import hashlib
import secrets

from gigaface.errors import GigafaceError
from gigaface.library.store import Library, Token

ROLES = ("admin", "viewer")  # admin: everything; viewer: look and search
PREFIX = "gf_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(library: Library, name: str, role: str) -> tuple[Token, str]:
    """A new token; returns its record and the secret, which is not stored anywhere."""
    if role not in ROLES:
        raise GigafaceError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name.strip():
        raise GigafaceError("give the token a name (who or what uses it)")
    secret = PREFIX + secrets.token_urlsafe(32)
    return library.add_token(name.strip(), role, digest(secret)), secret


def verify(library: Library, secret: str) -> Token | None:
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    return library.token_by_hash(digest(secret))
