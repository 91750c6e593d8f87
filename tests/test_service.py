"""The REST service, in this process (create_app behind TestClient) with real scans in real job
processes; what needs a real uvicorn server on 127.0.0.1 (a smoke test, a chunked upload, a
restart, `gigaface view`, schemathesis over HTTP) runs one."""
from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from bench.harness import Server, make_token, run_cli
from bench.load import server_timing
from tests.helpers import crowd, face_patch, read_image, write_image
from tests.inprocess import App

FACES = [(220, 200, 60), (700, 420, 44), (1250, 600, 90), (420, 760, 52)]  # cx, cy, face height


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A token-protected server with a public view and one capture scanned through the API."""
    folder = tmp_path_factory.mktemp("service")
    image = write_image(folder / "crowd.jpg", crowd(1600, 1000, FACES), Q=95)
    db = folder / "library.db"
    admin, viewer = make_token(db, "admin"), make_token(db, "viewer")
    with App(db, public=True, data_dir=folder, token=admin) as server:
        created = server.client.post("/api/captures", json={"path": str(image)})
        assert created.status_code == 201, created.text
        capture = server.wait_for(created.json()["id"])
        assert capture["state"] == "done", capture
        yield {"server": server, "db": db, "image": image, "capture": capture, "admin": admin,
               "viewer": viewer, "folder": folder}


def client(site, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return site["server"].bare(**headers)


def photo_bytes(face_height: float = 150) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(face_patch(face_height), cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


# --- authentication --------------------------------------------------------------------
def test_every_api_route_needs_a_token(site):
    anonymous = client(site, None)
    capture_id = site["capture"]["id"]
    for path in ("/api/me", "/api/captures", f"/api/captures/{capture_id}", f"/api/captures/{capture_id}/faces",
                 site["capture"]["pyramid_url"], f"/api/captures/{capture_id}/export", "/api/faces/1/crop.jpg"):
        r = anonymous.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert client(site, "gf_not-a-real-token").get("/api/captures").status_code == 401
    assert anonymous.get("/api/health").json()["status"] == "ok"


def test_roles(site):
    viewer = client(site, site["viewer"])
    assert viewer.get("/api/me").json() == {"role": "viewer", "name": "viewer", "mode": "token"}
    assert viewer.get("/api/captures").status_code == 200
    r = viewer.post("/api/captures", json={"path": str(site["image"])})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert viewer.delete(f"/api/captures/{site['capture']['id']}").status_code == 403
    assert viewer.post("/api/captures/upload?filename=x.jpg", content=b"\xff\xd8\xff").status_code == 403
    assert client(site, site["admin"]).get("/api/me").json()["role"] == "admin"


def test_tokens_are_stored_hashed_and_can_be_revoked(site, tmp_path):
    db = tmp_path / "tokens.db"
    secret = make_token(db, "viewer", "laptop")
    raw = Path(db).read_bytes() + b"".join(Path(str(db) + s).read_bytes() for s in ("-wal",)
                                           if os.path.exists(str(db) + s))
    assert secret.encode() not in raw
    listed = json.loads(run_cli("token", "list", db, "--json").stdout)
    assert [(t["name"], t["role"], t["revoked"]) for t in listed] == [("laptop", "viewer", False)]
    assert all(secret not in json.dumps(t) for t in listed)
    with App(db, token=secret) as server:
        assert server.client.get("/api/captures").status_code == 200
        assert run_cli("token", "revoke", db, str(listed[0]["id"])).returncode == 0
        assert server.client.get("/api/captures").status_code == 401
    bad = run_cli("token", "create", db, "--name", "x", "--role", "root")
    assert bad.returncode == 2 and "unknown role" in bad.stderr


# --- captures and jobs -------------------------------------------------------------------
def test_capture_after_the_scan(site):
    capture = site["capture"]
    assert capture["name"] == "crowd.jpg"
    assert (capture["width"], capture["height"]) == (1600, 1000)
    assert capture["stage"] == "done" and capture["pyramid"] and capture["export"]
    assert capture["faces"] == len(FACES)
    again = site["server"].client.post("/api/captures", json={"path": str(site["image"])})
    assert again.status_code == 200 and again.json()["id"] == capture["id"]  # the same image: no second scan


def test_bad_paths_are_one_line_errors(site):
    api = site["server"].client
    for body, words in (({"path": str(site["folder"] / "nonexistent.jpg")}, "no such file"),
                        ({"path": str(site["folder"])}, "directory"),
                        ({"path": str(site["db"])}, "the library itself"),
                        ({"path": str(site["image"]), "preset": "warp"}, None)):
        r = api.post("/api/captures", json=body)
        assert r.status_code in (400, 422), r.text
        if words:
            assert words in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert len(api.get("/api/captures").json()) == 1


def test_progress_is_streamed_as_server_sent_events(site):
    api = site["server"].client
    image = write_image(site["folder"] / "other.jpg", crowd(1400, 900, FACES[:2], seed=3), Q=95)
    capture_id = api.post("/api/captures", json={"path": str(image), "preset": "fast"}).json()["id"]
    events = []
    with api.stream("GET", f"/api/captures/{capture_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    states = [e["state"] for e in events]
    assert states[-1] == "done" and states[0] in ("queued", "running")
    stages = [e["stage"] for e in events]
    assert "done" == stages[-1] and len(events) >= 2
    assert events[-1]["faces"] == 2 and events[-1]["pyramid"] and events[-1]["export"]
    assert api.delete(f"/api/captures/{capture_id}").status_code == 204


# --- faces -------------------------------------------------------------------------------
def test_faces_are_paged_and_filtered(site):
    api = site["server"].client
    cid = site["capture"]["id"]
    everything = api.get(f"/api/captures/{cid}/faces").json()
    assert everything["total"] == len(FACES) == len(everything["items"])
    for (cx, cy, s), face in zip(sorted(FACES), sorted(everything["items"], key=lambda f: f["box"][0])):
        x, y, w, h = face["box"]
        assert abs(x + w / 2 - cx) < s / 4 and abs(y + h / 2 - cy) < s / 4
        assert face["quality"]["size"] == pytest.approx(max(w, h), abs=0.2)
    first = api.get(f"/api/captures/{cid}/faces", params={"limit": 3}).json()
    rest = api.get(f"/api/captures/{cid}/faces", params={"limit": 3, "offset": 3}).json()
    assert [f["id"] for f in first["items"] + rest["items"]] == [f["id"] for f in everything["items"]]
    big = api.get(f"/api/captures/{cid}/faces", params={"min_size": 70}).json()
    assert big["total"] == 1 and big["items"][0]["quality"]["size"] >= 70
    small = api.get(f"/api/captures/{cid}/faces", params={"max_size": 50}).json()
    assert small["total"] == 1
    frontal = api.get(f"/api/captures/{cid}/faces", params={"min_frontalness": 1.0}).json()
    assert all(f["quality"]["frontalness"] >= 1.0 for f in frontal["items"])
    assert api.get(f"/api/captures/{cid}/faces", params={"limit": 0}).status_code == 422
    assert api.get("/api/captures/999/faces").status_code == 404


def test_face_crop_is_a_jpeg_of_the_face(site):
    api = site["server"].client
    face = api.get(f"/api/captures/{site['capture']['id']}/faces").json()["items"][0]
    assert api.get(f"/api/faces/{face['id']}").json()["box"] == face["box"]
    r = api.get(f"/api/faces/{face['id']}/crop.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    crop = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert crop is not None and min(crop.shape[:2]) >= 16
    assert api.get("/api/faces/987654/crop.jpg").status_code == 404


# --- search ------------------------------------------------------------------------------
def test_search_ranks_the_person_and_keeps_no_photo(site):
    api = site["server"].client
    cid = site["capture"]["id"]
    ram = f"/dev/shm/gigaface-ref-{os.getpid()}-*"  # this server's photos in RAM (it runs in this process)
    before = set(glob.glob(ram)) | _files(site["folder"])
    r = api.post(f"/api/captures/{cid}/search", params={"top": 3},
                 files=[("photos", ("me.jpg", photo_bytes(150), "image/jpeg")),
                        ("photos", ("me2.jpg", photo_bytes(110), "image/jpeg"))])
    assert r.status_code == 200, r.text
    found = r.json()
    assert [ref["name"] for ref in found["references"]] == ["me.jpg", "me2.jpg"]
    assert len(found["matches"]) == 3 and found["threshold"] == 0.6
    distances = [m["distance"] for m in found["matches"]]
    assert distances == sorted(distances) and found["matches"][0]["match"] is True
    assert [m["rank"] for m in found["matches"]] == [1, 2, 3]
    # the photos were decoded in memory and are gone: nothing new on disk or in /dev/shm
    assert set(glob.glob(ram)) | _files(site["folder"]) == before


def test_search_pages_through_one_ranking_of_the_library(site, monkeypatch):
    api = site["server"].client
    photo = [("photos", ("me.jpg", photo_bytes(150), "image/jpeg"))]
    whole = api.post("/api/search", params={"limit": 4}, files=photo)
    assert whole.status_code == 200, whole.text
    whole = whole.json()
    assert whole["searched"] == 4 and [m["rank"] for m in whole["matches"]] == [1, 2, 3, 4]
    assert {m["capture"] for m in whole["matches"]} == {site["capture"]["id"]}
    index = site["server"].app.state.service.index.index
    ranked = []
    real = index._rank
    monkeypatch.setattr(index, "_rank", lambda *a, **kw: ranked.append(a[1]) or real(*a, **kw))
    pages = [api.post("/api/search", params={"offset": o, "limit": 2}, files=photo).json() for o in (0, 2, 4)]
    assert [m["face_id"] for p in pages for m in p["matches"]] == [m["face_id"] for m in whole["matches"]]
    assert [m["rank"] for m in pages[1]["matches"]] == [3, 4] and pages[2]["matches"] == []
    assert ranked == []   # each page sliced from the first search's ranking
    timed = api.post("/api/search", params={"limit": 1}, files=photo)
    assert timed.status_code == 200, timed.text
    timing = server_timing(timed)
    assert timing["method"] == "exact" and 0 <= timing["index"] <= timing["rank"] and timing["photos"] > 0
    narrowed = api.post("/api/search", params={"capture": site["capture"]["id"]}, files=photo).json()
    assert [m["face_id"] for m in narrowed["matches"]] == [m["face_id"] for m in whole["matches"]]
    assert api.post("/api/search", params={"capture": 987}, files=photo).status_code == 404
    per_capture = api.post(f"/api/captures/{site['capture']['id']}/search", params={"offset": 2, "limit": 2},
                           files=photo).json()
    assert [m["rank"] for m in per_capture["matches"]] == [3, 4]
    both = api.post(f"/api/captures/{site['capture']['id']}/search", params={"limit": 2, "top": 3}, files=photo)
    assert both.status_code == 422


def test_search_errors(site):
    api = site["server"].client
    cid = site["capture"]["id"]
    blank = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    r = api.post(f"/api/captures/{cid}/search", files=[("photos", ("wall.png", blank, "image/png"))])
    assert r.status_code == 400 and r.json()["detail"] == "wall.png: no face found in the reference photo"
    r = api.post(f"/api/captures/{cid}/search", files=[("photos", ("notes.txt", b"hello", "text/plain"))])
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    truncated = photo_bytes()[:2000]
    r = api.post(f"/api/captures/{cid}/search", files=[("photos", ("cut.jpg", truncated, "image/jpeg"))])
    assert r.status_code == 400 and r.json()["detail"].startswith("cut.jpg:")
    r = api.post(f"/api/captures/{cid}/search", files=[("photos", ("big.jpg", b"\xff\xd8\xff" + bytes(300 << 20), "image/jpeg"))])
    assert r.status_code == 413


# --- exports and pyramids ----------------------------------------------------------------
def test_export_blurs_every_face(site, tmp_path):
    api = site["server"].client
    r = api.get(f"/api/captures/{site['capture']['id']}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "crowd-anonymised.jpg" in r.headers["content-disposition"]
    out = tmp_path / "export.jpg"
    out.write_bytes(r.content)
    original, blurred = read_image(site["image"]), read_image(out)
    assert original.shape == blurred.shape

    def detail(rgb, x0, y0, x1, y1):  # high-frequency energy: what a blur removes
        return cv2.Laplacian(cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()

    for cx, cy, s in FACES:
        box = (int(cx - s / 4), int(cy - s / 3), int(cx + s / 4), int(cy + s / 3))
        assert detail(blurred, *box) < 0.2 * detail(original, *box)
    no_face = (1400, 850, 1600, 1000)
    assert detail(blurred, *no_face) > 0.6 * detail(original, *no_face)


def tiles_of(dzi_url: str) -> str:
    """The tile folder's URL of a DeepZoom descriptor's URL, as OpenSeadragon makes it."""
    return dzi_url[: -len(".dzi")] + "_files"


def test_pyramids_and_their_tiles(site):
    api = site["server"].client
    capture = api.get(f"/api/captures/{site['capture']['id']}").json()
    for url in (capture["pyramid_url"], capture["public_url"]):
        r = api.get(url)
        assert r.status_code == 200
        size = ET.fromstring(r.text).find("{*}Size")
        assert (int(size.get("Width")), int(size.get("Height"))) == (1600, 1000)
        tile = api.get(f"{tiles_of(url)}/11/0_0.jpg")
        assert tile.status_code == 200 and tile.content[:3] == b"\xff\xd8\xff"
        top = api.get(f"{tiles_of(url)}/0/0_0.jpg")
        assert cv2.imdecode(np.frombuffer(top.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (1, 1)
    original = api.get(f"{tiles_of(capture['pyramid_url'])}/11/0_0.jpg").content
    public = api.get(f"{tiles_of(capture['public_url'])}/11/0_0.jpg").content
    assert original != public  # the first tile holds a face: blurred in the public pyramid


@pytest.mark.parametrize("path", [
    "11/..%2F..%2Fjob.lock", "11/../../job.lock", "..%2F11/0_0.jpg",
    "11/0_0.jpg%00.png", "11/%2Fetc%2Fpasswd", "-1/0_0.jpg",
    "11/0_0.JPG", "99/0_0.jpg", "11/9_9.jpg",
])
def test_tile_routes_refuse_traversal(site, path):
    r = site["server"].client.get(f"{tiles_of(site['capture']['pyramid_url'])}/{path}")
    assert r.status_code in (404, 422), (path, r.status_code)
    assert b"root:" not in r.content and r.headers.get("content-type") != "image/jpeg"


def test_public_view_is_anonymised_only(site):
    anonymous = client(site, None)
    cid = site["capture"]["id"]
    listed = anonymous.get("/public/captures").json()
    url = listed[0]["url"]
    # a neutral name: the file's own may say where it was taken, or of whom
    assert listed == [{"id": cid, "name": f"capture {cid}", "width": 1600, "height": 1000, "url": url}]
    assert anonymous.get(url).status_code == 200
    public_tile = anonymous.get(f"{tiles_of(url)}/11/0_0.jpg")
    viewer = client(site, site["viewer"])
    own_public_url = viewer.get(f"/api/captures/{cid}").json()["public_url"]
    assert public_tile.content == viewer.get(f"{tiles_of(own_public_url)}/11/0_0.jpg").content
    assert anonymous.get("/public").status_code == 200
    # and nothing else: no faces, no original pyramid, no search
    assert anonymous.get(f"{tiles_of(site['capture']['pyramid_url'])}/11/0_0.jpg").status_code == 401
    assert anonymous.get(f"/api/captures/{cid}/faces").status_code == 401


# --- uploads and deletion -----------------------------------------------------------------
def test_upload_scan_and_delete_everything(site, tmp_path):
    api = site["server"].client
    data = (write_image(tmp_path / "up.png", crowd(1000, 700, FACES[:2], seed=7))).read_bytes()
    r = api.post("/api/captures/upload", params={"filename": "../../evil/stand A.png"}, content=data)
    assert r.status_code == 201, r.text
    capture = site["server"].wait_for(r.json()["id"])
    assert capture["name"] == "stand A.png" and capture["faces"] == 2 and capture["export"]
    source = Path(capture["source"])
    assert source.is_file() and source.parent.parent.name == "uploads"  # not where the name pointed
    files = Path(str(site["db"]) + ".files") / f"capture-{capture['id']}"
    assert (files / "pyramid.dzi").exists()
    r = api.delete(f"/api/captures/{capture['id']}")
    assert r.status_code == 204
    assert api.get(f"/api/captures/{capture['id']}").status_code == 404
    assert not files.exists() and not source.parent.exists()
    with sqlite3.connect(site["db"]) as db:
        assert db.execute("SELECT COUNT(*) FROM faces WHERE capture_id = ?", (capture["id"],)).fetchone()[0] == 0
    # a new capture never takes a deleted capture's id
    again = api.post("/api/captures/upload", params={"filename": "again.png"}, content=data).json()
    assert again["id"] > capture["id"]
    site["server"].wait_for(again["id"])
    assert api.delete(f"/api/captures/{again['id']}").status_code == 204


def test_uploads_are_checked_before_work(site, tmp_path):
    api = site["server"].client
    uploads = Path(str(site["db"]) + ".files") / "uploads"
    before = sorted(uploads.iterdir()) if uploads.exists() else []
    r = api.post("/api/captures/upload", params={"filename": "x.jpg"}, content=b"MZ\x90\x00 not an image" * 100)
    assert r.status_code == 415
    r = api.post("/api/captures/upload", params={"filename": "x.jpg"}, content=b"")
    assert r.status_code == 400
    truncated = write_image(tmp_path / "t.jpg", crowd(800, 600, FACES[:1])).read_bytes()[:5000]
    r = api.post("/api/captures/upload", params={"filename": "t.jpg"}, content=truncated)
    assert r.status_code == 400 and "t.jpg" in r.json()["detail"]
    r = api.post("/api/captures/upload", params={"filename": "frames.json"}, content=b"{}")
    assert r.status_code == 400
    assert (sorted(uploads.iterdir()) if uploads.exists() else []) == before
    assert len(api.get("/api/captures").json()) == 1


def test_upload_size_limit(tmp_path):
    db = tmp_path / "small.db"
    admin = make_token(db, "admin")
    noise = np.random.default_rng(0).integers(0, 255, (900, 900, 3), np.uint8)
    data = write_image(tmp_path / "noise.png", noise).read_bytes()
    assert len(data) > 1 << 20
    with Server(db, "--max-upload-mb", "1", token=admin) as server:
        r = server.client.post("/api/captures/upload", params={"filename": "n.png"}, content=data)
        assert r.status_code == 413
        # without Content-Length (chunked), the limit holds while the body streams
        r = server.client.post("/api/captures/upload", params={"filename": "n.png"},
                               content=(data[i:i + 65536] for i in range(0, len(data), 65536)))
        assert r.status_code == 413
        assert server.client.get("/api/captures").json() == []
    uploads = Path(str(db) + ".files") / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


# --- jobs survive restarts ------------------------------------------------------------------
# Slow (an "accurate" scan stopped and resumed, two servers): the fast run keeps resumption
# through test_crash_safety.py's killed service jobs and killed scans.
@pytest.mark.slow
def test_an_interrupted_scan_resumes_after_a_restart(tmp_path):
    db = tmp_path / "restart.db"
    admin = make_token(db, "admin")
    faces = [(300 + 420 * (i % 5), 260 + 380 * (i // 5), 40 + 6 * i) for i in range(10)]
    image = write_image(tmp_path / "wide.jpg", crowd(2400, 1000, faces), Q=95)
    with Server(db, "--data-dir", tmp_path, token=admin) as server:
        cid = server.client.post("/api/captures", json={"path": str(image), "preset": "accurate"}).json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = server.client.get(f"/api/captures/{cid}").json()
            if job["stage"] == "detect" and job["progress"]["done"] > 0:
                break
            time.sleep(0.1)
        assert job["stage"] == "detect", job
    # the server stopped its job: nothing of it runs, and the library holds finished bands
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in running if "gigaface.service.worker" in p and str(db) in p]
    with sqlite3.connect(db) as con:
        kept = dict(con.execute("SELECT frame || '/' || pass || '/' || band, rowid FROM bands_done").fetchall())
        stage = con.execute("SELECT stage FROM captures WHERE id = ?", (cid,)).fetchone()[0]
    assert kept and stage == "detect"
    with Server(db, "--data-dir", tmp_path, token=admin) as server:
        capture = server.wait_for(cid, timeout=300)
        assert capture["state"] == "done" and capture["pyramid"]
        found = server.client.get(f"/api/captures/{cid}/faces").json()["items"]
    with sqlite3.connect(db) as con:
        after = dict(con.execute("SELECT frame || '/' || pass || '/' || band, rowid FROM bands_done").fetchall())
    assert {k: after[k] for k in kept} == kept  # the bands done before the stop were not redone
    assert len(found) == len(faces)
    for cx, cy, s in faces:
        assert any(abs(f["box"][0] + f["box"][2] / 2 - cx) < s / 3 and abs(f["box"][1] + f["box"][3] / 2 - cy) < s / 3
                   for f in found)


# --- gigaface view ------------------------------------------------------------------------
def test_view_serves_one_library_locally_without_tokens(site, tmp_path):
    # The printed URL and its key, from a real `gigaface view`: test_service_security.py.
    with App(site["db"], local=True) as server:
        local = server.client  # with the key of this run, as the page opened from the printed URL
        assert local.get("/api/me").json() == {"role": "admin", "name": "local user", "mode": "local"}
        assert local.get("/api/captures").json()[0]["id"] == site["capture"]["id"]
        anonymous = server.bare()
        assert anonymous.get("/").status_code == 200 and "<html" in anonymous.get("/").text.lower()
        assert anonymous.get("/static/vendor/openseadragon/openseadragon.min.js").status_code == 200
        assert anonymous.get("/public/captures").status_code == 404  # no public view unless asked
    r = run_cli("view", tmp_path / "missing.db", "--no-browser")
    assert r.returncode == 2 and r.stderr.strip().startswith("gigaface: error:") and "Traceback" not in r.stderr


def _files(folder: Path) -> set[str]:
    return {str(p) for p in Path(folder).rglob("*") if p.is_file() and "-wal" not in p.name and "-shm" not in p.name
            and not p.name.endswith(".db")}


# --- the OpenAPI document ---------------------------------------------------------------------
# Slow (a minute of generated requests): the fast run checks each route's answers above and
# its paths under test_fuzz.py.
@pytest.mark.slow
def test_openapi_holds_under_schemathesis(tmp_path):
    """Every operation, with generated valid and invalid requests (bounded, seeded): no
    server errors, and every status code, content type and body is the one documented.

    `positive_data_acceptance` is left out: a schema cannot say that a path must name an
    existing image or that a photo must show a face, so such requests are rightly refused.
    """
    db = tmp_path / "fuzz.db"
    admin = make_token(db, "admin")
    image = write_image(tmp_path / "crowd.jpg", crowd(900, 600, FACES[:2]), Q=95)
    with Server(db, "--public", "--data-dir", tmp_path, token=admin) as server:
        server.wait_for(server.client.post("/api/captures", json={"path": str(image)}).json()["id"])
        st = Path(sys.executable).with_name("schemathesis")
        done = subprocess.run([str(st), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {admin}",
                               "--max-examples", "12", "--seed", "1", "--workers", "1", "--checks", "all",
                               "--exclude-checks", "positive_data_acceptance", "--request-timeout", "60"],
                              capture_output=True, text=True, timeout=280, cwd=tmp_path)
        log = server.stop()
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Traceback" not in log, log[-3000:]
