"""A real `gigaface serve` / `gigaface view` in a subprocess on a free port of 127.0.0.1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.helpers import CLI, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_token(db: Path | str, role: str, name: str | None = None) -> str:
    # --create: most tests start their library with its first token
    done = run_cli("token", "create", db, "--name", name or role, "--role", role, "--create")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Server:
    """`gigaface <command> DB --port P ...`; stopped with SIGTERM like a service manager would."""

    def __init__(self, db: Path | str, *args: str, command: str = "serve", token: str | None = None):
        self.db, self.port = str(db), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        extra = ["--no-browser"] if command == "view" else []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([*CLI, command, self.db, "--port", str(self.port), *extra, *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError("server did not start in 60 s")
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=120)

    def wait_for(self, capture_id: int, timeout: float = 240) -> dict:
        """Poll the capture until its job is done (or failed); returns the capture."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            capture = self.client.get(f"/api/captures/{capture_id}").json()
            if capture["state"] in ("done", "failed"):
                return capture
            time.sleep(0.25)
        raise AssertionError(f"capture {capture_id} not done in {timeout} s: {capture}")

    def stop(self) -> str:
        """SIGTERM, as systemd or Ctrl-C would; returns what the server printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.stdout.read() if self.process.stdout else ""

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
