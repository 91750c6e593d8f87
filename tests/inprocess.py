"""The service in this process: `create_app` behind Starlette's TestClient.

The same routes, gate and job runner (scans still run in job processes of their own) as
`gigaface serve`, without starting uvicorn in a subprocess for every test. What is about a
real socket or a real server process (bodies refused before they are read, streams held
open, restarts, printed URLs) stays on bench.harness.Server.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi.testclient import TestClient

from bench.harness import KEY_HEADER, wait_for
from gigaface.service.app import Config, create_app
from gigaface.service.gate import host_form


class App:
    """A server as `gigaface serve DB [--public] [--data-dir D] ...` (or, with local=True,
    `gigaface view DB`) would make it, reached at http://127.0.0.1:PORT; a context manager
    whose exit stops its jobs as SIGTERM stops a real one.

    `client` sends `token` (or, for a local one, the run's key); `bare(...)` is a client
    that sends only the headers given."""

    def __init__(self, db: Path | str, *, token: str | None = None, local: bool = False, public: bool = False,
                 data_dir: Path | str | None = None, max_upload_mb: int | None = None,
                 allow_hosts: tuple[str, ...] = (), port: int = 8765):
        self.db, self.port = str(db), port
        self.url = f"http://127.0.0.1:{port}"
        self.key = secrets.token_urlsafe(24) if local else None
        options = {} if max_upload_mb is None else {"max_upload": max_upload_mb << 20}
        self.app = create_app(Config(self.db, local=local, local_key=self.key, public=public,
                                     data_dir=os.path.realpath(data_dir) if data_dir is not None else None,
                                     allow_hosts=tuple(map(host_form, allow_hosts)), **options))
        self.headers = {KEY_HEADER: self.key} if local else {"Authorization": f"Bearer {token}"} if token else {}
        # Entered: its lifespan (the job runner, the purge) runs until stop().
        self.client = TestClient(self.app, base_url=self.url, headers=self.headers).__enter__()

    def bare(self, **headers: str) -> TestClient:
        """Another client of the same app (not entered: the running one's lifespan is shared)."""
        return TestClient(self.app, base_url=self.url, headers=headers)

    def wait_for(self, capture_id: int, timeout: float = 240) -> dict:
        return wait_for(self.client, capture_id, timeout)

    def stop(self) -> None:
        self.client.__exit__(None, None, None)

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
