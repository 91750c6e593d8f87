"""The service under attack: pages of other sites, DNS rebinding, big bodies from strangers,
a killed reference worker, piles of event streams, server paths, cached tiles of a rebuilt
pyramid, file permissions and bad options. In this process (create_app behind TestClient)
where a request is all it takes; against real servers on 127.0.0.1 where the socket or the
process is the point (bodies not read, streams held open, workers killed, printed URLs)."""
from __future__ import annotations

import glob
import os
import re
import signal
import socket
import stat
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import cv2
import httpx
import pytest

from gigaface.library.store import Library
from gigaface.privacy.refresh import remove_outdated_files
from gigaface.library.tokens import create_token
from bench.harness import KEY_HEADER, Server, free_port, make_token, run_cli
from tests.helpers import crowd, face_patch, write_image
from tests.inprocess import App

FACES = [(300, 260, 110), (900, 500, 70)]  # cx, cy, face height: the first is the person searched for


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`serve --public --data-dir DATA` with one capture scanned through the API, and
    `view` on the same library, both in this process."""
    folder = tmp_path_factory.mktemp("security")
    data = folder / "data"
    data.mkdir()
    image = write_image(data / "crowd.jpg", crowd(1200, 800, FACES), Q=95)
    db = folder / "library.db"
    admin, viewer = make_token(db, "admin"), make_token(db, "viewer")
    with App(db, public=True, data_dir=data, token=admin) as server:
        created = server.client.post("/api/captures", json={"path": str(image), "preset": "fast"})
        assert created.status_code == 201, created.text
        capture = server.wait_for(created.json()["id"])
        assert capture["state"] == "done" and capture["export"], capture
        with App(db, local=True, port=8766) as local:
            yield SimpleNamespace(server=server, local=local, db=db, data=data, folder=folder, image=image,
                                  capture=capture, admin=admin, viewer=viewer)


@pytest.fixture(scope="module")
def real(site):
    """Real `gigaface serve` and `gigaface view` processes on the site's library, for what
    only a socket or a process shows."""
    with Server(site.db, "--public", "--data-dir", site.data, token=site.admin) as server, \
            Server(site.db, command="view") as local:
        yield SimpleNamespace(server=server, local=local)


def photo(face_height: float = 150) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(face_patch(face_height), cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def photos() -> list:
    return [("photos", ("me.jpg", photo(), "image/jpeg"))]


def bare(server: Server | App, **headers) -> httpx.Client:
    """A client of `server` that sends only the headers given (no token, no key)."""
    if isinstance(server, App):
        return server.bare(**headers)
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def faces_of(site) -> list[dict]:
    return site.server.client.get(f"/api/captures/{site.capture['id']}/faces").json()["items"]


# --- 1. gigaface view: the run's key, hosts, other sites ----------------------------------------
def test_view_prints_a_url_whose_fragment_holds_the_key(real):
    local = real.local
    assert local.url_printed == f"{local.url}/#key={local.key}" and len(local.key) >= 32


def test_local_api_and_tiles_need_the_run_key(site):
    local = site.local
    capture = local.client.get(f"/api/captures/{site.capture['id']}").json()
    tile = capture["pyramid_url"][: -len(".dzi")] + "_files/10/0_0.jpg"
    face = faces_of(site)[0]["id"]
    for path in ("/api/me", "/api/captures", capture["pyramid_url"], tile, f"/api/faces/{face}/crop.jpg"):
        for client in (bare(local), bare(local, **{KEY_HEADER: "not-the-key"})):
            r = client.get(path)
            assert r.status_code == 401, (path, r.status_code)
            assert r.headers["www-authenticate"] == "GigafaceKey" and "gigaface view" in r.json()["detail"]
        assert local.client.get(path).status_code == 200, path


def test_foreign_host_names_are_refused(site):
    """DNS rebinding: a page of rebind.attacker.example whose name now points at 127.0.0.1."""
    for server in (site.local, site.server):
        for path in ("/", "/api/health", "/api/captures", "/public/captures"):
            r = server.client.get(path, headers={"Host": f"rebind.attacker.example:{server.port}"})
            assert r.status_code == 421, (server.url, path, r.status_code)
            assert "Host" in r.json()["detail"]
        for host in ("localhost", "127.0.0.1", "[::1]"):
            assert server.client.get("/api/captures", headers={"Host": f"{host}:{server.port}"}).status_code == 200


def test_allow_host_adds_a_name(site):
    with App(site.db, allow_hosts=("Faces.Example.org",), token=site.viewer) as server:
        assert server.client.get("/api/me", headers={"Host": f"faces.example.org:{server.port}"}).status_code == 200
        assert server.client.get("/api/me", headers={"Host": "faces.example.org"}).status_code == 200
        assert server.client.get("/api/me", headers={"Host": "other.example.org"}).status_code == 421


@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
def test_pages_of_other_sites_cannot_change_anything(site, headers):
    """What the review did: a page POSTs a stranger's photo to /api/forget. Refused before
    the body is read, with or without the key; and with a token too."""
    before = faces_of(site)
    local = site.local
    for client in (bare(local, **headers), bare(local, **headers, **{KEY_HEADER: local.key or "none"})):
        r = client.post("/api/forget", params={"threshold": 0.6}, files=photos())
        assert r.status_code == 403, r.text
        assert client.post("/api/captures/upload", params={"filename": "x.jpg"},
                           content=b"\xff\xd8\xff" + bytes(100)).status_code == 403
    admin = bare(site.server, Authorization=f"Bearer {site.admin}", **headers)
    assert admin.delete(f"/api/captures/{site.capture['id']}").status_code == 403
    assert admin.post(f"/api/captures/{site.capture['id']}/consents", files={"photo": ("me.jpg", photo())},
                      data={"name": "x"}).status_code == 403
    assert faces_of(site) == before and all(f["embedded"] and not f["erased"] for f in before)


def test_another_port_of_this_machine_is_another_site(site):
    local = site.local
    other = {"Origin": f"http://127.0.0.1:{local.port + 1}", KEY_HEADER: local.key or "none"}
    assert bare(local, **other).post("/api/purge").status_code == 403


def test_the_page_itself_may_change_things(site):
    """A same-origin request, as the viewer page sends it, is let through."""
    local = site.local
    same = {"Origin": local.url, "Sec-Fetch-Site": "same-origin", KEY_HEADER: local.key or "none"}
    r = bare(local, **same).post("/api/forget", params={"dry_run": "true"}, files=photos())
    assert r.status_code == 200, r.text
    assert r.json()["dry_run"] is True


# --- thresholds and the dry run -----------------------------------------------------------------
def test_match_thresholds_are_bounded(site):
    api, cid = site.server.client, site.capture["id"]
    for value in (1.5, 2, 0, -0.1):
        assert api.post(f"/api/captures/{cid}/search", params={"threshold": value}, files=photos()).status_code == 422
    for value in (2, 0.7, 0):  # looser than the search's own operating point would erase strangers
        assert api.post("/api/forget", params={"threshold": value, "dry_run": "true"},
                        files=photos()).status_code == 422
    assert api.post(f"/api/captures/{cid}/search", params={"threshold": 1.0}, files=photos()).status_code == 200
    assert faces_of(site)[0]["embedded"]


def test_forget_dry_run_reports_and_changes_nothing(site):
    api, cid = site.server.client, site.capture["id"]
    before = api.get(f"/api/captures/{cid}").json()
    r = api.post("/api/forget", params={"dry_run": "true"}, files=photos())
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["dry_run"] is True and report["faces_erased"] >= 1
    would = report["captures"][0]["faces"]
    after = api.get(f"/api/captures/{cid}").json()
    assert (after["state"], after["pyramid_url"], after["public_url"]) == \
           (before["state"], before["pyramid_url"], before["public_url"])  # nothing rebuilt
    for face in would:
        assert api.get(f"/api/faces/{face}").json()["erased"] is False
        assert api.get(f"/api/faces/{face}/crop.jpg").status_code == 200
    assert api.get("/api/audit").json()["entries"][-1]["purpose"] == "erasure-dry-run"  # a search too


# --- 2. bodies are not read before the caller is known ------------------------------------------
def first_answer(port: int, head: str, body: bytes, timeout: float = 30) -> int | None:
    """Send a request's head and the start of its body, then read the status line: a server
    that reads the announced body first has nothing to say yet (None on timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        try:
            line = s.makefile("rb").readline()
        except (TimeoutError, socket.timeout):
            return None
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


def head(server: Server, path: str, length: int, kind: str, auth: str = "") -> str:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Type: {kind}",
             f"Content-Length: {length}"]
    return "\r\n".join(lines + ([f"Authorization: Bearer {auth}"] if auth else []))


def test_bodies_are_refused_before_they_are_read(site, real):
    server, cid = real.server, site.capture["id"]
    announced = 100 << 20   # under the largest body the service takes
    start = b"-" * (64 << 10)
    multipart = "multipart/form-data; boundary=xyz"
    assert first_answer(server.port, head(server, "/api/captures", announced, "application/json"), start) == 401
    assert first_answer(server.port, head(server, f"/api/captures/{cid}/search", announced, multipart), start) == 401
    assert first_answer(server.port, head(server, "/api/forget", announced, multipart, site.viewer), start) == 403
    # a capture registration is a few hundred bytes: a megabyte is refused at once
    assert first_answer(server.port, head(server, "/api/captures", 1 << 20, "application/json", site.admin),
                        start) == 413
    assert first_answer(real.local.port, head(real.local, "/api/forget", announced, multipart), start) == 401
    assert server.client.get("/api/health").status_code == 200


def test_chunked_bodies_over_a_route_limit_are_refused(real):
    def chunks():
        for _ in range(4):
            yield b" " * (32 << 10)

    r = real.server.client.post("/api/captures", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "64 KB" in r.json()["detail"]


# --- 3. a killed reference worker -------------------------------------------------------------
def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    found = []
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.split("/")[2]))
    return found


def reference_workers(pid: int) -> list[int]:
    workers = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:  # not the resource tracker, not a job worker
            workers.append(child)
    return workers


def ram_files(*pids: int) -> set[str]:
    """The photos these processes hold in RAM (other processes on this machine may hold
    theirs): a server and its reference workers, whichever of them would write one."""
    return {path for pid in pids for path in glob.glob(f"/dev/shm/gigaface-ref-{pid}-*")}


def test_a_killed_reference_worker_is_replaced(site, real):
    api, cid, server = real.server.client, site.capture["id"], real.server
    before = ram_files(server.process.pid)
    assert api.post(f"/api/captures/{cid}/search", files=photos()).status_code == 200
    workers = reference_workers(server.process.pid)
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    r = api.post(f"/api/captures/{cid}/search", files=photos())
    assert r.status_code == 200, r.text
    assert r.json()["matches"][0]["match"] is True
    assert api.post("/api/forget", params={"dry_run": "true"}, files=photos()).status_code == 200
    replaced = reference_workers(server.process.pid)
    assert replaced and not set(replaced) & set(workers)
    assert ram_files(server.process.pid, *workers, *replaced) == before


def test_a_worker_killed_mid_photo_leaves_no_ram_file():
    """The pool itself, in this process: the worker dies while it has the photo; the
    parent retries on a new pool and removes the RAM file it wrote."""
    from gigaface.references import ReferencePool

    me = os.getpid()
    before, others = ram_files(me), set(children(me))
    pool = ReferencePool(workers=1)
    result = {}
    asking = threading.Thread(target=lambda: result.update(ref=pool.reference("me.jpg", photo())))
    try:
        asking.start()
        deadline = time.monotonic() + 60
        while not (ram_files(me) - before) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ram_files(me) - before, "the photo never reached RAM"
        # The module's in-process server may hold reference workers of its own (`others`):
        # wait for this pool's, which starts when the photo is handed over.
        killed = []
        while not killed and time.monotonic() < deadline:
            killed = [pid for pid in reference_workers(me) if pid not in others]
            time.sleep(0.01)
        assert killed, "the pool's worker never started"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        asking.join(timeout=120)
    finally:
        pool.close()
    assert result["ref"].path == "me.jpg" and result["ref"].faces_in_photo == 1
    assert ram_files(me, *killed, *reference_workers(me)) == before


# --- 4. event streams and big photos ----------------------------------------------------------
def job_worker_of(server: Server, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children(server.process.pid):
            try:
                if b"gigaface.service.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError("no job worker started")


def open_stream(stack: ExitStack, server: Server, token: str, capture_id: int) -> int:
    """Open an event stream, left open until `stack` closes; returns its status (200 once
    its first event came)."""
    client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30,
                                              headers={"Authorization": f"Bearer {token}"}))
    response = stack.enter_context(client.stream("GET", f"/api/captures/{capture_id}/events"))
    if response.status_code == 200:
        lines = response.iter_lines()
        stack.callback(lines.close)  # a line iterator dropped now would close the stream with it
        assert next(lines).startswith("data: ")
    return response.status_code


def test_event_streams_are_capped_and_the_rest_still_answers(tmp_path):
    from gigaface.service.streams import MAX_STREAMS, MAX_STREAMS_PER_CALLER

    db = tmp_path / "streams.db"
    admin = make_token(db, "admin")
    library = Library(str(db))
    viewers = [create_token(library, f"wall {k}", "viewer")[1] for k in range(MAX_STREAMS // MAX_STREAMS_PER_CALLER + 1)]
    library.close()
    image = write_image(tmp_path / "scan.png", crowd(1600, 1000, FACES))
    with Server(db, token=admin) as server:
        cid = server.client.post("/api/captures/upload", params={"filename": "scan.png"},
                                 content=image.read_bytes()).json()["id"]
        worker = job_worker_of(server)
        os.kill(worker, signal.SIGSTOP)  # the capture stays in progress: its streams stay open
        try:
            with ExitStack() as stack:
                first = viewers[0]
                assert [open_stream(stack, server, first, cid) for _ in range(MAX_STREAMS_PER_CALLER)] == \
                       [200] * MAX_STREAMS_PER_CALLER
                assert open_stream(stack, server, first, cid) == 429  # one caller's cap
                for token in viewers[1:-1]:
                    for _ in range(MAX_STREAMS_PER_CALLER):
                        assert open_stream(stack, server, token, cid) == 200
                assert open_stream(stack, server, viewers[-1], cid) == 429  # everyone's cap
                # every other request is answered while the streams are open
                assert server.client.get("/api/captures").status_code == 200
                assert server.client.get(f"/api/captures/{cid}/faces").status_code == 200
            # closed streams give their slots back
            deadline = time.monotonic() + 30
            with ExitStack() as stack:
                while open_stream(stack, server, first, cid) != 200:
                    assert time.monotonic() < deadline, "the slots of closed streams were not given back"
                    time.sleep(0.5)
        finally:
            os.kill(worker, signal.SIGCONT)


def test_a_big_reference_photo_is_shrunk_before_detection(tmp_path, detector):
    from gigaface.references import REFERENCE_PIXELS, bounded_photo, reference

    canvas = crowd(6000, 4000, [(2500, 1800, 700)])
    big = write_image(tmp_path / "big.jpg", canvas, Q=90)
    with bounded_photo(str(big)) as (copy, scale):
        import pyvips

        shrunk = pyvips.Image.new_from_file(copy)
        assert copy != str(big) and shrunk.width * shrunk.height <= REFERENCE_PIXELS
        assert scale == pytest.approx(shrunk.width / 6000)
    assert not os.path.exists(copy)
    ref = reference(str(big), detector)
    x, y, w, h = ref.box  # in the photo's own pixels
    assert abs(x + w / 2 - 2500) < 60 and abs(y + h / 2 - 1800) < 60 and 300 < h < 1000
    small = write_image(tmp_path / "small.jpg", canvas[1000:2600, 1700:3300], Q=90)
    with bounded_photo(str(small)) as (same, scale):
        assert (same, scale) == (str(small), 1.0)


# --- 5. server paths ----------------------------------------------------------------------------
def test_without_a_data_dir_captures_come_by_upload_only(site):
    with App(site.db, token=site.admin) as server:
        r = server.client.post("/api/captures", json={"path": str(site.image)})
        assert r.status_code == 403 and "--data-dir" in r.json()["detail"]


def test_paths_stay_in_the_data_dir_and_name_regular_files(site, tmp_path):
    api, data = site.server.client, site.data
    outside_real = tmp_path / "secret.jpg"
    outside_real.write_bytes(site.image.read_bytes())
    details = []
    for path in (outside_real, tmp_path / "missing.jpg", "/etc/passwd", "/etc/no-such-file", "../secret.jpg"):
        r = api.post("/api/captures", json={"path": str(path)})
        assert r.status_code == 403, (path, r.text)
        details.append(r.json()["detail"].replace(str(path), "PATH"))
    assert len(set(details)) == 1  # the same answer whether or not the file exists
    link = data / "link.jpg"
    link.symlink_to(outside_real)
    assert api.post("/api/captures", json={"path": str(link)}).status_code == 403
    fifo = data / "camera.jpg"
    os.mkfifo(fifo)
    r = api.post("/api/captures", json={"path": str(fifo)})
    assert r.status_code == 400 and "not a regular file" in r.json()["detail"]
    (data / "fifo.json").write_text('{"frames": [{"file": "camera.jpg"}]}')
    r = api.post("/api/captures", json={"path": "fifo.json"})
    assert r.status_code == 400 and "frame 0: not a regular file" in r.json()["detail"]
    (data / "out.json").write_text('{"frames": [{"file": "../%s"}]}' % os.path.relpath(outside_real, data.parent))
    assert api.post("/api/captures", json={"path": str(data / "out.json")}).status_code == 403
    assert api.get("/api/health").status_code == 200


def test_viewers_see_file_names_not_server_paths(site):
    cid = site.capture["id"]
    library = Library(str(site.db))
    library.jobs.update(cid, error=f"{site.image}: the image is gone")  # as a failed job says it
    try:
        as_admin = site.server.client.get(f"/api/captures/{cid}").json()
        as_viewer = bare(site.server, Authorization=f"Bearer {site.viewer}").get(f"/api/captures/{cid}").json()
    finally:
        library.jobs.update(cid, error=None)
        library.close()
    assert as_admin["source"] == str(site.image) and as_admin["error"] == f"{site.image}: the image is gone"
    assert as_viewer["source"] == "crowd.jpg" and as_viewer["error"] == "crowd.jpg: the image is gone"
    assert str(site.data) not in str(as_viewer)


# --- 6. pyramid URLs change with every build -------------------------------------------------------
def tiles(dzi_url: str) -> str:
    return dzi_url[: -len(".dzi")] + "_files"


def test_a_rebuilt_pyramid_has_new_urls_and_the_old_answer_404(site):
    api, cid, anonymous = site.server.client, site.capture["id"], bare(site.server)
    old = api.get(f"/api/captures/{cid}").json()
    old_public = anonymous.get("/public/captures").json()[0]["url"]
    for url in (old["pyramid_url"], old["public_url"], old_public):
        assert re.fullmatch(r"/(api|public)/captures/\d+/(pyramid/|public/)?[0-9a-f]{16}\.dzi", url), url
        assert (anonymous if url.startswith("/public") else api).get(f"{tiles(url)}/10/0_0.jpg").status_code == 200
    assert api.get(f"/api/captures/{cid}/pyramid.dzi").status_code == 404       # no unversioned URLs
    assert api.get(f"/api/captures/{cid}/pyramid_files/10/0_0.jpg").status_code == 404
    # who is shown changed (as after an erasure): the files are removed and made again
    remove_outdated_files(str(site.db), cid, originals_too=True)
    Library(str(site.db)).jobs.put(cid, stage="pyramid")
    deadline = time.monotonic() + 240
    new = api.get(f"/api/captures/{cid}").json()
    assert new["pyramid_url"] is None  # nothing outdated is served meanwhile
    while not (new["state"] == "done" and new["pyramid_url"] and new["public_url"] and new["export"]):
        assert time.monotonic() < deadline, new
        time.sleep(0.3)
        new = api.get(f"/api/captures/{cid}").json()
    assert new["pyramid_url"] != old["pyramid_url"] and new["public_url"] != old["public_url"]
    for url in (old["pyramid_url"], f"{tiles(old['pyramid_url'])}/10/0_0.jpg", old["public_url"],
                f"{tiles(old['public_url'])}/10/0_0.jpg"):
        assert api.get(url).status_code == 404, url
    assert anonymous.get(f"{tiles(old_public)}/10/0_0.jpg").status_code == 404
    assert api.get(f"{tiles(new['pyramid_url'])}/10/0_0.jpg").status_code == 200
    assert anonymous.get("/public/captures").json()[0]["url"] != old_public


def test_face_crops_are_not_kept_in_browser_caches(site):
    """A crop cached for an hour outlived the erasure of its face: crops are never stored."""
    face = faces_of(site)[0]["id"]
    r = site.server.client.get(f"/api/faces/{face}/crop.jpg")
    assert r.status_code == 200 and "no-store" in r.headers["cache-control"]


# --- 7. permissions -------------------------------------------------------------------------------
def test_the_files_of_a_library_are_its_owners_only(site):
    api = site.server.client
    image = write_image(site.folder / "up.png", crowd(1000, 700, FACES[1:], seed=4))
    cid = api.post("/api/captures/upload", params={"filename": "up.png"}, content=image.read_bytes()).json()["id"]
    assert site.server.wait_for(cid)["state"] == "done"
    root = Path(str(site.db) + ".files")
    seen = {"dirs": 0, "files": 0}
    for folder, dirs, files in os.walk(root):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        seen["dirs"] += 1
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
            assert mode & 0o077 == 0, (os.path.join(folder, name), oct(mode))
            seen["files"] += 1
    assert seen["dirs"] > 5 and seen["files"] > 10  # uploads, pyramids, exports
    assert api.delete(f"/api/captures/{cid}").status_code == 204


# --- 8. options, restarts, names, docs ------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["serve", "--port", "-1"], "--port -1"),
    (["serve", "--port", "70000"], "--port 70000"),
    (["view", "--port", "-5"], "--port -5"),
    (["serve", "--host", "999.1.1.1"], "not a valid IP address"),
    (["serve", "--host", "10.255.255.254"], "not an address of this machine"),
    (["serve", "--max-upload-mb", "-1"], "--max-upload-mb"),
    (["serve", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", "--max-pixels", "0"], "--max-pixels"),
    (["serve", "--data-dir", "/no/such/folder"], "--data-dir"),
    (["serve", "--allow-host", "http://evil/"], "--allow-host"),
])
def test_bad_server_options_are_one_line_errors(tmp_path, args, words):
    extra = ["--no-browser"] if args[0] == "view" else []
    done = run_cli(args[0], tmp_path / "lib.db", *args[1:], *extra, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("gigaface: error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.stderr, done.stderr
    if "--host" in args:
        assert "port" not in lines[0]


def test_serve_starts_again_at_once_on_the_same_port(tmp_path):
    db = tmp_path / "restart.db"
    token = make_token(db, "viewer")
    port = free_port()
    with Server(db, token=token, port=port) as server:
        for _ in range(5):  # keep-alive connections, closed by the server when it stops
            assert server.client.get("/api/captures").status_code == 200
    with Server(db, token=token, port=port) as again:
        assert again.client.get("/api/captures").status_code == 200


def test_docs_load_nothing_from_elsewhere(site):
    anonymous = bare(site.server)
    page = anonymous.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert urls and not [u for u in urls if not u.startswith("/")], urls
    for url in urls:
        assert anonymous.get(url).status_code == 200, url
    assert "url: '/openapi.json'" in page.text
