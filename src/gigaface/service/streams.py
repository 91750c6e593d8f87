"""Server-sent event streams: how many each caller (and everyone) may hold open.

Streams are cheap (async) but each polls the library: a few per caller is all a page
needs, and the total keeps a set of viewer tokens from piling up.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

MAX_STREAMS_PER_CALLER = 4
MAX_STREAMS = 32


class StreamSlots:
    """How many event streams each caller (and everyone) has open; 429 beyond the caps."""

    def __init__(self, per_caller: int = MAX_STREAMS_PER_CALLER, total: int = MAX_STREAMS):
        self.per_caller, self.total = per_caller, total
        self.open: Counter[str] = Counter()
        self.lock = threading.Lock()

    def take(self, caller: str) -> Callable[[], None]:
        """A slot for `caller`; returns the function that gives it back (once)."""
        with self.lock:
            if self.open[caller] >= self.per_caller or sum(self.open.values()) >= self.total:
                raise HTTPException(429, f"too many open event streams (at most {self.per_caller} per caller,"
                                         f" {self.total} in all): close one, or poll GET /api/captures/ID",
                                    headers={"Retry-After": "15"})
            self.open[caller] += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self.lock:
                if not given_back.is_set():
                    given_back.set()
                    self.open[caller] -= 1
        return give_back


class SlotStream(StreamingResponse):
    """A streamed response that gives its slot back however it ends (finished, client gone,
    cancelled, or never started)."""

    def __init__(self, content, give_back: Callable[[], None], **options):
        super().__init__(content, **options)
        self.give_back = give_back

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.give_back()
