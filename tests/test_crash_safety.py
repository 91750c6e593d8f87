"""SIGKILL at random points of a scan, a blur and a service job, then the run that finishes.

A kill -9 cannot be caught: whatever the process had not committed or renamed into place is
simply left there. After each kill the library must still open, the next run must finish
with the same faces as a run that was never interrupted, and no output may look finished
when it is not. The whole process group is killed, embedding workers too, as the OOM
killer or a power cut would.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from gigaface.library.store import Library
from gigaface.engine.plan import settings_for
from gigaface.engine.content_key import capture_key
from gigaface.engine.manifest import frames_of
from bench.harness import CLI, run_cli
from tests.helpers import crowd, write_image


SEED = 20250601
KILLS = 3
# 15 faces of 40-110 px on a 3000 x 2000 crowd: a full scan takes seconds on two cores.
FACES = [(200 + 560 * (i % 5), 220 + 600 * (i // 5), 40 + 5 * i) for i in range(15)]
# Temporary outputs: .DEST.gigaface-XXXXXXXX (gigaface.atomic), or .gigaface-XXXXXXXX as before.
TEMP = re.compile(r"^\.(.+\.)?gigaface-[a-z0-9_]{8}")
WORKER = [sys.executable, "-m", "gigaface.service.worker"]


def start(args: list, cwd: Path) -> subprocess.Popen:
    """A command in a session of its own, so that killing its group kills its workers too."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([*map(str, args)], cwd=cwd, env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, timeout: float = 120) -> bool:
    """SIGKILL the whole group `delay` s after `ready()` first holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.01)
    end = time.monotonic() + delay
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # Workers are children of the killed leader: give them a moment to be gone too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return proc.returncode == -signal.SIGKILL


def always() -> bool:
    return True


def new_temporary(folder: Path, before: set[str]) -> Callable[[], bool]:
    """Ready once a temporary that was not there before appears in `folder`."""
    return lambda: any(TEMP.match(n) and n not in before for n in os.listdir(folder))


def face_set(db: Path) -> list[tuple]:
    library = Library(str(db))
    try:
        return sorted(tuple(round(v) for v in f.box) for f in library.faces.all())
    finally:
        library.close()


def progress(db: Path) -> dict:
    """How far a scan running in another process has committed (nothing when unreadable)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            stage = con.execute("SELECT stage FROM captures ORDER BY id DESC LIMIT 1").fetchone()
            bands = con.execute("SELECT COUNT(*) FROM bands_done").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return {"stage": None, "bands": 0}
    return {"stage": stage[0] if stage else None, "bands": bands}


def assert_library_opens(db: Path) -> None:
    if not db.exists():
        return  # killed before it was created: nothing written is fine too
    done = run_cli("captures", db, "--json")
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)


def assert_complete_image(path: Path, size: tuple[int, int]) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\xff\xd9"), f"{path} is cut short"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1::-1] == size, path


def assert_pyramid_complete_if_there(dzi: Path) -> None:
    """A .dzi that exists describes a pyramid whose every tile is there and decodes."""
    if not dzi.exists():
        return
    root = ET.fromstring(dzi.read_text())
    tile, overlap = int(root.get("TileSize")), int(root.get("Overlap"))
    size = root.find("{*}Size")
    width, height = int(size.get("Width")), int(size.get("Height"))
    top = int(np.ceil(np.log2(max(width, height))))
    files = dzi.with_name(dzi.stem + "_files")
    for level in range(top + 1):
        w, h = (max(1, -(-d // 2 ** (top - level))) for d in (width, height))
        for col in range(-(-w // tile)):
            for row in range(-(-h // tile)):
                path = files / str(level) / f"{col}_{row}.jpeg"
                path = path if path.exists() else path.with_suffix(".jpg")
                assert path.exists(), f"{dzi.name} exists but {path} does not"
                image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
                assert image is not None, f"{path} does not decode"
                expected_w = min(w, (col + 1) * tile + overlap) - max(0, col * tile - overlap)
                assert image.shape[1] == expected_w, path
    assert overlap == 1


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The crowd, and an uninterrupted scan of it: the faces every interrupted run must find."""
    folder = tmp_path_factory.mktemp("crash")
    image = write_image(folder / "crowd.jpg", crowd(3000, 2000, FACES, seed=5), Q=92)
    db = folder / "baseline.db"
    t0 = time.monotonic()
    done = run_cli("scan", image, "--db", db, "--quiet")
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    faces = face_set(db)
    assert len(faces) == len(FACES)
    return {"image": image, "db": db, "faces": faces, "seconds": seconds, "folder": folder}


def test_killed_scans_resume_to_the_same_faces(scene, tmp_path):
    rng = random.Random(SEED)
    image = tmp_path / "crowd.jpg"
    shutil.copy(scene["image"], image)
    db = tmp_path / "lib.db"
    # Random points in each part of a scan: mid-detect (after a random number of committed
    # bands), mid-describe, and anywhere from start-up on in a resumed run.
    bands = rng.randint(1, 5)
    points = [(lambda: progress(db)["bands"] >= bands, rng.uniform(0.0, 0.3)),
              (lambda: progress(db)["stage"] == "describe", rng.uniform(0.0, 1.0)),
              (always, rng.uniform(0.3, 2.0))]
    killed = 0
    for attempt, (ready, delay) in enumerate(points):
        proc = start([*CLI, "scan", image, "--db", db, "--quiet", *(["--resume"] if attempt else [])], tmp_path)
        killed += kill_when(proc, ready, delay)
        assert_library_opens(db)
    assert killed >= 2, "the kills did not land inside the scan"
    done = run_cli("scan", image, "--db", db, "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    assert face_set(db) == scene["faces"]
    (capture,) = Library(str(db)).captures.all()
    assert capture.stage == "done"
    # SQLite's own -wal/-shm may stay beside the library, its key, and the capture's scan
    # lock (library/locks.py: the files folder holds it); nothing else may.
    leftovers = {p.name for p in tmp_path.iterdir()} - {"crowd.jpg", "lib.db", "lib.db-wal", "lib.db-shm",
                                                         "lib.db.key", "lib.db.files"}
    assert leftovers == set()
    files = tmp_path / "lib.db.files"
    assert [str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()] == ["capture-1/job.lock"]


def test_killed_blurs_leave_no_partial_output(scene, tmp_path):
    rng = random.Random(SEED + 1)
    db = tmp_path / "lib.db"
    shutil.copy(scene["db"], db)
    out = tmp_path / "out"
    out.mkdir()
    reference = tmp_path / "reference.jpg"
    done = run_cli("blur", scene["image"], "--db", db, "--out", reference)
    assert done.returncode == 0, done.stderr

    target = out / "public.jpg"
    leftovers_seen = 0
    for attempt in range(KILLS):
        before = set(os.listdir(out))
        proc = start([*CLI, "blur", scene["image"], "--db", db, "--out", target], tmp_path)
        # A random point while the output is being written (the part that can go wrong):
        # the second attempt dies as soon as its temporary appears, so at least one kill lands
        # mid-write however busy the machine is; the first may also die before writing, the
        # last after renaming.
        ready = always if attempt == 0 else new_temporary(out, before)
        kill_when(proc, ready, (rng.uniform(0.0, 1.5), 0.0, rng.uniform(0.0, 0.4))[attempt])
        names = set(os.listdir(out))
        leftovers_seen += any(TEMP.match(n) for n in names)
        assert names <= {"public.jpg"} | {n for n in names if TEMP.match(n)}
        if target.exists():  # renamed into place only when complete
            assert_complete_image(target, (3000, 2000))
    assert leftovers_seen, "no kill landed while the output was being written"
    done = run_cli("blur", scene["image"], "--db", db, "--out", target)
    assert done.returncode == 0, done.stderr
    assert set(os.listdir(out)) == {"public.jpg"}  # the killed runs' temporaries are gone
    assert target.read_bytes() == reference.read_bytes()
    assert target.stat().st_mode & 0o044 == 0o044 & ~_umask()  # readable as a new file would be


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _queue_job(db: Path, image: Path) -> int:
    """A capture and its queued job, as the service's POST /api/captures makes them."""
    library = Library(str(db), create=True)
    kind, frames = frames_of(str(image), 10**10)
    capture = library.captures.create(capture_key(str(image)), str(image), kind, frames[0].width,
                                     frames[0].height, frames, settings_for("balanced").to_dict())
    library.jobs.put(capture.id)
    library.close()
    return capture.id


def test_killed_service_jobs_resume_to_complete_pyramids(scene, tmp_path):
    rng = random.Random(SEED + 2)
    image = tmp_path / "crowd.jpg"
    shutil.copy(scene["image"], image)
    db = tmp_path / "lib.db"
    cid = _queue_job(db, image)
    folder = Path(str(db) + ".files") / f"capture-{cid}"
    command = [*WORKER, db, cid]

    def working_on(name: str) -> Callable[[], bool]:
        return lambda: folder.is_dir() and any(n.startswith(f".{name}.gigaface-") for n in os.listdir(folder))

    # One random point in each part of the job: the scan (after a random number of bands),
    # the original's pyramid, and the anonymised export with its public pyramid.
    bands = rng.randint(1, 6)
    points = [(lambda: progress(db)["bands"] >= bands, rng.uniform(0.0, 0.3)),
              (working_on("pyramid.dzi"), rng.uniform(0.0, 0.5)),
              (lambda: working_on("anonymised.jpg")() or working_on("public.dzi")(), rng.uniform(0.0, 0.5))]
    killed = 0
    for ready, delay in points:
        killed += kill_when(start(command, tmp_path), ready, delay)
        assert_library_opens(db)
        assert_pyramid_complete_if_there(folder / "pyramid.dzi")
        assert_pyramid_complete_if_there(folder / "public.dzi")
        if (folder / "anonymised.jpg").exists():
            assert_complete_image(folder / "anonymised.jpg", (3000, 2000))
    assert killed == KILLS, "a job finished before its kill"

    done = subprocess.run([*map(str, command)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert face_set(db) == scene["faces"]
    library = Library(str(db))
    assert library.jobs.get(cid).state == "done" and library.captures.get(cid).stage == "done"
    library.close()
    for dzi in ("pyramid.dzi", "public.dzi"):
        assert_pyramid_complete_if_there(folder / dzi)
    assert_complete_image(folder / "anonymised.jpg", (3000, 2000))
    assert {p.name for p in folder.iterdir()} == {"job.lock", "pyramid.dzi", "pyramid_files", "public.dzi",
                                                  "public_files", "anonymised.jpg"}
    assert glob.glob(str(folder / "**" / ".*"), recursive=True) == []


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """A sweep removes a killed writer's temporary for this output, and nothing else: not a
    live writer's (it holds the lock), not another output's, not a user's own file."""
    from gigaface.atomic import remove_leftovers, temporary_beside

    final = tmp_path / "out.jpg"
    dead = tmp_path / ".out.jpg.gigaface-abcd1234.jpg"
    dead_folder = tmp_path / ".out.jpg.gigaface-zzzz9999.jpg"
    others = [tmp_path / ".other.jpg.gigaface-abcd1234.jpg", tmp_path / ".out.jpg.gigaface-notes.txt",
              tmp_path / "out.jpg.gigaface-abcd1234.jpg"]
    with temporary_beside(str(final), ".jpg") as live:
        Path(live).write_bytes(b"half")
        for path in [dead, *others]:
            path.write_bytes(b"x")
        dead_folder.mkdir()
        (dead_folder / "tile.jpg").write_bytes(b"x")
        assert sorted(remove_leftovers(str(final), ".jpg")) == sorted([str(dead), str(dead_folder)])
        assert os.path.exists(live)
    assert not os.path.exists(live)
    assert all(p.exists() for p in others)
