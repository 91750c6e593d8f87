"""The service's background jobs: one row per capture, its state and progress."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gigaface.library.records import Job

if TYPE_CHECKING:
    from gigaface.library.store import Library

_COLUMNS = "capture_id, state, stage, done, total, faces, error, owned_file, updated_at"
_FIELDS = {"state", "stage", "done", "total", "faces", "error"}  # what update() may change


class JobStore:
    """`library.jobs`: the jobs table."""

    def __init__(self, library: Library):
        self._lib = library

    def put(self, capture_id: int, state: str = "queued", stage: str = "detect",
            owned_file: str | None = None) -> None:
        with self._lib.transaction() as db:
            db.execute(
                "INSERT INTO jobs (capture_id, state, stage, owned_file, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(capture_id) DO UPDATE SET state = excluded.state, stage = excluded.stage,"
                " error = NULL, done = 0, total = 0,"
                " owned_file = COALESCE(excluded.owned_file, jobs.owned_file), updated_at = excluded.updated_at",
                (capture_id, state, stage, owned_file, time.time()))

    def update(self, capture_id: int, **fields) -> None:
        if not fields or set(fields) - _FIELDS:
            raise ValueError(f"job fields: {sorted(_FIELDS)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lib.transaction() as db:
            db.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE capture_id = ?",
                       (*fields.values(), time.time(), capture_id))

    def get(self, capture_id: int) -> Job | None:
        row = self._lib.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE capture_id = ?", (capture_id,)).fetchone()
        return Job(*row) if row else None

    def all(self, states: Iterable[str] | None = None) -> list[Job]:
        rows = self._lib.db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY capture_id").fetchall()
        wanted = set(states) if states is not None else None
        return [Job(*r) for r in rows if wanted is None or r[1] in wanted]
