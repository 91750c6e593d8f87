"""Driving gigaface from outside, as a user would: the real `gigaface` command, tokens made
with it, a free port of 127.0.0.1, a real server in a subprocess, and waiting for a job.

The one copy of these for both the tests and the benchmarks: it lives in `bench` because
`python -m bench` must run without pytest, and the tests already import `bench` (its data
folder helper); tests/ keeps only what pytest alone needs.
"""
from __future__ import annotations

import atexit
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
CLI = [sys.executable, "-c", "from gigaface.cli import main; main()"]
KEY_HEADER = "X-Gigaface-Key"
PRINTED_URL = re.compile(r"viewer for .*? at\s+(http://127\.0\.0\.1:\d+/\S*)", re.S)
KEY = re.compile(r"#key=([A-Za-z0-9_-]+)")


def run_cli(*args, cwd: Path | str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `gigaface` command in a process of its own, with no terminal (so no progress
    bars): a new interpreter, or in the test run a fork of a preloaded one (fork_commands)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    if _forked is not None:
        return _run_forked([str(a) for a in args], env, cwd, timeout)
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


# What a command imports before it parses its arguments, less the command-line package itself
# (its rich consoles read the environment when made): about 0.3 s of CPU a process.
# gigaface.api brings the engine, library, privacy and search with numpy, OpenCV and pyvips.
PRELOAD = ["gigaface.api", "typer", "rich.console"]
_forked = None


def fork_commands() -> None:
    """From now on in this process, `run_cli` starts each command as a fork of a process that
    has already imported what every command imports (multiprocessing's forkserver), instead
    of a new interpreter: still a process of its own with its own exit code, output, working
    folder and environment, running the same `main()`. For the test run, whose few hundred
    commands spent a fifth of its CPU importing; the benchmarks time the command as users
    start it, so they keep `subprocess`."""
    global _forked
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    _forked = context


def _run_forked(args: list[str], env: dict, cwd, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="gigaface-cli-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = _forked.Process(target=_command, args=(args, env, None if cwd is None else str(cwd), out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([*CLI, *args], timeout)
        with open(out, encoding="utf-8", errors="replace") as f_out, open(err, encoding="utf-8", errors="replace") as f_err:
            return subprocess.CompletedProcess([*CLI, *args], process.exitcode, f_out.read(), f_err.read())


def _command(args: list[str], env: dict, cwd: str | None, out: str, err: str) -> None:
    """In the forked process: the command's folder, environment, output files and argv, then its main()."""
    if cwd is not None:
        os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["-c", *args]
    from gigaface.cli import main

    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception:  # a crash: its traceback and exit code 1, as from the interpreter
        traceback.print_exc()
        code = 1
    # What an interpreter's exit does and multiprocessing's os._exit does not: free what the
    # command left behind, so that its library connections close (SQLite checkpoints and
    # removes the -wal and -shm files when the last one does), and run its exit handlers.
    gc.collect()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


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


class RayCluster:
    """A real Ray cluster of `nodes` on this machine, for the cluster tests and benchmarks:
    each node a `ray start --block` process of our own, in a session of its own, so stopping
    it (SIGTERM, which drains and stops what it started; then SIGKILL to its process group)
    touches only the processes it started. Never `ray stop`, which stops every Ray process
    on the machine.

    Ray names a node by the machine's address even when told 127.0.0.1 (its
    `resolve_ip_for_localhost`), so the nodes talk over this machine's own address: no
    traffic leaves it. Usage statistics are off, the dashboard is not started, and objects
    never spill to disk (band pixels and face regions stay in RAM).

    `nodes` is a list of dicts: cpus, and optionally gpus (declared: Ray schedules on a GPU
    it is told of, whether or not there is one) and hide (a folder that node does not see:
    it runs in a mount namespace of its own with an empty tmpfs over that folder, as a
    machine without the network filesystem would)."""

    STORE = 200_000_000  # bytes of object store per node: small, this machine is shared

    def __init__(self, nodes: list[dict], store: int = STORE):
        import tempfile

        self.temp = tempfile.mkdtemp(prefix="gf-ray-", dir="/tmp")  # Ray's socket paths must stay short
        # The client server (ray://) starts a Python process per driver and gives it 30 s to
        # answer: too short on a loaded 2-core machine.
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                        RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="180")
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.address = self.client_address = ""
        client_port = free_port()  # Ray's client server (ray://), not its default 10001: others may run one
        try:
            head, *others = nodes
            self._start(["--head", "--port", "0", "--include-dashboard", "false", "--temp-dir", self.temp,
                         "--ray-client-server-port", str(client_port),
                         "--system-config", '{"automatic_object_spilling_enabled": false}'], head, store)
            self.address = self._head_address()
            self.client_address = f"ray://{self.address.rsplit(':', 1)[0]}:{client_port}"
            for node in others:
                self._start(["--address", self.address], node, store)
            self._wait_for_nodes(len(nodes))
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], node: dict, store: int) -> None:
        log = Path(self.temp) / f"node-{len(self.processes)}.log"
        command = [str(Path(sys.executable).with_name("ray")), "start", "--block", *args,
                   "--num-cpus", str(node["cpus"]), "--num-gpus", str(node.get("gpus", 0)),
                   "--object-store-memory", str(store), "--disable-usage-stats",
                   # Objects that do not fit the store are allocated beside it: in RAM too.
                   "--object-spilling-directory", "/dev/shm"]
        if node.get("hide"):  # unshare and sh exec in turn: the PID stays the ray start's
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs -o size=1m hidden "$1" && shift && exec "$@"', "sh", str(node["hide"]), *command]
        with open(log, "w") as out:
            self.processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                   stdin=subprocess.DEVNULL, start_new_session=True))
        self.logs.append(log)

    def _head_address(self, timeout: float = 90) -> str:
        marker = Path(self.temp) / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return marker.read_text().strip()
            if self.processes[0].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the Ray head did not start: {self.logs[0].read_text()[-2000:]}")

    def _wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        """Every node's raylet registered (a look at the GCS from a short-lived driver)."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                 "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process, log in zip(self.processes, self.logs):
                if process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited: {log.read_text()[-2000:]}")
            done = subprocess.run([sys.executable, "-c", probe, self.address], capture_output=True, text=True,
                                  env=self.env, timeout=60, cwd=self.temp)
            if done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout.strip()) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes in {timeout:g} s")

    def worker_pids(self, name: str = "FaceWorker") -> list[int]:
        """PIDs of the actor processes of class `name` running under this cluster's nodes
        (Ray titles an actor's process `ray::Class` or `ray::Class.method`)."""
        ours = set()
        for process in self.processes:
            ours |= _descendants(process.pid)
        found = []
        for pid in sorted(ours):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::{name}"):
                found.append(pid)
        return found

    def stop(self) -> None:
        for process in reversed(self.processes):  # the head last
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever of its own it left behind
            except ProcessLookupError:
                pass
            process.wait()
        import shutil

        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _descendants(pid: int) -> set[int]:
    """`pid`'s child processes, their children, and so on (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
