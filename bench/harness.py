"""Driving gigaface from outside, as a user would: the real `gigaface` command, tokens made
with it, a free port of 127.0.0.1, a real server in a subprocess, and waiting for a job.

The one copy of these for both the tests and the benchmarks: it lives in `bench` because
`python -m bench` must run without pytest, and the tests already import `bench` (its data
folder helper); tests/ keeps only what pytest alone needs.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
CLI = [sys.executable, "-c", "from gigaface.cli import main; main()"]
KEY_HEADER = "X-Gigaface-Key"
PRINTED_URL = re.compile(r"viewer for .*? at\s+(http://127\.0\.0\.1:\d+/\S*)", re.S)
KEY = re.compile(r"#key=([A-Za-z0-9_-]+)")


def run_cli(*args, cwd: Path | str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `gigaface` command in a subprocess (no terminal, so no progress bars)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def make_token(db: Path | str, role: str, name: str | None = None) -> str:
    """A new token from `gigaface token create`; the first one also makes the library."""
    done = run_cli("token", "create", db, "--name", name or role, "--role", role, "--create", timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"token create: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(client: httpx.Client, capture_id: int, timeout: float = 240, every: float = 0.25) -> dict:
    """Poll a capture until its job is done or failed; raises JobNotDone when time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        capture = client.get(f"/api/captures/{capture_id}").json()
        if capture["state"] in ("done", "failed"):
            return capture
        if time.monotonic() > deadline:
            raise JobNotDone(capture_id, timeout, capture)
        time.sleep(every)


class JobNotDone(AssertionError):
    """A capture's job did not end in time; `capture` is its last answer."""

    def __init__(self, capture_id: int, timeout: float, capture: dict):
        super().__init__(f"capture {capture_id} not done in {timeout:g} s: {capture}")
        self.capture = capture


class Server:
    """`gigaface <command> DB --port P ...` in a subprocess; stopped with SIGTERM like a
    service manager would.

    For `view`, `url_printed` is the address it printed (with this run's key in the
    fragment) and the client sends the key as a browser page would."""

    def __init__(self, db: Path | str, *args: str, command: str = "serve", token: str | None = None,
                 port: int | None = None):
        self.db, self.port = str(db), port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.key = self.url_printed = None
        extra = ["--no-browser"] if command == "view" else []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([*CLI, command, self.db, "--port", str(self.port), *extra, *map(str, args)],
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
            time.sleep(0.1)
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
        return wait_for(self.client, capture_id, timeout)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> str:
        """SIGTERM, as systemd or Ctrl-C would; returns what the server printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.reader.join(timeout=10)
        return self.output()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
