"""API tokens: random secrets shown once, kept only as their SHA-256.

A token carries 256 random bits, so a fast hash is enough: there is nothing to guess
that a slow password hash would protect.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING

from gigaface.errors import GigafaceError
from gigaface.library.records import Token

if TYPE_CHECKING:
    from gigaface.library.store import Library

ROLES = ("admin", "viewer")  # admin: everything; viewer: look and search
PREFIX = "gf_"
_COLUMNS = "id, name, role, created_at, last_used, revoked"


class TokenStore:
    """`library.tokens`: the tokens table (hashes only)."""

    def __init__(self, library: Library):
        self._lib = library

    def add(self, name: str, role: str, digest: str) -> Token:
        with self._lib.transaction() as db:
            cur = db.execute("INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                             (name, role, digest, time.time()))
        return next(t for t in self.all() if t.id == cur.lastrowid)

    def all(self) -> list[Token]:
        rows = self._lib.db.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY id")
        return [Token(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def by_hash(self, digest: str) -> Token | None:
        row = self._lib.db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE hash = ? AND revoked = 0",
                                   (digest,)).fetchone()
        return Token(row[0], row[1], row[2], row[3], row[4], False) if row else None

    def touch(self, token_id: int) -> None:
        with self._lib.transaction() as db:
            db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (time.time(), token_id))

    def revoke(self, token_id: int) -> None:
        with self._lib.transaction() as db:
            cur = db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))
        if not cur.rowcount:
            raise GigafaceError(f"{self._lib.path}: no token {token_id}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(library: Library, name: str, role: str) -> tuple[Token, str]:
    """A new token; returns its record and the secret, which is not stored anywhere."""
    if role not in ROLES:
        raise GigafaceError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name.strip():
        raise GigafaceError("give the token a name (who or what uses it)")
    secret = PREFIX + secrets.token_urlsafe(32)
    return library.tokens.add(name.strip(), role, digest(secret)), secret


def verify(library: Library, secret: str) -> Token | None:
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    return library.tokens.by_hash(digest(secret))
