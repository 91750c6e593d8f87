"""A full disk and a folder that cannot be written: one clear line, exit 2, no 0-byte files,
and a scan cut short by a full disk resumes."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess

import pytest

from gigaface.library.store import Library
from bench.harness import CLI, run_cli
from tests.helpers import crowd, write_image


def _run_with_file_limit(limit: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI with no file allowed to grow over `limit` bytes: what a full disk does
    to a write, without needing root (SIGXFSZ ignored, so a write fails with EFBIG)."""
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=limit_files)


def _one_error_line(proc, *needles) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaface: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("disk") / "crowd.png",
                       crowd(900, 600, [(150, 150, 60), (450, 200, 90), (700, 420, 40)], seed=7))


@pytest.mark.parametrize("limit", [0, 2048], ids=["key-cannot-be-written", "library-cannot-be-written"])
def test_disk_full_when_creating_a_library_leaves_nothing(tmp_path, image, limit):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = _run_with_file_limit(limit, "scan", image, "--db", folder / "new.db", "--quiet")
    line = _one_error_line(proc, "new.db")
    assert "disk full" in line or "disk is full" in line
    assert os.listdir(folder) == []  # no 0-byte library or key, no temporary
    # and the next scan, with room, makes the library
    done = run_cli("scan", image, "--db", folder / "new.db", "--quiet")
    assert done.returncode == 0, done.stderr


def test_disk_full_mid_scan_says_so_and_the_scan_resumes(tmp_path, image):
    db = tmp_path / "lib.db"
    small = write_image(tmp_path / "small.png", crowd(300, 200, [(150, 100, 60)]))
    assert run_cli("scan", small, "--db", db, "--quiet").returncode == 0
    room = os.path.getsize(db) + 16_384  # a few band commits' worth of WAL
    proc = _run_with_file_limit(room, "scan", image, "--db", db, "--quiet")
    line = _one_error_line(proc, "could not write to the library", "--resume")
    assert "damaged" not in line
    library = Library(str(db))
    assert library.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(library.captures.all()) == 2 and library.captures.all()[1].stage != "done"
    library.close()
    resumed = run_cli("scan", image, "--db", db, "--quiet", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    (summary,) = json.loads(resumed.stdout)
    assert summary["capture"] == 2 and summary["faces"] == 3


# --- a folder that cannot be written ---------------------------------------------------
def _read_only_run(folder, *args) -> subprocess.CompletedProcess:
    """The CLI with `folder` bind-mounted read-only in a mount namespace of its own (a
    user namespace: no root needed, and root's way past permissions does not help it)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only mount")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here: {probe.stderr.decode().strip()}")
    quoted = " ".join(f"'{a}'" for a in map(str, [*CLI, *args]))
    script = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && exec {quoted}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=env)


def test_a_new_library_in_a_read_only_folder(tmp_path, image):
    folder = tmp_path / "ro"
    folder.mkdir()
    proc = _read_only_run(folder, "scan", image, "--db", folder / "lib.db", "--quiet")
    _one_error_line(proc, f"cannot write in {folder}", "Read-only")
    assert os.listdir(folder) == []


def test_an_existing_library_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    Library(str(folder / "lib.db"), create=True).close()
    proc = _read_only_run(folder, "captures", folder / "lib.db")
    line = _one_error_line(proc, "lib.db", f"cannot write in {folder}")
    assert "not a gigaface library" not in line
