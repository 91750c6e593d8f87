"""Consents: people who asked to stay visible in a capture's exports. Adding or removing one
identifies a person, so each is logged in the audit log in its own transaction."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from gigaface.errors import GigafaceError
from gigaface.library.audit_chain import local_user
from gigaface.library.faces import EMBEDDING_DIM
from gigaface.library.records import Consent

if TYPE_CHECKING:
    from gigaface.library.store import Library


class ConsentStore:
    """`library.consents`: the consents table (templates sealed like the faces')."""

    def __init__(self, library: Library):
        self._lib = library

    def add(self, capture_id: int, name: str, note: str, embedding: np.ndarray, who: str | None = None,
            compared: int = 0, shown: int = 0) -> Consent:
        """A consent, and its entry in the audit log (purpose consent-add: `compared` faces of
        the capture, `shown` revealed by it) in the same transaction: adding one identifies
        a person, so it is never done unlogged."""
        plain = np.asarray(embedding, np.float32).tobytes()
        sealed = self._lib.key().seal(plain, b"consent")
        with self._lib.transaction() as db:
            cur = db.execute("INSERT INTO consents (capture_id, name, note, embedding, created_at)"
                             " VALUES (?, ?, ?, ?, ?)", (capture_id, name, note, sealed, time.time()))
            self._lib.audit.append(who or local_user(), "consent-add", [capture_id], plain, compared, shown)
        return next(c for c in self.all(capture_id) if c.id == cur.lastrowid)

    def all(self, capture_id: int | None = None) -> list[Consent]:
        where, args = ("WHERE capture_id = ?", (capture_id,)) if capture_id is not None else ("", ())
        rows = self._lib.db.execute(
            f"SELECT id, capture_id, name, note, created_at FROM consents {where} ORDER BY id", args)
        return [Consent(*r) for r in rows]

    def embeddings(self, capture_id: int) -> tuple[list[Consent], np.ndarray]:
        consents = self.all(capture_id)
        if not consents:
            return [], np.zeros((0, EMBEDDING_DIM), np.float32)
        key = self._lib.key()
        rows = dict(self._lib.db.execute("SELECT id, embedding FROM consents WHERE capture_id = ?", (capture_id,)))
        return consents, np.stack([np.frombuffer(key.unseal(rows[c.id], b"consent"), np.float32) for c in consents])

    def remove(self, consent_id: int, who: str | None = None) -> Consent:
        """Withdraw a consent, logged (purpose consent-remove, with the same reference hash
        as its consent-add entry) in the same transaction."""
        found = [c for c in self.all() if c.id == consent_id]
        if not found:
            raise GigafaceError(f"{self._lib.path}: no consent {consent_id}")
        key = self._lib.key()
        with self._lib.transaction() as db:
            sealed = db.execute("SELECT embedding FROM consents WHERE id = ?", (consent_id,)).fetchone()[0]
            db.execute("DELETE FROM consents WHERE id = ?", (consent_id,))
            self._lib.audit.append(who or local_user(), "consent-remove", [found[0].capture],
                                   key.unseal(sealed, b"consent"), 0, 0)
        return found[0]
