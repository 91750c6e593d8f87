"""User errors through the real command: exit code 2, one line on stderr, nothing half-written."""
from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from gigaface.library.store import Library
from gigaface.engine.plan import settings_for
from gigaface.ingest import scan_path
from bench.harness import run_cli
from tests.helpers import astronaut, crowd, write_image


def assert_user_error(proc, *needles: str) -> str:
    """Exit code 2, exactly one stderr line 'gigaface: error: ...', no traceback, no stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gigaface: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files_in(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def gradient(tmp_path):
    """A photo with no face in it."""
    ramp = np.linspace(0, 255, 400, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None] * 0.5, 128 + 0 * ramp[None, :]), axis=2)
    return write_image(tmp_path / "gradient.png", np.broadcast_to(rgb, (400, 400, 3)).astype(np.uint8))


# --- usage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["find"], ["missing argument 'db'", "see `gigaface find --help`"]),
    (["scan", "crowd.jpg", "--top", "3"], ["no such option: --top", "gigaface scan --help"]),
    (["find", "lib.db", "--photo", "me.jpg", "--top", "many"], ["invalid value for '--top'"]),
    (["consent", "add", "lib.db"], ["missing option", "--photo", "gigaface consent add --help"]),
    (["shoot"], ["no such command 'shoot'", "see `gigaface --help`"])])
def test_usage_errors_are_one_line_too(tmp_path, args, needles):
    """A misspelt command or option, a missing one, a value of the wrong type: one line that
    says where to read how the command is used, not a box of usage text."""
    assert_user_error(run_cli(*args, cwd=tmp_path), *needles)
    assert files_in(tmp_path) == set()


# --- scan ---------------------------------------------------------------------------------
def test_scan_not_an_image(tmp_path):
    bogus = tmp_path / "holiday.jpg"
    bogus.write_text("not a picture at all\n")
    proc = run_cli("scan", bogus, "--db", tmp_path / "lib.db", "--quiet", cwd=tmp_path)
    assert_user_error(proc, "holiday.jpg", "not an image")
    assert files_in(tmp_path) == {"holiday.jpg"}  # no library created


@pytest.mark.parametrize("args, needle", [(["--preset", "turbo"], "unknown preset"),
                                          (["--min-face", "2"], "--min-face 2"),
                                          (["--min-embed", "-1"], "--min-embed")])
def test_scan_bad_settings(tmp_path, args, needle):
    image = write_image(tmp_path / "crowd.png", crowd(300, 200, [(150, 100, 60)]))
    proc = run_cli("scan", image, "--db", tmp_path / "lib.db", *args, cwd=tmp_path)
    assert_user_error(proc, needle)
    assert files_in(tmp_path) == {"crowd.png"}


def test_scan_missing_image(tmp_path):
    proc = run_cli("scan", tmp_path / "gone.jpg", "--db", tmp_path / "lib.db", cwd=tmp_path)
    assert_user_error(proc, "gone.jpg", "no such file")
    assert files_in(tmp_path) == set()


def test_scan_checks_every_input_before_starting(tmp_path):
    good = write_image(tmp_path / "good.png", crowd(300, 200, [(150, 100, 60)]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    proc = run_cli("scan", good, bad, "--db", tmp_path / "lib.db", cwd=tmp_path)
    assert_user_error(proc, "bad.png")
    assert not (tmp_path / "lib.db").exists()  # the good one was not scanned either


def test_scan_pixel_limit(tmp_path):
    image = write_image(tmp_path / "big.png", crowd(400, 300, []))
    proc = run_cli("scan", image, "--db", tmp_path / "lib.db", "--max-pixels", "1000", cwd=tmp_path)
    line = assert_user_error(proc, "big.png", "400x300", "--max-pixels")
    assert "1,000" in line or "1000" in line  # the message says what the limit is
    assert files_in(tmp_path) == {"big.png"}


def _truncated_jpeg(tmp_path):
    full = write_image(tmp_path / "full.jpg", np.concatenate([astronaut()] * 4, axis=0), Q=90)
    data = full.read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    full.unlink()
    return half


@pytest.fixture
def truncated_scan(tmp_path):
    half = _truncated_jpeg(tmp_path)
    db = tmp_path / "lib.db"
    return half, db, run_cli("scan", half, "--db", db, "--quiet", cwd=tmp_path)


def test_scan_truncated_jpeg(truncated_scan):
    half, db, proc = truncated_scan
    assert_user_error(proc, "half.jpg", "cannot decode")
    # Found only while decoding, after the library was opened: no capture is left behind.
    if db.exists():
        library = Library(str(db))
        assert library.captures.all() == []
        assert library.db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0


def test_scan_truncated_jpeg_leaves_no_library_file(truncated_scan):
    half, db, proc = truncated_scan
    assert proc.returncode == 2
    assert not db.exists()


def test_scan_truncated_jpeg_into_existing_library_keeps_it(tmp_path):
    """A failed scan leaves the library's earlier captures as they were."""
    good = write_image(tmp_path / "good.png", crowd(400, 300, [(200, 150, 70)]))
    db = tmp_path / "lib.db"
    assert run_cli("scan", good, "--db", db, "--quiet").returncode == 0
    proc = run_cli("scan", _truncated_jpeg(tmp_path), "--db", db, "--quiet")
    assert_user_error(proc, "half.jpg")
    library = Library(str(db))
    (cap,) = library.captures.all()
    assert cap.stage == "done" and library.faces.count(cap.id) == 1


def test_scan_into_sqlite_of_another_program(tmp_path):
    image = write_image(tmp_path / "crowd.png", crowd(300, 200, [(150, 100, 60)]))
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE foo (a INTEGER)")
    con.commit()
    con.close()
    before = db.read_bytes()
    proc = run_cli("scan", image, "--db", db, "--quiet", cwd=tmp_path)
    assert_user_error(proc, "other.db", "another program")
    assert db.read_bytes() == before
    assert files_in(tmp_path) == {"crowd.png", "other.db"}


@pytest.mark.parametrize("command", ["faces", "captures"])
def test_reading_a_file_that_is_not_a_library(tmp_path, command):
    db = tmp_path / "notes.txt"
    db.write_text("shopping list\n" * 100)
    proc = run_cli(command, db)
    assert_user_error(proc, "notes.txt", "not a gigaface library")
    assert db.read_text() == "shopping list\n" * 100


def test_reading_a_missing_library(tmp_path):
    proc = run_cli("faces", tmp_path / "nope.db")
    assert_user_error(proc, "nope.db", "no such library")
    assert not (tmp_path / "nope.db").exists()


def test_scan_unknown_preset(tmp_path):
    image = write_image(tmp_path / "crowd.png", crowd(300, 200, []))
    proc = run_cli("scan", image, "--db", tmp_path / "lib.db", "--preset", "turbo")
    assert_user_error(proc, "turbo")
    assert not (tmp_path / "lib.db").exists()


def test_scan_bad_manifest(tmp_path):
    manifest = tmp_path / "frames.json"
    manifest.write_text(json.dumps({"frames": [{"file": "cam0.png", "x": -10}]}))
    write_image(tmp_path / "cam0.png", crowd(200, 100, []))
    proc = run_cli("scan", manifest, "--db", tmp_path / "lib.db")
    assert_user_error(proc, "frames.json", "negative offset")
    assert not (tmp_path / "lib.db").exists()


# --- find and blur --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scanned(tmp_path_factory, detector):
    folder = tmp_path_factory.mktemp("cli-errors")
    image = write_image(folder / "crowd.png", crowd(600, 400, [(150, 150, 70), (420, 220, 90)], seed=11))
    library = Library(str(folder / "lib.db"), create=True)
    scan_path(library, str(image), settings_for("balanced"), detector=detector)
    library.close()
    return folder, image, folder / "lib.db"


def test_find_with_a_photo_without_a_face(scanned, gradient, tmp_path):
    folder, _, db = scanned
    before = files_in(folder)
    proc = run_cli("find", db, "--photo", gradient, "--json", "--sheet", tmp_path / "sheet.png")
    assert_user_error(proc, "gradient.png", "no face")
    assert not (tmp_path / "sheet.png").exists()
    proc = run_cli("find", db, "--photo", gradient)  # default sheet beside the library
    assert_user_error(proc, "no face")
    assert files_in(folder) == before


def test_find_with_a_missing_photo(scanned, tmp_path):
    _, _, db = scanned
    proc = run_cli("find", db, "--photo", tmp_path / "me.jpg", "--sheet", tmp_path / "sheet.png")
    assert_user_error(proc, "me.jpg", "no such file")
    assert not (tmp_path / "sheet.png").exists()


def test_find_in_unknown_capture(scanned, tmp_path):
    _, _, db = scanned
    photo = write_image(tmp_path / "astronaut.png", astronaut())
    proc = run_cli("find", db, "--photo", photo, "--capture", "99", "--sheet", tmp_path / "sheet.png")
    assert_user_error(proc, "no capture 99")
    assert not (tmp_path / "sheet.png").exists()


def _blur_and_expect_nothing(tmp_path, *args, needles=()):
    out = tmp_path / "out" / "public.jpg"
    out.parent.mkdir(exist_ok=True)
    proc = run_cli("blur", *args, "--out", out)
    assert_user_error(proc, *needles)
    assert files_in(out.parent) == set()  # no output, no temporary file left
    return proc


def test_blur_image_not_in_library(scanned, tmp_path):
    folder, _, db = scanned
    other = write_image(tmp_path / "other.png", crowd(300, 200, []))
    _blur_and_expect_nothing(tmp_path, other, "--db", db, needles=("other.png", "not scanned"))


def test_blur_keep_photo_without_a_face(scanned, gradient, tmp_path):
    folder, image, db = scanned
    _blur_and_expect_nothing(tmp_path, image, "--db", db, "--keep", gradient, needles=("gradient.png", "no face"))


def test_blur_unknown_style(scanned, tmp_path):
    folder, image, db = scanned
    _blur_and_expect_nothing(tmp_path, image, "--db", db, "--style", "smudge", needles=("smudge",))


def test_blur_unsupported_output_format(scanned, tmp_path):
    folder, image, db = scanned
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("blur", image, "--db", db, "--out", out / "public.bmp")
    assert_user_error(proc, "public.bmp")
    assert files_in(out) == set()


def test_blur_into_missing_folder(scanned, tmp_path):
    folder, image, db = scanned
    proc = run_cli("blur", image, "--db", db, "--out", tmp_path / "no" / "such" / "public.jpg")
    assert_user_error(proc, "does not exist")
    assert not (tmp_path / "no").exists()


def test_blur_refuses_to_overwrite_the_original(scanned):
    folder, image, db = scanned
    before = image.read_bytes()
    proc = run_cli("blur", image, "--db", db, "--out", image)
    assert_user_error(proc, "overwrite")
    assert image.read_bytes() == before


# --- files that would hang: pipes given as inputs ---------------------------------------
@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


def test_scan_of_a_fifo_is_refused_not_hung(tmp_path, fifo):
    proc = run_cli("scan", fifo, "--db", tmp_path / "lib.db", timeout=60)
    assert_user_error(proc, "pipe.jpg", "not a regular file")
    assert not (tmp_path / "lib.db").exists()


def test_a_fifo_as_reference_photo_is_refused_not_hung(scanned, fifo, tmp_path):
    _, _, db = scanned
    proc = run_cli("find", db, "--photo", fifo, "--sheet", tmp_path / "s.png", timeout=60)
    assert_user_error(proc, "pipe.jpg", "not a regular file")


def test_a_fifo_as_key_file_is_refused_not_hung(scanned, fifo):
    _, _, db = scanned
    proc = run_cli("--key-file", fifo, "captures", db, timeout=60)
    assert_user_error(proc, "pipe.jpg", "not a regular file")


# --- values that made tracebacks, or were taken silently ------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--sheet", "/nonexistent/dir/s.png"], ("/nonexistent/dir", "does not exist")),
    (["--sheet", "."], ("is a directory",)),
    (["--top", "-1"], ("--top",)),
    (["--top", "0"], ("--top",)),
    (["--threshold", "-1"], ("threshold",)),
    (["--threshold", "5"], ("threshold",)),
], ids=["sheet-in-missing-folder", "sheet-is-a-folder", "top-negative", "top-zero", "threshold-negative",
        "threshold-meaningless"])
def test_find_refuses_bad_values_before_any_work(scanned, tmp_path, args, needles):
    _, _, db = scanned
    photo = write_image(tmp_path / "astronaut.png", astronaut())
    before = Library(str(db)).audit.log()
    proc = run_cli("find", db, "--photo", photo, *args, cwd=tmp_path)
    assert_user_error(proc, *needles)
    assert len(Library(str(db)).audit.log()) == len(before)  # nothing searched


@pytest.mark.parametrize("command, args, needle", [
    ("blur", ["--threshold", "-1"], "threshold"),
    ("forget", ["--threshold", "-1"], "erasure threshold"),
    ("forget", ["--threshold", "0.9"], "erasure threshold"),
    ("audit", ["--days", "-5"], "--days"),
])
def test_thresholds_and_days_are_checked(scanned, tmp_path, command, args, needle):
    _, image, db = scanned
    photo = write_image(tmp_path / "astronaut.png", astronaut())
    extra = {"blur": [image, "--db", db, "--out", tmp_path / "public.jpg"], "forget": [db, "--photo", photo],
             "audit": [db]}[command]
    assert_user_error(run_cli(command, *extra, *args), needle)
    assert not (tmp_path / "public.jpg").exists()


# The old code took --workers -3, and "refused" every image for --max-pixels -1 as over the
# limit: the message must name the option's own bound.
@pytest.mark.parametrize("args, needle", [(["--threads", "-3"], "--threads is at least 1"),
                                          (["--threads", "0"], "--threads is at least 1"),
                                          (["--max-pixels", "-1"], "--max-pixels is at least 1")])
def test_scan_refuses_counts_under_one(tmp_path, args, needle):
    image = write_image(tmp_path / "crowd.png", crowd(300, 200, [(150, 100, 60)]))
    assert_user_error(run_cli("scan", image, "--db", tmp_path / "lib.db", *args), needle)
    assert files_in(tmp_path) == {"crowd.png"}


@pytest.mark.parametrize("args, needle", [(["--size", "0"], "--size"), (["--size", "-1"], "--size"),
                                          (["--out", "/proc/nope"], "/proc/nope")])
def test_demo_refuses_bad_values(tmp_path, args, needle):
    assert_user_error(run_cli("demo", *args, cwd=tmp_path, timeout=60), needle)
    assert files_in(tmp_path) == set()


def test_token_create_does_not_make_a_library_out_of_a_typo(tmp_path):
    typo = tmp_path / "libary.db"
    assert_user_error(run_cli("token", "create", typo, "--name", "me"), "no such library", "--create")
    assert files_in(tmp_path) == set()
    made = run_cli("token", "create", typo, "--name", "me", "--create")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("gf_") and Library(str(typo)).tokens.all()[0].name == "me"


def test_a_wrong_key_file_on_scan_is_refused_before_any_work(scanned, tmp_path):
    folder, _, db = scanned
    wrong = tmp_path / "wrong.key"
    wrong.write_text("B" * 43 + "=\n")
    wrong.chmod(0o600)
    other = write_image(tmp_path / "other.png", crowd(300, 200, [(150, 100, 60)]))
    last_id = Library(str(db)).meta("last_capture_id")
    proc = run_cli("--key-file", wrong, "scan", other, "--db", db, "--quiet")
    assert_user_error(proc, "not this library's key")
    # no capture was made and dropped on the way: ids are never reused, so one would show here
    assert Library(str(db)).meta("last_capture_id") == last_id


def test_a_key_file_others_can_read_is_used_with_one_warning(tmp_path):
    db = tmp_path / "lib.db"
    Library(str(db), create=True).close()
    key = tmp_path / "lib.db.key"
    key.chmod(0o644)
    proc = run_cli("captures", db)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigaface: warning: ") and "other users" in lines[0], lines
    assert "chmod 600" in lines[0]
    key.chmod(0o600)
    assert run_cli("captures", db).stderr == ""
