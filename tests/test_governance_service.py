"""Consent, erasure, audit and retention through the REST service (in this process, its jobs
in real job processes): the exports and pyramids it serves change with who consented or
asked to be forgotten."""
from __future__ import annotations

import math
import shutil
import time

import cv2
import numpy as np
import pytest

from gigaface.library.store import Library
from bench.harness import make_token
from tests.helpers import iou
from tests.inprocess import App
from tests.test_governance import detail

TILE = 254


@pytest.fixture(scope="module")
def site(stadium):
    built, db = stadium
    served = db.parent / "served.db"  # the CLI's scan, in a library of the service's own
    Library(str(db)).flush_deleted()
    shutil.copy(db, served)
    shutil.copy(str(db) + ".key", str(served) + ".key")
    db = served
    admin, viewer = make_token(db, "admin"), make_token(db, "viewer")
    with App(db, public=True, token=admin) as server:
        capture = server.wait_for(1)  # the CLI's scan gets its pyramids and exports from the service
        assert capture["state"] == "done" and capture["export"], capture
        faces = server.client.get("/api/captures/1/faces", params={"limit": 10_000}).json()["items"]
        target = max(faces, key=lambda f: iou(f["box"], built.target_box))
        yield {"server": server, "built": built, "db": db, "admin": admin, "viewer": viewer, "target": target,
               "original": cv2.cvtColor(cv2.imread(str(built.panorama)), cv2.COLOR_BGR2RGB)}


def as_viewer(site):
    return site["server"].bare(Authorization=f"Bearer {site['viewer']}")


def reference(site) -> dict:
    return {"photo": ("me.jpg", site["built"].reference.read_bytes(), "image/jpeg")}


def wait_rebuilt(server: App, capture_id: int = 1) -> dict:
    """The capture's job, queued again by a change of who is shown, is done."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        capture = server.client.get(f"/api/captures/{capture_id}").json()
        if capture["state"] == "done" and capture["export"] and capture["pyramid"]:
            return capture
        assert capture["state"] != "failed", capture
        time.sleep(0.3)
    raise AssertionError("the exports were not rebuilt in 240 s")


def export(site) -> np.ndarray:
    r = site["server"].client.get("/api/captures/1/export")
    assert r.status_code == 200
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def pyramid_image(site, which: str) -> np.ndarray:
    """The deepest level of a DeepZoom pyramid put back together from its tiles."""
    height, width = site["original"].shape[:2]
    level = math.ceil(math.log2(max(width, height)))
    image = np.zeros((height, width, 3), np.uint8)
    url = site["server"].client.get("/api/captures/1").json()["pyramid_url" if which == "pyramid" else "public_url"]
    for row in range(math.ceil(height / TILE)):
        for col in range(math.ceil(width / TILE)):
            r = site["server"].client.get(f"{url[:-len('.dzi')]}_files/{level}/{col}_{row}.jpg")
            assert r.status_code == 200
            tile = cv2.cvtColor(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            x0, y0 = col * TILE - (col > 0), row * TILE - (row > 0)  # one pixel of overlap on inner edges
            image[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile[: height - y0, : width - x0]
    return image


def test_governance_routes_are_for_admins(site):
    viewer = as_viewer(site)
    assert viewer.get("/api/captures/1/consents").status_code == 403
    assert viewer.post("/api/captures/1/consents", files=reference(site), data={"name": "x"}).status_code == 403
    assert viewer.delete("/api/consents/1").status_code == 403
    assert viewer.post("/api/forget", files={"photos": reference(site)["photo"]}).status_code == 403
    assert viewer.get("/api/audit").status_code == 403
    assert viewer.post("/api/purge").status_code == 403


def test_searches_are_audited_with_the_token(site):
    before = len(site["server"].client.get("/api/audit").json()["entries"])
    r = as_viewer(site).post("/api/captures/1/search", files={"photos": reference(site)["photo"]},
                             params={"top": 4})
    assert r.status_code == 200 and r.json()["matches"][0]["face_id"] == site["target"]["id"]
    audit = site["server"].client.get("/api/audit").json()
    assert audit["chain"]["ok"] is True
    log = audit["entries"]
    assert len(log) == before + 1
    entry = log[-1]
    assert entry["who"].startswith("token ") and "(viewer)" in entry["who"]
    assert (entry["purpose"], entry["captures"], entry["results"]) == ("search", [1], 4)
    assert entry["matches"] == sum(m["match"] for m in r.json()["matches"])


def test_consent_shows_the_person_in_the_export_and_public_view(site):
    server, target, original = site["server"], site["target"], site["original"]
    assert detail(export(site), target["box"]) < 0.5 * detail(original, target["box"])
    r = server.client.post("/api/captures/1/consents", files=reference(site), data={"name": "Eileen", "note": "form"})
    assert r.status_code == 201, r.text
    consent = r.json()
    assert consent["face_shown"] == target["id"] and consent["name"] == "Eileen"
    wait_rebuilt(server)
    assert detail(export(site), target["box"]) > 0.8 * detail(original, target["box"])
    assert detail(pyramid_image(site, "public"), target["box"]) > 0.6 * detail(original, target["box"])
    assert [c["id"] for c in server.client.get("/api/captures/1/consents").json()] == [consent["id"]]

    assert server.client.delete(f"/api/consents/{consent['id']}").status_code == 204
    assert server.client.delete(f"/api/consents/{consent['id']}").status_code == 404
    # Both changes are in the audit log under the token that made them, and the chain holds.
    audit = server.client.get("/api/audit").json()
    added, removed = [e for e in audit["entries"] if e["purpose"] in ("consent-add", "consent-remove")][-2:]
    assert (added["purpose"], removed["purpose"]) == ("consent-add", "consent-remove")
    assert added["who"].startswith("token ") and removed["who"] == added["who"]
    assert audit["chain"]["ok"] is True
    wait_rebuilt(server)
    assert detail(export(site), target["box"]) < 0.5 * detail(original, target["box"])


def test_forget_blurs_the_person_even_in_the_original_pyramid(site):
    server, target, original = site["server"], site["target"], site["original"]
    assert detail(pyramid_image(site, "pyramid"), target["box"]) > 0.6 * detail(original, target["box"])
    # A warm server: it has searched, and holds the library's templates and this ranking.
    before = server.client.post("/api/search", files={"photos": reference(site)["photo"]}).json()
    assert before["matches"][0]["face_id"] == target["id"]
    r = server.client.post("/api/forget", files={"photos": reference(site)["photo"]})
    assert r.status_code == 200, r.text
    report = r.json()
    assert target["id"] in report["captures"][0]["faces"] and report["faces_erased"] <= 3
    wait_rebuilt(server)
    assert detail(pyramid_image(site, "pyramid"), target["box"]) < 0.5 * detail(original, target["box"])
    assert server.client.get(f"/api/faces/{target['id']}/crop.jpg").status_code == 404
    assert server.client.get(f"/api/faces/{target['id']}").json()["erased"] is True
    found = server.client.post("/api/captures/1/search", files={"photos": reference(site)["photo"]}).json()
    assert target["id"] not in [m["face_id"] for m in found["matches"]]
    everywhere = server.client.post("/api/search", files={"photos": reference(site)["photo"]},
                                    params={"limit": 1000}).json()
    assert target["id"] not in [m["face_id"] for m in everywhere["matches"]]
    assert everywhere["searched"] == before["searched"] - report["faces_erased"]
    assert [e["purpose"] for e in server.client.get("/api/audit").json()["entries"]][-3:] == \
        ["erasure", "search", "search"]


def test_the_service_purges_expired_captures(site):
    server = site["server"]
    assert server.client.post("/api/search", files={"photos": reference(site)["photo"]}).json()["searched"] > 20
    Library(str(site["db"])).captures.set_expiry(1, time.time() - 60)
    purged = server.client.post("/api/purge").json()
    assert [p["capture"] for p in purged] == [1] and purged[0]["embeddings"] > 20
    assert server.client.get("/api/captures/1").status_code == 404
    found = server.client.post("/api/search", files={"photos": reference(site)["photo"]}).json()
    assert found["searched"] == 0 and found["matches"] == []
    assert not (site["db"].parent / "served.db.files" / "capture-1").exists()
