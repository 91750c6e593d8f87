"""A real `gigaface serve` / `gigaface view` in a subprocess on a free port of 127.0.0.1."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import CLI, run_cli

KEY_HEADER = "X-Gigaface-Key"
PRINTED_URL = re.compile(r"viewer for .*? at\s+(http://127\.0\.0\.1:\d+/\S*)", re.S)
KEY = re.compile(r"#key=([A-Za-z0-9_-]+)")


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
    """`gigaface <command> DB --port P ...`; stopped with SIGTERM like a service manager would.

    For `view`, `url_printed` is the address it printed (with this run's key in the
    fragment) and the client sends the key as a browser page would."""

    def __init__(self, db: Path | str, *args: str, command: str = "serve", token: str | None = None,
                 port: int | None = None):
        self.db, self.port = str(db), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.key = self.url_printed = None
        extra = ["--no-browser"] if command == "view" else []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([*CLI, command, self.db, "--port", str(self.port), *extra, *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)  # the pipe must never fill up
        self.reader.start()
        self._wait_until_up(command)
        if command == "view" and self.key:
            self.headers = {KEY_HEADER: self.key}
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=120)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def _wait_until_up(self, command: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.reader.join(timeout=5)
                raise RuntimeError(f"server exited: {''.join(self.lines)}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200 and self._printed(command):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start in 60 s")

    def _printed(self, command: str) -> bool:
        if command != "view":
            return True
        found = PRINTED_URL.search("".join(self.lines))
        if found:
            self.url_printed = found.group(1)
            key = KEY.search(self.url_printed)
            self.key = key.group(1) if key else None
        return bool(found)

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
        self.reader.join(timeout=10)
        return "".join(self.lines)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
