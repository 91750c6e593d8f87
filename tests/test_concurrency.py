"""Several processes on one library at once: one writer per capture, race-free creation of
the library and its key, and no face ever lost to a race."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from gigaface.library.store import Library
from gigaface.library.locks import capture_lock, lock_path, waiting_message
from bench.harness import CLI, run_cli
from tests.helpers import crowd, write_image

FACES = [(120, 150, 70), (300, 140, 60)]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency")
    return write_image(folder / "crowd.png", crowd(400, 300, FACES, seed=3))


def _scan_command(image, db) -> list[str]:
    return [*CLI, "scan", str(image), "--db", str(db), "--quiet", "--json", "--threads", "1"]


def _scan_pair(image, db) -> list[subprocess.CompletedProcess]:
    """Two real scans of one image into one (new) library, started together."""
    # PYTHONFAULTHANDLER: a scan that hangs is stopped with SIGABRT, which prints where each
    # of its threads stood, so the failure says why.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    procs = [subprocess.Popen(_scan_command(image, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            stacks = []
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGABRT)
                stacks.append(p.communicate()[1])
            pytest.fail("a scan hung:\n" + "\n---\n".join(stacks))
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _assert_no_face_lost(db, runs) -> None:
    for run in runs:
        assert run.returncode == 0, run.stderr
        (summary,) = json.loads(run.stdout)
        assert summary["faces"] == len(FACES), (summary, run.stderr)
    library = Library(str(db))
    (capture,) = library.captures.all()
    faces = library.faces.all(capture.id)
    assert capture.stage == "done" and len(faces) == len(FACES)
    assert all(f.embedded for f in faces) and library.faces.undescribed(capture.id) == []
    library.close()


def _pairs(image, folder, count: int, existing: bool) -> None:
    """`count` pairs of scans, each pair into a library of its own: new (the race to create
    it), or `existing` (made before: the race on the capture itself, where the old code
    ended both scans `done` with 0 faces)."""
    for i in range(count):
        db = folder / f"lib{i}.db"
        if existing:
            Library(str(db), create=True).close()
        _assert_no_face_lost(db, _scan_pair(image, db))


def test_two_concurrent_scans_into_a_new_library_lose_no_face(small_image, tmp_path):
    _pairs(small_image, tmp_path, 2, existing=False)


def test_two_concurrent_scans_into_an_existing_library_lose_no_face(small_image, tmp_path):
    _pairs(small_image, tmp_path, 3, existing=True)


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new-library", "existing-library"])
def test_twenty_concurrent_pairs_of_scans_never_lose_a_face(small_image, tmp_path, existing):
    _pairs(small_image, tmp_path, 20, existing)


def test_a_second_scan_waits_for_the_first_and_says_so(small_image, tmp_path):
    db = tmp_path / "lib.db"
    first = run_cli("scan", small_image, "--db", db, "--quiet", "--threads", "1")
    assert first.returncode == 0, first.stderr
    # This test process plays the first scan: it holds capture 1's lock.
    with capture_lock(str(db), 1):
        second = subprocess.Popen([*_scan_command(small_image, db), "--preset", "fast"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            line = second.stderr.readline()  # until the scan says something (or ends)
            assert waiting_message(1) in line
            _wait_until_blocked_on(lock_path(str(db), 1), second.pid)
            assert Library(str(db)).captures.get(1).settings["preset"] == "balanced"  # nothing touched yet
        except BaseException:
            second.kill()
            second.communicate()
            raise
    out, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    (summary,) = json.loads(out)
    assert summary["capture"] == 1 and summary["faces"] == len(FACES)
    assert Library(str(db)).captures.get(1).settings["preset"] == "fast"


def test_the_job_worker_takes_the_same_lock(small_image, tmp_path):
    """The service's job worker waits for a CLI scan of its capture (the lock is one)."""
    db = tmp_path / "lib.db"
    library = Library(str(db), create=True)
    library.captures.create("image:pending", str(small_image), "image", 400, 300, [], {})
    library.jobs.put(1)
    library.close()
    with capture_lock(str(db), 1):
        worker = subprocess.Popen([sys.executable, "-m", "gigaface.service.worker", str(db), "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_until_blocked_on(lock_path(str(db), 1), worker.pid)
            assert Library(str(db)).jobs.get(1).state == "queued"  # it has not started the job
        finally:
            worker.kill()
            worker.communicate()


def _wait_until_blocked_on(path: str, pid: int, timeout: float = 120) -> None:
    """Until the kernel lists `pid` as waiting for an flock on `path` (a '->' line of /proc/locks)."""
    inode = os.stat(path).st_ino
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/locks") as f:
            waiting = [line.split() for line in f if "->" in line]
        if any(str(pid) in fields and fields[-3].endswith(f":{inode}") for fields in waiting):
            return
        assert time.monotonic() < deadline, f"process {pid} never waited for {path}"
        time.sleep(0.05)


# --- creating one library from many processes at once ----------------------------------
def _create_and_report(path: str, start: float, results) -> None:
    while time.time() < start:  # every process starts creating at the same moment
        pass
    try:
        library = Library(path, create=True)
        results.put(("ok", library.key().check, len(library.captures.all())))
    except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(("error", f"{type(exc).__name__}: {exc}", 0))


def test_many_processes_create_one_library_and_one_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(8):
        path = str(tmp_path / f"lib{round_}.db")
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_create_and_report, args=(path, start, results)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert all(kind == "ok" for kind, _, _ in outcomes), outcomes
        assert len({check for _, check, _ in outcomes}) == 1  # one key, the library's
        assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary left about
        assert Library(path).key().check == outcomes[0][1]


def _create_capture(path: str, start: float, results) -> None:
    library = Library(path)
    while time.time() < start:
        pass
    try:
        capture = library.captures.create("image:same", "/x.png", "image", 10, 10, [], {})
        results.put(capture.id)
    except Exception as exc:  # noqa: BLE001
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_adding_one_capture_at_once_make_one(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = str(tmp_path / f"lib{round_}.db")
        Library(path, create=True).close()
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_create_capture, args=(path, start, results)) for _ in range(6)]
        for p in procs:
            p.start()
        ids = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert ids == [1] * len(procs), ids
        assert [c.id for c in Library(path).captures.all()] == [1]
