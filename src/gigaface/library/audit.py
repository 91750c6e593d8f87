"""The audit log: one row per search (and per consent added or removed), never changed,
each row chained to the one before it (audit_chain.py)."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from gigaface.errors import GigafaceError
from gigaface.library import audit_chain
from gigaface.library.audit_chain import AuditVerdict
from gigaface.library.records import AuditEntry, AuditLog
from gigaface.library.schema import AUDIT_COLUMNS

if TYPE_CHECKING:
    from gigaface.library.store import Library


class AuditStore:
    """`library.audit`: the searches table and the chain's head in meta."""

    def __init__(self, library: Library):
        self._lib = library

    def record_search(self, who: str, purpose: str, capture_ids: Iterable[int], reference: np.ndarray,
                      results: int, matches: int) -> None:
        plain = np.asarray(reference, np.float32).tobytes()
        self._lib.key()  # before the transaction: a clear error without the key
        with self._lib.transaction():
            self.append(who, purpose, capture_ids, plain, results, matches)

    def append(self, who: str, purpose: str, capture_ids: Iterable[int], reference: bytes,
               results: int, matches: int) -> None:
        """One row of the log, inside the caller's write transaction: linked to the row
        before it, and the head moved on. A head that does not verify, or names another
        last row, stays as it is: a broken log stays broken, and `audit` keeps saying so."""
        db = self._lib.db
        key = self._lib.key().audit_key
        last = db.execute("SELECT id, chain FROM searches ORDER BY id DESC LIMIT 1").fetchone()
        previous = (last[1] or "") if last else audit_chain.GENESIS
        row = (last[0] + 1 if last else 1, time.time(), who, purpose,
               json.dumps(sorted(int(c) for c in capture_ids)), hashlib.sha256(reference).hexdigest(),
               int(results), int(matches))
        chain = audit_chain.row_mac(key, previous, row)
        db.execute(f"INSERT INTO searches ({AUDIT_COLUMNS}, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, chain))
        head = audit_chain.read_head(key, self._lib.meta(audit_chain.HEAD))
        if head is not None and head[1] == previous:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       (audit_chain.HEAD, audit_chain.make_head(key, head[0] + 1, chain)))

    def log(self, since: float | None = None, limit: int | None = None) -> AuditLog:
        """The log's entries (from `since`, at most `limit`), with the verdict on its whole
        chain in `.verdict`."""
        sql = f"SELECT {AUDIT_COLUMNS} FROM searches"
        args: list = []
        if since is not None:
            sql += " WHERE at >= ?"
            args.append(since)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        entries = [AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7])
                   for r in self._lib.db.execute(sql, args)]
        return AuditLog(entries, self.verify())

    def verify(self) -> AuditVerdict:
        """Whether the whole log is as gigaface wrote it (see audit_chain.py for what this
        cannot see). Without the key it cannot be checked, and says so."""
        try:
            key = self._lib.key()
        except GigafaceError as exc:
            return AuditVerdict(False, 0, f"cannot be verified: {exc}")
        db = self._lib.db
        db.execute("BEGIN")  # rows and head read from one snapshot
        try:
            rows = db.execute(f"SELECT {AUDIT_COLUMNS}, chain FROM searches ORDER BY id").fetchall()
            head = self._lib.meta(audit_chain.HEAD)
        finally:
            db.execute("COMMIT")
        return audit_chain.verify(key.audit_key, [tuple(r) for r in rows], head)
