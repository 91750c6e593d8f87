"""Consent, erasure, the audit log, retention and embeddings encrypted at rest, through the
real `gigaface` command on a small stadium (strangers and one target with a reference photo)."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from bench.harness import run_cli
from tests.conftest import shared_data
from tests.helpers import as_schema_4, drop_column, iou, read_image


@pytest.fixture
def lib(stadium, tmp_path):
    """(scene, a fresh copy of the scanned library and its key file)."""
    built, db = stadium
    copy = tmp_path / "lib.db"
    Library(str(db)).flush_deleted()  # everything in the main file, so a copy of it is whole
    shutil.copy(db, copy)
    shutil.copy(str(db) + ".key", str(copy) + ".key")
    return built, copy


def ok(*args) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fails(*args) -> str:
    """The command's one-line error (exit 2, no traceback)."""
    done = run_cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaface: error: "), done.stderr
    return lines[0]


def target_face(built, db) -> dict:
    faces = json.loads(ok("faces", db, "--json"))
    best = max(faces, key=lambda f: iou(f["box"], built.target_box))
    assert iou(best["box"], built.target_box) > 0.4
    return best


def detail(rgb: np.ndarray, box) -> float:
    """High-frequency energy inside the middle of a face box: what a blur removes."""
    x, y, w, h = box
    crop = rgb[int(y + h * 0.2) : int(y + h * 0.8), int(x + w * 0.2) : int(x + w * 0.8)]
    return float(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


# --- encryption at rest -----------------------------------------------------------------
def test_embeddings_are_sealed_in_the_file(lib):
    _, db = lib
    key_file = Path(str(db) + ".key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    library = Library(str(db))
    ids, vectors = library.faces.embeddings()
    assert len(ids) > 20
    blocks = sqlite3.connect(db).execute("SELECT faces, sealed FROM face_blocks").fetchall()
    assert sum(n for n, _ in blocks) == len(ids)
    for n, sealed in blocks:  # header, ids, float16 matrix; nonce and tag
        assert len(sealed) == 12 + n * (8 + 128 * 2) + 12 + 16
    stored = vectors.astype(np.float16)
    for vector in stored[:20]:
        assert not any(vector.tobytes()[:16] in sealed for _, sealed in blocks)
    assert not any(ids[:4].astype("<i8").tobytes() in sealed for _, sealed in blocks)


def test_without_the_key_a_library_lists_but_does_not_search(lib, tmp_path):
    built, db = lib
    key_file = Path(str(db) + ".key")
    elsewhere = tmp_path / "kept-apart.key"
    key_file.rename(elsewhere)
    assert "stadium.jpg" in ok("captures", db)
    assert len(json.loads(ok("faces", db, "--json"))) > 20
    message = fails("find", db, "--photo", built.reference)
    assert "encrypted" in message and "--key-file" in message
    assert "rank" in ok("--key-file", elsewhere, "find", db, "--photo", built.reference, "--top", "1")
    os.environ["GIGAFACE_KEY"] = elsewhere.read_text().strip()
    try:
        assert "rank" in ok("find", db, "--photo", built.reference, "--top", "1")
    finally:
        del os.environ["GIGAFACE_KEY"]
    wrong = tmp_path / "wrong.key"
    wrong.write_text("A" * 43 + "=\n")
    wrong.chmod(0o600)
    assert "not this library's key" in fails("--key-file", wrong, "find", db, "--photo", built.reference)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    assert "not a gigaface key" in fails("--key-file", garbage, "captures", db)


def _unseal_crops(con, key) -> dict[int, bytes]:
    """The library's crops made plain again, as schema 3 and older kept them."""
    crops = {i: key.unseal(c, b"crop") for i, c in con.execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL")}
    con.executemany("UPDATE faces SET crop = ? WHERE id = ?", [(c, i) for i, c in crops.items()])
    return crops


def test_an_older_library_is_migrated_and_its_embeddings_sealed(lib):
    _, db = lib
    ids, vectors = Library(str(db)).faces.embeddings()
    # Turn the copy back into a schema-2 library: plain embeddings and crops, no governance tables.
    key = Library(str(db)).key()
    con = sqlite3.connect(db, isolation_level=None)
    drop_column(con, "faces", "listed")
    as_schema_4(con, key)
    con.executescript("DROP TABLE consents; DROP TABLE searches; ALTER TABLE faces DROP COLUMN erased;"
                      " ALTER TABLE captures DROP COLUMN expires_at;"
                      " DELETE FROM meta WHERE key IN ('key_check', 'retention_days', 'audit_head');"
                      " UPDATE meta SET value = '2' WHERE key = 'schema';")
    con.executemany("UPDATE faces SET embedding = ? WHERE id = ?",
                    [(key.unseal(blob), i) for i, blob in con.execute("SELECT id, embedding FROM faces"
                                                                      " WHERE embedding IS NOT NULL").fetchall()])
    crops = _unseal_crops(con, key)
    con.close()
    migrated = Library(str(db))
    again_ids, again = migrated.faces.embeddings()
    assert np.array_equal(ids, again_ids) and np.array_equal(vectors, again)
    assert migrated.captures.all()[0].expires_at > time.time() + 29 * 86400  # dated from the migration
    on_disk = b"".join(Path(str(db) + s).read_bytes() for s in ("", "-wal") if os.path.exists(str(db) + s))
    assert vectors[0].tobytes()[:64] not in on_disk and vectors[0].astype(np.float16).tobytes()[:32] not in on_disk
    assert all(migrated.faces.crop(i) == c for i, c in crops.items())  # sealed once, not twice
    assert migrated.audit.log().verdict.ok


def _as_schema_3(db) -> tuple[dict[int, bytes], int]:
    """Turn a library back into what gigaface made before schema 4: crops in clear, no audit
    chain or head, a file others may read. Returns (the crops, rows in the log)."""
    key = Library(str(db)).key()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN")
    crops = _unseal_crops(con, key)
    con.execute("ALTER TABLE searches DROP COLUMN chain")
    drop_column(con, "faces", "listed")
    as_schema_4(con, key)
    con.execute("DELETE FROM meta WHERE key = 'audit_head'")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    con.execute("COMMIT")
    rows = con.execute("SELECT COUNT(*) FROM searches").fetchone()[0]
    con.close()
    os.chmod(db, 0o644)
    return crops, rows


def test_a_schema_3_library_gets_its_crops_sealed_and_its_log_chained(lib):
    built, db = lib
    ok("find", db, "--photo", built.reference, "--top", "2")  # a log entry from before the upgrade
    crops, rows = _as_schema_3(db)
    assert rows == 1 and all(c.startswith(b"\xff\xd8") for c in crops.values())  # plain JPEGs, as schema 3 had
    migrated = Library(str(db))
    assert migrated.meta("schema") == "5"
    # What a copy taken now holds (the library still open, as a running service keeps it):
    # no plain crop, neither in the main file's old pages nor in the WAL.
    on_disk = b"".join(Path(str(db) + s).read_bytes() for s in ("", "-wal") if os.path.exists(str(db) + s))
    assert not any(c[:256] in on_disk for c in crops.values())
    raw = dict(sqlite3.connect(db).execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL"))
    assert raw.keys() == crops.keys()
    assert not any(blob.startswith(b"\xff\xd8") or crops[i] in blob for i, blob in raw.items())
    assert all(migrated.faces.crop(i) == c for i, c in crops.items())
    log = migrated.audit.log()
    assert log.verdict.ok and log.verdict.rows == 1 and log[0].purpose == "search"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_a_schema_3_library_without_its_key_is_not_half_migrated(lib, tmp_path):
    _, db = lib
    crops, _ = _as_schema_3(db)
    os.rename(str(db) + ".key", tmp_path / "apart.key")
    message = fails("captures", db)
    assert "schema 3" in message and "--key-file" in message
    con = sqlite3.connect(db)  # untouched: still schema 3, crops still as they were
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "3"
    assert dict(con.execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL")) == crops
    con.close()
    assert "stadium.jpg" in ok("--key-file", tmp_path / "apart.key", "captures", db)
    assert Library(str(db)).meta("schema") == "5"


# --- crops are biometric too ----------------------------------------------------------------
def test_crops_are_sealed_and_shown_only_with_the_key(lib, tmp_path):
    _, db = lib
    raw = sqlite3.connect(db).execute("SELECT id, crop FROM faces WHERE crop IS NOT NULL").fetchall()
    assert len(raw) > 20
    for _, blob in raw:  # nothing in the file decodes as a picture
        assert cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR) is None
    library = Library(str(db))
    face_id = raw[0][0]
    crop = cv2.imdecode(np.frombuffer(library.faces.crop(face_id), np.uint8), cv2.IMREAD_COLOR)
    assert crop is not None and min(crop.shape[:2]) > 8
    os.rename(str(db) + ".key", tmp_path / "apart.key")
    with pytest.raises(GigafaceError, match="no key was given"):
        Library(str(db)).faces.crop(face_id)


def test_a_copied_library_without_its_key_shows_no_face(tmp_path):
    """The review's attack: crops read out of a copied lib.db re-embedded into working
    templates (a real photo's crop matched its person at 0.355). Now they do not decode."""
    photo = shared_data("face_recognition_examples", "obama.jpg")
    db = tmp_path / "lib.db"
    done = run_cli("scan", photo, "--db", db, "--quiet")
    assert done.returncode == 0, done.stderr
    Library(str(db)).flush_deleted()
    copy = tmp_path / "copied.db"
    shutil.copy(db, copy)  # the file alone, as an attacker would take it
    rows = sqlite3.connect(copy).execute("SELECT crop, block FROM faces").fetchall()
    assert rows and all(crop for crop, _ in rows)
    for crop, _ in rows:
        assert cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR) is None
    with pytest.raises(GigafaceError, match="encrypted"):
        Library(str(copy)).faces.crop(1)


def test_the_library_and_its_key_are_owner_only(lib):
    built, db = lib
    fresh = db.parent / "fresh.db"
    done = run_cli("scan", built.reference, "--db", fresh, "--quiet")
    assert done.returncode == 0, done.stderr
    for path in (fresh, Path(str(fresh) + ".key")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    library = Library(str(fresh))  # open: SQLite makes the -wal and -shm now
    library.captures.all()
    for suffix in ("-wal", "-shm"):
        assert stat.S_IMODE(os.stat(str(fresh) + suffix).st_mode) == 0o600, suffix


# --- consent -------------------------------------------------------------------------------
def test_consent_reveals_only_the_person_in_exports(lib, tmp_path):
    built, db = lib
    target = target_face(built, db)
    out = ok("consent", "add", db, "--photo", built.reference, "--name", "Eileen", "--note", "form 12")
    assert f"shown unblurred: face {target['id']}" in out
    listed = json.loads(ok("consent", "list", db, "--json"))
    assert [(c["name"], c["note"], c["faces_shown"]) for c in listed] == [("Eileen", "form 12", [target["id"]])]
    assert abs(listed[0]["created_at"] - time.time()) < 600

    export = tmp_path / "public.jpg"
    ok("blur", built.panorama, "--db", db, "--out", export)
    original, public = read_image(built.panorama), read_image(export)
    assert detail(public, target["box"]) > 0.8 * detail(original, target["box"])  # shown
    others = [f for f in json.loads(ok("faces", db, "--json")) if f["id"] != target["id"] and f["box"][3] >= 24]
    blurred = [detail(public, f["box"]) < 0.5 * detail(original, f["box"]) for f in others]
    assert len(others) > 20 and all(blurred)

    ok("consent", "remove", db, str(listed[0]["id"]))
    assert json.loads(ok("consent", "list", db, "--json")) == []
    ok("blur", built.panorama, "--db", db, "--out", export)
    assert detail(read_image(export), target["box"]) < 0.5 * detail(original, target["box"])


def test_consent_errors(lib, tmp_path):
    built, db = lib
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    assert "no face" in fails("consent", "add", db, "--photo", blank, "--name", "Nobody")
    assert "no consent 99" in fails("consent", "remove", db, "99")
    assert "no capture 7" in fails("consent", "add", db, "--photo", built.reference, "--name", "X", "--capture", "7")
    assert Library(str(db)).consents.all() == []


# --- erasure -------------------------------------------------------------------------------
def test_forget_erases_the_person_everywhere_and_for_good(lib, tmp_path):
    built, db = lib
    target = target_face(built, db)
    ok("consent", "add", db, "--photo", built.reference, "--name", "Eileen")
    before = sqlite3.connect(db).execute("SELECT b.sealed, f.crop, b.id FROM faces f JOIN face_blocks b"
                                         " ON b.id = f.block WHERE f.id = ?", (target["id"],)).fetchone()
    assert before[0] and before[1]

    report = json.loads(ok("forget", db, "--photo", built.reference, "--json"))
    assert report["faces_erased"] >= 1 and report["consents_removed"] == 1
    erased_ids = report["captures"][0]["faces"]
    assert target["id"] in erased_ids and len(erased_ids) <= 3  # the person, not the crowd

    con = sqlite3.connect(db)
    row = con.execute("SELECT block, crop, erased FROM faces WHERE id = ?", (target["id"],)).fetchone()
    assert row == (None, None, 1)
    # Its block was written again without it, under a new id; the others kept theirs.
    assert con.execute("SELECT COUNT(*) FROM face_blocks WHERE id = ?", (before[2],)).fetchone()[0] == 0
    con.close()
    assert target["id"] not in Library(str(db)).faces.embeddings()[0]
    for path in (db, Path(str(db) + "-wal")):  # not lingering in freed pages or the WAL either
        if path.exists():
            data = path.read_bytes()
            assert before[0] not in data and before[1][-200:] not in data  # (JPEG headers are all alike)
    faces = {f["id"]: f for f in json.loads(ok("faces", db, "--json"))}
    assert faces[target["id"]]["erased"] and not faces[target["id"]]["embedded"]

    found = json.loads(ok("find", db, "--photo", built.reference, "--json", "--top", "3"))
    assert target["id"] not in [m["face_id"] for m in found] and not any(m["match"] for m in found)
    assert json.loads(ok("consent", "list", db, "--json")) == []
    # a consent from the same photo cannot bring the erased face back
    ok("consent", "add", db, "--photo", built.reference, "--name", "Eileen again")
    export = tmp_path / "public.jpg"
    ok("blur", built.panorama, "--db", db, "--out", export)
    original = read_image(built.panorama)
    assert detail(read_image(export), target["box"]) < 0.5 * detail(original, target["box"])


def test_an_erased_person_stays_erased_through_a_rescan(lib):
    built, db = lib
    target = target_face(built, db)
    ok("forget", db, "--photo", built.reference)
    last_id = max(f["id"] for f in json.loads(ok("faces", db, "--json")))
    ok("scan", built.panorama, "--db", db, "--preset", "fast", "--quiet")  # other settings: faces found anew
    faces = json.loads(ok("faces", db, "--json"))
    assert all(f["id"] > last_id for f in faces if not f["erased"])
    near = [f for f in faces if iou(f["box"], target["box"]) > 0.3]
    assert [(f["id"], f["erased"], f["embedded"]) for f in near] == [(target["id"], True, False)]
    found = json.loads(ok("find", db, "--photo", built.reference, "--json", "--top", "3"))
    assert not any(iou(m["box"], target["box"]) > 0.3 for m in found)


# --- audit log -----------------------------------------------------------------------------
def test_every_search_is_audited_and_the_log_is_append_only(lib):
    built, db = lib
    ok("find", db, "--photo", built.reference, "--top", "5")
    ok("find", db, "--photo", built.reference, "--top", "2")
    ok("forget", db, "--photo", built.reference)
    log = json.loads(ok("audit", db, "--json"))
    assert [e["purpose"] for e in log] == ["search", "search", "erasure"]
    assert [e["results"] for e in log[:2]] == [5, 2] and log[0]["matches"] >= 1
    assert log[0]["who"].startswith("local ") and log[0]["captures"] == [1]
    assert log[0]["reference_hash"] == log[1]["reference_hash"] and len(log[0]["reference_hash"]) == 64
    assert "3 search(es)" in ok("audit", db)
    con = sqlite3.connect(db)
    for statement in ("DELETE FROM searches", "UPDATE searches SET who = 'nobody'"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(statement)
    assert con.execute("SELECT COUNT(*) FROM searches").fetchone()[0] == 3


def test_consents_and_dry_runs_are_audited(lib, monkeypatch):
    built, db = lib
    monkeypatch.setenv("LOGNAME", "mallory")  # getpass would believe this; the log does not
    monkeypatch.setenv("USER", "mallory")
    ok("consent", "add", db, "--photo", built.reference, "--name", "Eileen")
    (consent,) = json.loads(ok("consent", "list", db, "--json"))
    ok("consent", "remove", db, str(consent["id"]))
    log = json.loads(ok("audit", db, "--json"))
    assert [e["purpose"] for e in log] == ["consent-add", "consent-remove"]
    added, removed = log
    assert added["captures"] == removed["captures"] == [1]
    assert added["results"] > 20 and added["matches"] == 1  # faces compared, the one it reveals
    assert added["reference_hash"] == removed["reference_hash"]  # the same person's template
    assert added["who"] == f"local {pwd.getpwuid(os.getuid()).pw_name}" != "local mallory"


def test_forget_dry_run_changes_nothing(lib):
    built, db = lib
    target = target_face(built, db)
    ok("consent", "add", db, "--photo", built.reference, "--name", "Eileen")
    state = ("SELECT id, block, crop, erased FROM faces ORDER BY id", "SELECT id, sealed FROM face_blocks ORDER BY id")
    before = [sqlite3.connect(db).execute(sql).fetchall() for sql in state]
    files = Path(str(db) + ".files") / "capture-1"
    files.mkdir(parents=True, exist_ok=True)
    (files / "pyramid.dzi").write_text("<Image/>")  # as `serve` leaves it: a dry run rebuilds nothing
    report = json.loads(ok("forget", db, "--photo", built.reference, "--dry-run", "--json"))
    assert report["dry_run"] and report["rebuilt"] == []
    assert target["id"] in report["captures"][0]["faces"] and report["consents_removed"] == 1
    assert [sqlite3.connect(db).execute(sql).fetchall() for sql in state] == before
    assert len(json.loads(ok("consent", "list", db, "--json"))) == 1
    assert (files / "pyramid.dzi").read_text() == "<Image/>"
    assert json.loads(ok("audit", db, "--json"))[-1]["purpose"] == "erasure-dry-run"
    assert "would be erased" in ok("forget", db, "--photo", built.reference, "--dry-run")


# --- retention -----------------------------------------------------------------------------
def test_captures_expire_and_purge_removes_them(lib):
    built, db = lib
    library = Library(str(db))
    capture = library.captures.all()[0]
    assert abs(capture.expires_at - capture.created_at - 30 * 86400) < 1
    assert "30 days" in ok("retention", db)
    ok("retention", db, "--days", "7", "--existing")
    assert abs(Library(str(db)).captures.all()[0].expires_at - capture.created_at - 7 * 86400) < 1

    files = Path(str(db) + ".files") / f"capture-{capture.id}"
    files.mkdir(parents=True)
    (files / "anonymised.jpg").write_bytes(b"x")
    assert "0 capture(s) removed" in ok("purge", db)
    Library(str(db)).captures.set_expiry(capture.id, time.time() - 1)
    assert json.loads(ok("purge", db, "--dry-run", "--json"))[0]["capture"] == capture.id
    assert Library(str(db)).captures.all()  # a dry run removes nothing
    purged = json.loads(ok("purge", db, "--json"))
    assert purged[0]["capture"] == capture.id and purged[0]["embeddings"] > 20
    assert Library(str(db)).captures.all() == [] and not files.exists()
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0
    assert "expired" not in ok("captures", db)
    assert "at most 36,500 days" in fails("retention", db, "--days", "-1")
