"""Bad input, generated: damaged images, impossible headers, broken manifests, foreign
databases, hostile tile paths and oversized bodies.

Every case must end in one clear line (the CLI: exit code 2, `gigaface: error: ...`; the
server: a 4xx JSON answer, and it still answers afterwards) with nothing written. Most
cases run in-process through the functions the CLI calls, for speed; a sample of each
kind also goes through the real command.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import sqlite3
import struct
import tempfile
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.engine.manifest import read_manifest
from gigaface.engine.plan import settings_for
from gigaface.engine.manifest import frames_of
from gigaface.ingest import scan_path
from bench.harness import make_token, run_cli, Server
from tests.helpers import crowd, write_image


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMIT = 50_000_000  # --max-pixels for the in-process cases: refuse what the CLI's default would scan for long


def assert_user_error(proc, *needles: str) -> str:
    """Exit code 2, exactly one stderr line 'gigaface: error: ...', no traceback, no stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaface: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def one_line(exc: GigafaceError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\0" not in text and len(text) < 1000, text


_names = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh(work: Path, suffix: str) -> Path:
    """A new file name each time: libvips must never answer from a cache."""
    return work / f"case-{next(_names)}{suffix}"


# --- damaged images -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def originals(work) -> dict[str, bytes]:
    """One small crowd with a face, as each format the fuzzing damages."""
    rgb = crowd(320, 240, [(160, 120, 70)], seed=3)
    return {
        ".jpg": write_image(work / "o.jpg", rgb, Q=90).read_bytes(),
        ".png": write_image(work / "o.png", rgb).read_bytes(),
        ".tif": write_image(work / "o.tif", rgb).read_bytes(),
        ".tiled.tif": write_image(work / "o.tiled.tif", rgb, tile=True, tile_width=64, tile_height=64,
                                  compression="deflate").read_bytes(),
    }


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("overwrite"), st.lists(st.tuples(st.floats(0.0, 0.999), st.binary(min_size=1, max_size=16)),
                                             min_size=1, max_size=8)),
)


def damaged(data: bytes, how) -> bytes:
    kind, what = how
    if kind == "truncate":
        return data[: int(len(data) * what)]
    out = bytearray(data)
    for where, junk in what:
        at = int(len(out) * where)
        out[at : at + len(junk)] = junk
    return bytes(out)


@FUZZ
@given(fmt=st.sampled_from([".jpg", ".png", ".tif", ".tiled.tif"]), how=damage)
@example(fmt=".tif", how=("truncate", 0.6))  # a TIFF cut short once decoded as black rows
@example(fmt=".jpg", how=("truncate", 0.5))
@example(fmt=".png", how=("truncate", 0.0))
def test_damaged_images_scan_or_fail_in_one_line(work, originals, detector, fmt, how):
    """A damaged image either scans or fails with a GigafaceError, and then leaves no capture."""
    path = fresh(work, fmt)
    path.write_bytes(damaged(originals[fmt], how))
    library = Library(str(fresh(work, ".db")), create=True)
    try:
        try:
            frames_of(str(path), SMALL_LIMIT)
            result = scan_path(library, str(path), settings_for("fast"), detector=detector, max_pixels=SMALL_LIMIT)
        except GigafaceError as exc:
            one_line(exc)
            assert library.captures.all() == []  # a failed scan leaves nothing half-done
            return
        assert result.capture.stage == "done"
    finally:
        library.close()
        path.unlink()


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims width x height, with `rows` (default: one row's worth) of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = rows if rows is not None else b"\0" * (1 + 3 * min(width, 64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def tiff(width: int, height: int, data: bytes = b"\x80" * 64) -> bytes:
    """A grey strip TIFF whose header claims width x height, followed by `data` only."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height), (279, 4, min(width * height, 2**32 - 1))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


@FUZZ
@given(fmt=st.sampled_from(["png", "tiff"]),
       width=st.one_of(st.sampled_from([0, 1, 65_535, 100_000, 2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1)),
       height=st.one_of(st.sampled_from([0, 1, 60_000, 100_000, 2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1)))
def test_impossible_headers_are_refused(work, fmt, width, height):
    """Headers claiming sizes with no pixels behind them: refused at the header (over the
    pixel limit, or no pixels), or at the first band, never decoded as grey."""
    # png() holds one row of up to 64 pixels, tiff() 64 pixels: smaller claims are whole images.
    assume(not (width and height and (width * height <= 64 if fmt == "tiff" else height == 1 and width <= 64)))
    path = fresh(work, ".png" if fmt == "png" else ".tif")
    path.write_bytes(png(width, height) if fmt == "png" else tiff(width, height))
    library = Library(str(fresh(work, ".db")), create=True)
    try:
        with pytest.raises(GigafaceError) as caught:
            frames_of(str(path), SMALL_LIMIT)
            scan_path(library, str(path), settings_for("fast"), max_pixels=SMALL_LIMIT,
                      detector=_FailingDetector())
        one_line(caught.value)
        assert library.captures.all() == []
    finally:
        library.close()
        path.unlink()


class _FailingDetector:
    """Stands in for CenterFace where a header's promise cannot be kept: reaching the detector
    with pixels would mean grey padding was scanned as an image."""

    def detect_tiles(self, jobs, fill, threshold):
        raise AssertionError("pixels that are not in the file reached the detector")


@pytest.mark.parametrize("name, data, needle", [
    ("empty.jpg", b"", "not an image"),
    ("empty.png", b"", "not an image"),
    ("zero-size.png", png(0, 0), "not an image"),
    ("no-rows.png", png(1, 0), "not an image"),
    ("huge.png", png(100_000, 100_000), "100000x100000"),
    ("huge.tif", tiff(100_000, 100_000), "100000x100000"),
    ("short.tif", tiff(60_000, 60_000), "cannot decode"),  # under the limit, no pixels: was hours of black
    ("short.png", png(60_000, 60_000), "cannot decode"),
    ("half.jpg", None, "cannot decode"),
    ("corrupt.png", None, "cannot decode"),
], ids=lambda v: v if isinstance(v, str) and v.count(".") == 1 else "")
def test_bad_images_through_the_command(tmp_path, originals, name, data, needle):
    if data is None:
        original = originals[".jpg"] if name.endswith(".jpg") else originals[".png"]
        data = original[: len(original) // 2] if name.startswith("half") else damaged(original, ("truncate", 0.7))
    image = tmp_path / name
    image.write_bytes(data)
    proc = run_cli("scan", image, "--db", tmp_path / "lib.db", "--quiet", cwd=tmp_path)
    assert_user_error(proc, name, needle)
    assert {p.name for p in tmp_path.iterdir()} == {name}  # no library, nothing else


# --- camera-array manifests -----------------------------------------------------------------
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                        st.text(max_size=12), st.sampled_from(["cam0.png", "cam1.png", "../cam0.png", "", "."]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
frame = st.fixed_dictionaries({}, optional={
    "file": st.one_of(st.sampled_from(["cam0.png", "cam1.png", "missing.png", "cam0.png\0x", "/etc/passwd",
                                       "sub", "frames.json"]), json_scalar),
    "x": st.one_of(st.integers(-10, 10**40), json_scalar), "y": st.one_of(st.integers(-10, 10**40), json_scalar)})
manifest = st.one_of(
    st.fixed_dictionaries({"frames": st.lists(frame, max_size=4)}),
    st.lists(frame, max_size=4),
    json_value,
)


@pytest.fixture(scope="module")
def cameras(work) -> Path:
    folder = work / "cameras"
    folder.mkdir()
    write_image(folder / "cam0.png", crowd(200, 150, []))
    write_image(folder / "cam1.png", crowd(200, 150, [], seed=1))
    (folder / "sub").mkdir()
    return folder


@FUZZ
@given(data=manifest)
@example(data={"frames": [{"file": "cam0.png", "x": 0}, {"file": "cam1.png", "x": 100, "y": 50}]})  # overlapping
@example(data={"frames": [{"file": "cam0.png", "x": -1}]})
@example(data={"frames": [{"file": "cam0.png", "x": 10**40}]})
@example(data={"frames": [{"file": "cam0.png", "y": "10"}]})
@example(data={"frames": [{"x": 0}]})
def test_manifests_give_frames_or_one_line(cameras, data):
    path = cameras / "frames.json"
    try:
        path.write_text(json.dumps(data))
    except ValueError:  # not representable as JSON text at all
        assume(False)
    try:
        frames = read_manifest(str(path), SMALL_LIMIT)
    except GigafaceError as exc:
        one_line(exc)
        return
    # Accepted: real images, placed at sane offsets (overlap is allowed: nothing is stitched).
    assert frames
    for f in frames:
        assert os.path.isfile(f.path) and isinstance(f.x, int) and isinstance(f.y, int)
        assert 0 <= f.x < SMALL_LIMIT and 0 <= f.y < SMALL_LIMIT
    assert max(f.x + f.width for f in frames) * max(f.y + f.height for f in frames) <= SMALL_LIMIT


@FUZZ
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                     st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
                     st.integers(4_300, 20_000).map(lambda n: b'{"frames": [{"file": "cam0.png", "x": 1' + b"0" * n + b"}]}")))
def test_manifest_bytes_that_are_not_json(cameras, raw):
    path = cameras / "raw.json"
    path.write_bytes(raw)
    try:
        read_manifest(str(path), SMALL_LIMIT)
    except GigafaceError as exc:
        one_line(exc)


@pytest.mark.parametrize("text, needle", [
    ("not json at all", "not a valid JSON manifest"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"frames": [{"file": "cam0.png", "x": 1' + "0" * 5000 + "}]}", "not a valid JSON manifest"),
    ('{"frames": [{"file": "cam0.png", "x": 1' + "0" * 300 + "}]}", "offset too large"),
    (json.dumps({"frames": [{"file": "cam0.png\0.png"}]}), "NUL"),
    (json.dumps({"frames": [{"file": "cam0.png", "x": -5, "y": 0}]}), "negative offset"),
    (json.dumps({"frames": [{"file": "cam0.png", "x": "0"}]}), "whole numbers"),
    (json.dumps({"frames": [{"name": "cam0.png"}]}), '"file"'),
    (json.dumps({"cameras": []}), '"frames"'),
], ids=["not-json", "deep", "5000-digits", "300-digits", "nul", "negative", "string-x", "no-file", "no-frames"])
def test_bad_manifests_through_the_command(tmp_path, text, needle):
    write_image(tmp_path / "cam0.png", crowd(200, 150, []))
    (tmp_path / "frames.json").write_text(text)
    proc = run_cli("scan", tmp_path / "frames.json", "--db", tmp_path / "lib.db", "--quiet")
    line = assert_user_error(proc, "frames.json", needle)
    assert len(line) < 300
    assert {p.name for p in tmp_path.iterdir()} == {"cam0.png", "frames.json"}


# --- databases of other programs ------------------------------------------------------------
identifier = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)
table = st.tuples(st.one_of(st.just("meta"), identifier.map("t_".__add__)), st.lists(identifier, min_size=1, max_size=3, unique=True),
                  st.lists(st.lists(json_scalar.filter(lambda v: not isinstance(v, int) or abs(v) < 2**63),
                                    min_size=3, max_size=3), max_size=3))


@FUZZ
@given(tables=st.lists(table, min_size=1, max_size=3, unique_by=lambda t: t[0].lower()),
       meta=st.one_of(st.none(), st.dictionaries(st.sampled_from(["application", "schema", "other"]),
                                                 st.one_of(st.just("gigaface"), st.just("x"), st.just("99"),
                                                           st.integers(-3, 3).map(str)), min_size=1)))
@example(tables=[("foo", ["a"], [])], meta={"application": "gigaface", "schema": "x"})
@example(tables=[("foo", ["a"], [])], meta={"application": "gigaface", "schema": "99"})
def test_sqlite_files_of_other_programs(tables, meta):
    with tempfile.TemporaryDirectory() as folder:
        db = os.path.join(folder, "other.db")
        con = sqlite3.connect(db)
        for name, columns, rows in tables:
            if meta is not None and name == "meta":
                continue
            con.execute(f'CREATE TABLE "{name}" ({", ".join(f"c_{c}" for c in columns)})')
            for row in rows:
                con.execute(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(columns))})',
                            [None if isinstance(v, float) and v != v else v for v in row[: len(columns)]]
                            + [None] * (len(columns) - len(row)))
        if meta is not None:
            con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        con.commit()
        con.close()
        before = Path(db).read_bytes()
        for create in (False, True):
            # None of these is a gigaface library, whatever its meta table says: no captures.
            with pytest.raises(GigafaceError) as caught:
                Library(db, create=create).close()
            one_line(caught.value)
        assert Path(db).read_bytes() == before  # refused without a byte changed
        assert sorted(os.listdir(folder)) == ["other.db"]


@pytest.fixture(scope="module")
def damaged_library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("damaged")
    image = write_image(folder / "crowd.png", crowd(400, 300, [(200, 150, 70)]))
    db = folder / "lib.db"
    assert run_cli("scan", image, "--db", db, "--quiet").returncode == 0
    data = bytearray(db.read_bytes())
    assert len(data) > 4 * 4096
    data[3 * 4096 : 3 * 4096 + 2000] = b"\xaa" * 2000  # pages past the header and the schema
    db.write_bytes(bytes(data))
    return db


@pytest.mark.parametrize("command", ["captures", "faces", "scan"])
def test_damaged_library_through_the_command(damaged_library, tmp_path, command):
    db = tmp_path / "lib.db"
    db.write_bytes(damaged_library.read_bytes())
    args = ["scan", damaged_library.parent / "crowd.png", "--db", db, "--quiet"] if command == "scan" else [command, db]
    assert_user_error(run_cli(*args), "damaged")


def test_gigaface_looking_library_of_unknown_schema(tmp_path):
    db = tmp_path / "lib.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("application", "gigaface"), ("schema", "two")])
    con.commit()
    con.close()
    assert_user_error(run_cli("captures", db), "lib.db", "schema 'two'")


# --- the service: tile paths and bodies -----------------------------------------------------
SECRET = b"SECRET-NOT-A-TILE"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server with one scanned capture whose pyramids are built, and files near its tiles
    that no tile route may ever serve."""
    folder = tmp_path_factory.mktemp("fuzz-service")
    image = write_image(folder / "crowd.jpg", crowd(600, 400, [(300, 200, 80)]), Q=90)
    db = folder / "lib.db"
    assert run_cli("scan", image, "--db", db, "--quiet").returncode == 0
    admin = make_token(db, "admin")
    with Server(db, "--public", token=admin) as server:
        capture = server.wait_for(1)  # the server makes the pyramids of a CLI scan
        assert capture["state"] == "done", capture
        files = Path(str(db) + ".files")
        for secret in (files / "0_0.jpg", files / "capture-1" / "0_0.jpg", files / "capture-1" / "10" / "0_0.jpg",
                       folder / "0_0.jpg"):
            secret.parent.mkdir(exist_ok=True)
            secret.write_bytes(SECRET)
        yield server


segment = st.one_of(
    st.sampled_from(["..", "%2e%2e", "%2E%2E", ".%2e", "%252e%252e", "%2f", "%2F..%2F..", "..%5c..%5c",
                     "%00", "0_0.jpg%00", "0_0.jpg%00.png", "/etc/passwd", "%2fetc%2fpasswd", "~", "0_0.jpg\n",
                     "0_0.jpg%0a", "%C0%AE%C0%AE", "\u2024\u2024", "0_0.jpg/..", "0_0.JPG", "\uff10_0.jpg"]),
    st.text(st.sampled_from("./\\%02e5cfF_jpg\0\n~"), min_size=1, max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=30),
)


def encoded(text: str) -> str:
    """A path segment as a client could send it: escapes the text already holds stay as they are."""
    return quote(text, safe="%/.~")


def tile_folders(site) -> list[str]:
    """The tile folders of capture 1's pyramids, as its JSON and the public list name them."""
    capture = site.client.get("/api/captures/1").json()
    public = site.client.get("/public/captures").json()[0]["url"]
    return [url[: -len(".dzi")] + "_files" for url in (capture["pyramid_url"], capture["public_url"], public)]


@settings(max_examples=50, deadline=None)
@given(route=st.sampled_from([0, 1, 2]),
       level=st.one_of(st.sampled_from(["10", "0", "9"]), segment), name=segment,
       extra=st.lists(segment, max_size=2))
@example(route=0, level="10", name="..%2F0_0.jpg", extra=[])
@example(route=0, level="..", name="0_0.jpg", extra=[])
@example(route=2, level="10", name="0_0.jpg%00", extra=[])
def test_tile_routes_never_leave_their_pyramid(site, route, level, name, extra):
    path = "/".join([tile_folders(site)[route], encoded(level), encoded(name), *map(encoded, extra)])
    status, headers, body = raw_get(site, path)
    if status == 200:  # only a real tile of the pyramid, by its plain name
        assert headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff", (path, body[:100])
        return
    assert 400 <= status < 500, (path, status)
    assert headers["content-type"] == "application/json", (path, headers)
    assert SECRET not in body and "detail" in json.loads(body)


def raw_get(site, path: str) -> tuple[int, dict, bytes]:
    """GET `path` byte for byte: httpx would resolve `..` segments before sending them."""
    connection = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for key, value in site.headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_server_still_answers_after_the_fuzzing(site):
    assert site.client.get("/api/health").status_code == 200
    assert site.client.get(f"{tile_folders(site)[0]}/10/0_0.jpg").content[:3] == b"\xff\xd8\xff"


def _chunks(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_oversized_bodies_without_content_length(site):
    """Bodies over the limit with no Content-Length (chunked): refused as they stream."""
    from gigaface.service.uploads import MAX_BODY_BYTES

    r = site.client.post("/api/captures", content=_chunks(MAX_BODY_BYTES + (2 << 20)),
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/json" and "detail" in r.json()
    assert site.client.get("/api/health").status_code == 200
    assert [c["id"] for c in site.client.get("/api/captures").json()] == [1]
