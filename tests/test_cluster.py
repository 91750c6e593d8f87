"""Scans on a real Ray cluster of two nodes on this machine (bench.harness.RayCluster): the
library is the one a local scan writes, whichever way the pixels reach the workers; a
worker killed mid-scan and a driver killed mid-scan change nothing in the end; every way
of failing to start is one line and exit 2, with nothing written.

The second node declares a GPU (this machine has none): its slot asks Ray for it and is
given it, and, with no CUDA in this onnxruntime, says so and detects on the CPU, so every
scan here also runs the GPU path but for the device.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from bench.harness import CLI, RayCluster, free_port, run_cli  # noqa: E402
from gigaface.cluster.pool import slot_plan  # noqa: E402
from gigaface.cluster.worker import slot_runtime  # noqa: E402
from gigaface.engine.runtime import Runtime  # noqa: E402
from gigaface.library.store import Library  # noqa: E402
from tests.helpers import crowd, write_image  # noqa: E402

# 15 faces of 40-110 px on a 3000 x 2000 crowd (as tests/test_crash_safety.py): seconds a scan.
FACES = [(200 + 560 * (i % 5), 220 + 600 * (i // 5), 40 + 5 * i) for i in range(15)]
BOX_TOLERANCE = 1.0          # px: "the same faces"
EMBEDDING_TOLERANCE = 1e-2   # per component: the runtime's (bf16 on OpenVINO) across thread counts


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The crowd as a JPEG, a tiled TIFF and a camera array of six overlapping JPEG frames;
    a folder the second node cannot see; and a local scan of all three: the reference."""
    folder = tmp_path_factory.mktemp("cluster")
    picture = crowd(3000, 2000, FACES, seed=5)
    jpeg = write_image(folder / "crowd.jpg", picture, Q=92)
    tiff = write_image(folder / "crowd.tif", picture, tile=True, tile_width=256, tile_height=256)
    frames = folder / "array"
    frames.mkdir()
    entries = []
    for row in range(2):
        for col in range(3):
            x, y = col * 900, row * 900
            write_image(frames / f"cam{row}{col}.jpg", picture[y : y + 1100, x : x + 1200], Q=92)
            entries.append({"file": f"cam{row}{col}.jpg", "x": x, "y": y})
    manifest = frames / "frames.json"
    manifest.write_text(json.dumps({"frames": entries}))
    hidden = folder / "hidden"
    hidden.mkdir()
    local = folder / "local.db"
    done = run_cli("scan", jpeg, tiff, manifest, "--db", local, "--quiet")
    assert done.returncode == 0, done.stderr
    return {"folder": folder, "jpeg": jpeg, "tiff": tiff, "manifest": manifest, "hidden": hidden,
            "local": faces_by_source(local)}


@pytest.fixture(scope="module")
def cluster(inputs):
    with RayCluster([{"cpus": 1}, {"cpus": 1, "gpus": 1, "hide": inputs["hidden"]}]) as running:
        yield running


def faces_by_source(db: Path) -> dict[str, list[tuple]]:
    """Per capture source: (box, score, embedding or None) of every face stored, by box."""
    library = Library(str(db))
    try:
        out = {}
        for capture in library.captures.all():
            ids, vectors = library.faces.embeddings([capture.id])
            embedding = dict(zip(ids.tolist(), vectors))
            faces = library.faces.all(capture.id, include_unlisted=True)
            out[capture.source] = sorted(((np.array(f.box), f.score, embedding.get(f.id)) for f in faces),
                                         key=lambda t: tuple(t[0]))
        return out
    finally:
        library.close()


def assert_same_faces(found: list[tuple], expected: list[tuple]) -> None:
    assert len(found) == len(expected)
    for (box, score, vector), (box0, score0, vector0) in zip(found, expected):
        assert np.abs(box - box0).max() <= BOX_TOLERANCE, (box, box0)
        assert abs(score - score0) < 1e-3
        assert (vector is None) == (vector0 is None)
        if vector is not None:
            assert np.abs(vector - vector0).max() < EMBEDDING_TOLERANCE


def start(args: list, cwd: Path) -> subprocess.Popen:
    """The CLI in a session of its own (killing its group kills the driver, not the cluster)."""
    return subprocess.Popen([*CLI, *map(str, args)], cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def bands_done(db: Path) -> int:
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM bands_done").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def wait_until(ready, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the scan ended first: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the scan never got there"
        time.sleep(0.02)


# --- the same library -----------------------------------------------------------------
def test_a_manifest_and_a_tiled_tiff_on_the_cluster_equal_a_local_scan(inputs, cluster, tmp_path):
    db = tmp_path / "cluster.db"
    done = run_cli("scan", inputs["tiff"], inputs["manifest"], "--db", db, "--json", "--cluster", cluster.address)
    assert done.returncode == 0, done.stderr
    summaries = json.loads(done.stdout)
    found = faces_by_source(db)
    # Captures are numbered in the order given, as a local scan numbers them, though the
    # two were scanned at once.
    assert [s["source"] for s in summaries] == [str(inputs["tiff"]), str(inputs["manifest"])]
    assert [s["capture"] for s in summaries] == [1, 2]
    for source in (inputs["tiff"], inputs["manifest"]):
        assert_same_faces(found[str(source)], inputs["local"][str(source)])
    cluster_info = summaries[0]["cluster"]
    assert (cluster_info["workers"], cluster_info["nodes"], cluster_info["gpus"]) == (2, 2, 1)
    # The GPU slot was given its GPU, and said why it detected on the CPU all the same.
    assert any("given a GPU" in note for note in cluster_info["notes"])
    assert "given a GPU" in done.stderr


def test_a_worker_killed_mid_scan_is_replaced_and_the_scan_finds_the_same_faces(inputs, cluster, tmp_path):
    # A JPEG: the driver decodes its bands and ships them; the killed worker's band is
    # sent again from the object store.
    db = tmp_path / "cluster.db"
    proc = start(["scan", inputs["jpeg"], "--db", db, "--quiet", "--cluster", cluster.address], tmp_path)
    wait_until(lambda: bands_done(db) >= 1, proc)
    victims = cluster.worker_pids()
    assert victims, "no worker process found"
    os.kill(victims[-1], signal.SIGKILL)
    killed_at = bands_done(db)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert killed_at < bands_done(db), "the kill came after the detection"
    assert_same_faces(faces_by_source(db)[str(inputs["jpeg"])], inputs["local"][str(inputs["jpeg"])])


def test_a_driver_killed_mid_scan_resumes_to_the_same_faces(inputs, cluster, tmp_path):
    db = tmp_path / "cluster.db"
    proc = start(["scan", inputs["jpeg"], "--db", db, "--quiet", "--cluster", cluster.address], tmp_path)
    wait_until(lambda: bands_done(db) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    (capture,) = Library(str(db)).captures.all()
    assert capture.stage == "detect"
    done = run_cli("scan", inputs["jpeg"], "--db", db, "--resume", "--cluster", cluster.address)
    assert done.returncode == 0, done.stderr
    assert "resuming capture 1 at stage 'detect'" in done.stderr
    (capture,) = Library(str(db)).captures.all()
    assert capture.stage == "done"
    assert_same_faces(faces_by_source(db)[str(inputs["jpeg"])], inputs["local"][str(inputs["jpeg"])])


@pytest.mark.slow
def test_a_driver_outside_the_cluster_joins_through_ray_client(inputs, cluster, tmp_path):
    # Slow, not default: twice in the full suite (never alone) the head's client server
    # failed to start the process it runs for a new ray:// driver; its log is shown then.
    db = tmp_path / "client.db"
    done = run_cli("scan", inputs["tiff"], "--db", db, "--quiet", "--cluster", cluster.client_address)
    logs = "".join(p.read_text()[-1500:] for p in Path(cluster.temp).glob("session_*/logs/ray_client_server_*.err"))
    assert done.returncode == 0, done.stderr + logs
    assert_same_faces(faces_by_source(db)[str(inputs["tiff"])], inputs["local"][str(inputs["tiff"])])


def test_the_python_api_scans_on_the_cluster(inputs, cluster, tmp_path):
    import gigaface

    db = tmp_path / "api.db"
    capture = gigaface.scan(str(inputs["tiff"]), db=str(db), cluster=cluster.address)
    assert capture.source == str(inputs["tiff"]) and len(capture.faces) == len(FACES)
    assert_same_faces(faces_by_source(db)[str(inputs["tiff"])], inputs["local"][str(inputs["tiff"])])
    import ray

    assert not ray.is_initialized()  # the scan joined the cluster and left it


# --- failing to start: one line, exit 2, nothing written --------------------------------
def assert_refused(done: subprocess.CompletedProcess, db: Path, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaface: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert list(db.parent.glob(db.name + "*")) == []


def test_an_unreachable_cluster_is_one_line(inputs, tmp_path):
    db = tmp_path / "lib.db"
    port = free_port()  # nothing listens there
    assert_refused(run_cli("scan", inputs["jpeg"], "--db", db, "--cluster", f"127.0.0.1:{port}", timeout=60), db,
                   "cannot reach the Ray cluster", f"127.0.0.1:{port}")
    env_done = subprocess.run([*CLI, "scan", str(inputs["jpeg"]), "--db", str(db)], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, GIGAFACE_CLUSTER=f"ray://127.0.0.1:{port}"))
    assert_refused(env_done, db, "cannot reach")
    assert_refused(run_cli("scan", inputs["jpeg"], "--db", db, "--cluster", "head-node"), db, "HOST:PORT")
    served = run_cli("serve", db, "--port", "0", "--cluster", f"127.0.0.1:{port}", timeout=60)
    assert served.returncode == 2 and "cannot reach the Ray cluster" in served.stderr


def test_a_frame_missing_on_a_node_is_one_line(inputs, cluster, tmp_path):
    hidden = inputs["hidden"]
    shutil.copy(inputs["jpeg"], hidden / "crowd.jpg")  # this machine sees it; the second node does not
    db = tmp_path / "lib.db"
    done = run_cli("scan", hidden / "crowd.jpg", "--db", db, "--cluster", cluster.address)
    assert_refused(done, db, "missing or different on node", str(hidden / "crowd.jpg"), "same path")


def test_a_driver_of_another_engine_is_refused(inputs, cluster, tmp_path):
    # The driver imports a copy of gigaface whose engine differs by one comment; the
    # workers run the installed one.
    source = Path(__file__).resolve().parents[1] / "src" / "gigaface"
    copy = tmp_path / "other" / "gigaface"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    with open(copy / "engine" / "plan.py", "a") as f:
        f.write("# another checkout\n")
    db = tmp_path / "lib.db"
    done = subprocess.run([*CLI, "scan", str(inputs["jpeg"]), "--db", str(db), "--cluster", cluster.address],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(copy.parent)))
    assert_refused(done, db, "version mismatch", "engine", "install the same gigaface")


# --- the GPU path, but for the device ---------------------------------------------------------
CPU = Runtime("onnxruntime", "cpu", "f32")
CUDA = Runtime("onnxruntime", "cuda", "f32")
OPENVINO = Runtime("openvino", "cpu", "bf16")


def test_a_gpu_slot_runs_cuda_and_a_cpu_slot_leaves_it_alone():
    assert slot_runtime(CUDA, True, lambda: OPENVINO) == (CUDA, None)
    # Ray hides the GPUs from a slot that did not ask for one: it must not pick CUDA.
    assert slot_runtime(CUDA, False, lambda: OPENVINO) == (OPENVINO, None)
    runtime, note = slot_runtime(CPU, True, lambda: OPENVINO)
    assert runtime == CPU and "no CUDA provider" in note
    runtime, note = slot_runtime(OPENVINO, True, lambda: OPENVINO)
    assert runtime == OPENVINO and "openvino runtime runs on the CPU" in note


def test_slots_are_one_per_core_or_one_per_gpu():
    nodes = [{"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0}},
             {"NodeID": "b", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"NodeID": "c", "Alive": False, "Resources": {"CPU": 8.0}}]
    plan = slot_plan(nodes)
    assert [(s["node"], s["num_cpus"], s["num_gpus"]) for s in plan] == [("a", 1, 0)] * 4 + [("b", 8, 1)] * 2


# --- the service ---------------------------------------------------------------------------
def test_the_service_runs_its_scan_jobs_on_the_cluster(inputs, cluster, tmp_path):
    from bench.harness import Server, make_token

    db = tmp_path / "served.db"
    admin = make_token(db, "admin")
    with Server(db, "--data-dir", inputs["folder"], "--cluster", cluster.address, token=admin) as server:
        created = server.client.post("/api/captures", json={"path": str(inputs["tiff"])})
        assert created.status_code == 201, created.text
        seen_workers = set()  # the job's slots, on the cluster's nodes while it scans
        deadline = time.monotonic() + 300
        while (capture := server.client.get(f"/api/captures/{created.json()['id']}").json())["state"] not in (
                "done", "failed") and time.monotonic() < deadline:
            seen_workers |= set(cluster.worker_pids())
            time.sleep(0.1)
    assert capture["state"] == "done", capture
    assert seen_workers
    assert_same_faces(faces_by_source(db)[str(inputs["tiff"])], inputs["local"][str(inputs["tiff"])])


@pytest.mark.slow
def test_a_node_lost_mid_scan_leaves_the_scan_to_the_others(inputs, tmp_path):
    # Its own cluster: the second node's processes are all killed at once, as a machine
    # that loses power; the head's worker finishes the scan.
    with RayCluster([{"cpus": 1}, {"cpus": 1}]) as two:
        db = tmp_path / "cluster.db"
        proc = start(["scan", inputs["jpeg"], "--db", db, "--quiet", "--cluster", two.address], tmp_path)
        wait_until(lambda: bands_done(db) >= 1, proc)
        os.killpg(two.processes[1].pid, signal.SIGKILL)
        killed_at = bands_done(db)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert killed_at < bands_done(db), "the node was lost after the detection"
    assert_same_faces(faces_by_source(db)[str(inputs["jpeg"])], inputs["local"][str(inputs["jpeg"])])
