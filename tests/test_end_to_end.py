"""scan -> faces -> find -> blur through the real command, and the same through the Python API."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import pyvips
import skimage.data

import gigaface
from conftest import shared_data
from bench.harness import run_cli
from tests.helpers import astronaut, background, expected_box, face_patch, iou, paste_centred, read_image, write_image

WIDTH, HEIGHT = 1800, 1000
# Astronaut faces (cx, cy, face height): small, medium, one for the coarse pass (> 128 px) and
# one bigger than the 320 px the describe stage reads at full resolution.
ASTRONAUTS = [(200, 180, 45), (520, 250, 65), (300, 700, 100), (800, 600, 170), (1450, 500, 420)]
CAMERAMAN_AT = (1000, 200)  # skimage's cameraman: another person, who must not match the astronaut
CAMERAMAN_BOX = (974, 159, 55, 77)  # where the detector puts his face there (x, y, w, h)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def build_crowd() -> np.ndarray:
    canvas = background(WIDTH, HEIGHT, seed=1)
    for cx, cy, s in ASTRONAUTS:
        paste_centred(canvas, face_patch(s), cx, cy)
    cameraman = skimage.data.camera()[60:260, 140:320]
    paste_centred(canvas, np.dstack([cameraman] * 3), *CAMERAMAN_AT)
    return canvas


@pytest.fixture(scope="module")
def crowd_scan(tmp_path_factory):
    """The synthetic crowd (skimage images only), scanned with the real command."""
    folder = tmp_path_factory.mktemp("e2e")
    image = write_image(folder / "crowd.png", build_crowd())
    reference = write_image(folder / "astronaut.png", astronaut())
    db = folder / "library.db"
    digest = sha(image)
    proc = run_cli("scan", image, "--db", db, "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder, image, reference, db, json.loads(proc.stdout), digest


def faces_json(db):
    proc = run_cli("faces", db, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_scan_summary(crowd_scan):
    folder, image, _, db, summary, digest = crowd_scan
    (s,) = summary
    assert s["capture"] == 1 and not s["skipped"]
    assert (s["width"], s["height"]) == (WIDTH, HEIGHT)
    assert s["faces"] == len(ASTRONAUTS) + 1
    assert s["described"] == s["faces"]
    assert sha(image) == digest  # scanning only reads


def test_faces_json(crowd_scan):
    folder, image, _, db, _, _ = crowd_scan
    faces = faces_json(db)
    assert len(faces) == len(ASTRONAUTS) + 1
    assert len({f["id"] for f in faces}) == len(faces)
    for f in faces:
        assert {"id", "capture", "source", "box", "score", "landmarks", "quality"} <= set(f)
        assert f["capture"] == 1
        assert f["source"] == str(image)
        x, y, w, h = f["box"]
        assert 0 <= x and 0 <= y and x + w <= WIDTH and y + h <= HEIGHT and w > 0 and h > 0
        assert 0.45 <= f["score"] <= 1
        assert len(f["landmarks"]) == 5
        for lx, ly in f["landmarks"]:  # eyes, nose, mouth corners: inside the face box
            assert x <= lx <= x + w and y <= ly <= y + h, (f["box"], f["landmarks"])
        assert {"size", "sharpness", "frontalness"} <= set(f["quality"])
        assert 0 <= f["quality"]["frontalness"] <= 1
    for cx, cy, s in ASTRONAUTS:
        want = expected_box(cx, cy, s)
        hits = [f for f in faces if iou(want, f["box"]) > 0.5]
        assert len(hits) == 1, (cx, cy, s)
        eyes = hits[0]["landmarks"][:2]
        assert eyes[0][0] < eyes[1][0]  # left eye (as seen) left of the right one
    assert sum(iou(CAMERAMAN_BOX, f["box"]) > 0.5 for f in faces) == 1


def test_faces_json_quality_size_is_the_box_size(crowd_scan):
    """`quality.size` is the face's size in pixels, small or large."""
    faces = faces_json(crowd_scan[3])
    small = [f for f in faces if max(f["box"][2:]) <= 320]
    assert small
    for f in small:
        assert f["quality"]["size"] == pytest.approx(max(f["box"][2:]), abs=0.2)


def test_faces_json_quality_size_of_a_big_face(crowd_scan):
    faces = faces_json(crowd_scan[3])
    big = [f for f in faces if max(f["box"][2:]) > 320]
    assert big
    for f in big:
        assert f["quality"]["size"] == pytest.approx(max(f["box"][2:]), abs=0.2)


def test_find_json_and_contact_sheet(crowd_scan, tmp_path):
    folder, image, reference, db, _, _ = crowd_scan
    sheet = tmp_path / "sheet.png"
    proc = run_cli("find", db, "--photo", reference, "--json", "--sheet", sheet)
    assert proc.returncode == 0, proc.stderr
    matches = json.loads(proc.stdout)
    assert len(matches) == len(ASTRONAUTS) + 1  # every described face, ranked
    for m in matches:
        assert {"face_id", "capture", "box", "distance", "match"} <= set(m)
    distances = [m["distance"] for m in matches]
    assert distances == sorted(distances)
    assert [m["rank"] for m in matches] == list(range(1, len(matches) + 1))
    assert all(m["match"] == (m["distance"] <= 0.6) for m in matches)
    cameraman = [m for m in matches if iou(CAMERAMAN_BOX, m["box"]) > 0.5]
    assert len(cameraman) == 1 and not cameraman[0]["match"]
    astronauts = [m for m in matches if m is not cameraman[0]]
    assert all(m["match"] for m in astronauts), [(m["box"], m["distance"]) for m in astronauts]
    assert matches[-1] is cameraman[0]  # everyone else is the astronaut
    face_ids = {f["id"] for f in faces_json(db)}
    assert {m["face_id"] for m in matches} == face_ids
    # The contact sheet is a real PNG with one cell per match (6 to a row).
    picture = cv2.imread(str(sheet))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100
    rows = -(-len(matches) // 6)
    assert picture.shape[1] >= 6 * 150 and rows * 190 <= picture.shape[0] < (rows + 1) * 190
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_top_and_default_sheet(crowd_scan):
    folder, image, reference, db, _, _ = crowd_scan
    proc = run_cli("find", db, "--photo", reference, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "matches.png").is_file()  # beside the library
    assert cv2.imread(str(folder / "matches.png")) is not None
    proc = run_cli("find", db, "--photo", reference, "--top", "2", "--json")
    assert len(json.loads(proc.stdout)) == 2


def boxes_of(db) -> list[tuple[float, float, float, float]]:
    return [tuple(f["box"]) for f in faces_json(db)]


def far_from_faces(boxes, shape) -> np.ndarray:
    """True where a pixel is well away from every face box (the blur may spill a little)."""
    far = np.ones(shape[:2], bool)
    for x, y, w, h in boxes:
        g = 0.5 * max(w, h) + 16
        far[max(0, int(y - g)) : int(y + h + g) + 1, max(0, int(x - g)) : int(x + w + g) + 1] = False
    return far


def sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


def inner(box, rgb):
    x, y, w, h = box
    return rgb[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2]


def assert_blurred(box, before, after):
    a, b = inner(box, before), inner(box, after)
    assert np.abs(a.astype(int) - b).mean() > 12, box
    assert sharpness(b) < 0.3 * sharpness(a) + 1, (box, sharpness(a), sharpness(b))


def test_blur(crowd_scan, tmp_path):
    folder, image, _, db, _, digest = crowd_scan
    out = tmp_path / "public.png"
    proc = run_cli("blur", image, "--db", db, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sha(image) == digest  # the original is only read
    before, after = read_image(image), read_image(out)
    assert after.shape == before.shape
    boxes = boxes_of(db)
    for box in boxes:
        assert_blurred(box, before, after)
    far = far_from_faces(boxes, before.shape)
    assert far.mean() > 0.3
    np.testing.assert_array_equal(after[far], before[far])
    assert set(p.name for p in tmp_path.iterdir()) == {"public.png"}  # no temporary files left


def test_blur_to_jpeg(crowd_scan, tmp_path):
    folder, image, _, db, _, digest = crowd_scan
    out = tmp_path / "public.jpg"
    assert run_cli("blur", image, "--db", db, "--out", out).returncode == 0
    before, after = read_image(image), read_image(out)
    assert after.shape == before.shape
    boxes = boxes_of(db)
    for box in boxes:
        assert_blurred(box, before, after)
    # Away from the faces, the output is what JPEG at the same quality makes of the original.
    plain = pyvips.Image.new_from_array(before).jpegsave_buffer(Q=90)
    plain = pyvips.Image.new_from_buffer(plain, "").numpy()
    far = far_from_faces(boxes, before.shape)
    assert np.abs(after[far].astype(int) - plain[far]).mean() < 0.5
    assert np.abs(after[far].astype(int) - before[far]).mean() < 10
    assert sha(image) == digest


def test_blur_pixelate(crowd_scan, tmp_path):
    folder, image, _, db, _, _ = crowd_scan
    out = tmp_path / "pixelated.png"
    proc = run_cli("blur", image, "--db", db, "--out", out, "--style", "pixelate")
    assert proc.returncode == 0, proc.stderr
    before, after = read_image(image), read_image(out)
    for box in boxes_of(db):
        a, b = inner(box, before), inner(box, after)
        # Blocks of one colour: most pixels equal their right-hand neighbour; not so before.
        same_after = (b[:, 1:] == b[:, :-1]).all(axis=2).mean()
        same_before = (a[:, 1:] == a[:, :-1]).all(axis=2).mean()
        assert same_after > 0.7 and same_before < 0.3, (box, same_before, same_after)
    far = far_from_faces(boxes_of(db), before.shape)
    np.testing.assert_array_equal(after[far], before[far])


def test_blur_keep_leaves_the_person_visible(crowd_scan, tmp_path):
    folder, image, reference, db, _, digest = crowd_scan
    out = tmp_path / "public.png"
    proc = run_cli("blur", image, "--db", db, "--out", out, "--keep", reference)
    assert proc.returncode == 0, proc.stderr
    before, after = read_image(image), read_image(out)
    boxes = boxes_of(db)
    cameraman = [b for b in boxes if iou(CAMERAMAN_BOX, b) > 0.5]
    assert len(cameraman) == 1
    assert_blurred(cameraman[0], before, after)
    for box in boxes:
        if box not in cameraman:  # the astronaut, everywhere: untouched
            x, y, w, h = box
            sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
            np.testing.assert_array_equal(after[sl], before[sl])
    assert sha(image) == digest


# --- the Python API ---------------------------------------------------------------------------
def test_python_api(tmp_path):
    canvas = background(900, 500, seed=2)
    for cx, cy, s in [(200, 200, 80), (600, 260, 110)]:
        paste_centred(canvas, face_patch(s), cx, cy)
    paste_centred(canvas, np.dstack([skimage.data.camera()[60:260, 140:320]] * 3), 780, 380)
    image = write_image(tmp_path / "crowd.jpg", canvas, Q=92)
    reference = write_image(tmp_path / "astronaut.png", astronaut())
    db = tmp_path / "lib.db"

    cap = gigaface.scan(str(image), db=str(db), threads=1)
    faces = cap.faces
    assert len(faces) == 3
    assert all(isinstance(f, gigaface.Face) and f.embedded for f in faces)
    assert cap.source == str(image)

    matches = cap.find(str(reference))
    assert [m.distance for m in matches] == sorted(m.distance for m in matches)
    assert [m.match for m in matches] == [True, True, False]
    assert all(isinstance(m, gigaface.Match) for m in matches)
    assert matches[0].face.id in {f.id for f in faces}

    out = tmp_path / "public.jpg"
    assert cap.anonymise(str(out)) == 3
    assert read_image(out).shape == canvas.shape
    kept = tmp_path / "kept.png"
    assert cap.anonymise(str(kept), keep=str(reference)) == 1  # only the cameraman

    again = gigaface.open_capture(str(db))
    assert again.id == cap.id and len(again.faces) == 3
    rescanned = gigaface.scan(str(image), db=str(db), threads=1)
    assert rescanned.result.skipped and rescanned.id == cap.id


# --- with real photos -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_crowd(tmp_path_factory):
    """Baseball fans (a real crowd photo) with Obama and Biden pasted beside them."""
    fans = read_image(shared_data("retinaface_demo", "test.jpg"))
    obama = read_image(shared_data("face_recognition_examples", "obama2.jpg"))
    biden = read_image(shared_data("face_recognition_examples", "biden.jpg"))
    reference = shared_data("face_recognition_examples", "obama.jpg")
    canvas = background(2000, 1100, seed=3)
    canvas[: fans.shape[0], : fans.shape[1]] = fans
    obama = cv2.resize(obama, None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
    biden = cv2.resize(biden, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    canvas[50 : 50 + obama.shape[0], 1100 : 1100 + obama.shape[1]] = obama
    canvas[50 : 50 + biden.shape[0], 1500 : 1500 + biden.shape[1]] = biden
    paste_centred(canvas, face_patch(90), 1850, 800)
    folder = tmp_path_factory.mktemp("real-e2e")
    image = write_image(folder / "crowd.jpg", canvas, Q=92)
    db = folder / "library.db"
    proc = run_cli("scan", image, "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    regions = {"fans": (0, 0, fans.shape[1], fans.shape[0]),
               "obama": (1100, 50, obama.shape[1], obama.shape[0]),
               "biden": (1500, 50, biden.shape[1], biden.shape[0])}
    return folder, image, reference, db, regions


def _inside(box, region) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x + w / 2 < rx + rw and ry <= y + h / 2 < ry + rh


def test_real_crowd_find_and_keep(real_crowd, tmp_path):
    folder, image, reference, db, regions = real_crowd
    faces = faces_json(db)
    fans = [f for f in faces if _inside(f["box"], regions["fans"])]
    assert len(fans) >= 15, len(fans)  # a crowd of ~25 visible faces
    assert sum(_inside(f["box"], regions["obama"]) for f in faces) == 1
    assert sum(_inside(f["box"], regions["biden"]) for f in faces) == 1

    proc = run_cli("find", db, "--photo", reference, "--json", "--top", "5", "--sheet", tmp_path / "s.png")
    assert proc.returncode == 0, proc.stderr
    matches = json.loads(proc.stdout)
    assert _inside(matches[0]["box"], regions["obama"]) and matches[0]["match"]
    assert all(not m["match"] for m in matches[1:]), matches

    out = tmp_path / "public.png"
    proc = run_cli("blur", image, "--db", db, "--out", out, "--keep", reference)
    assert proc.returncode == 0, proc.stderr
    before, after = read_image(image), read_image(out)
    for f in faces:
        x, y, w, h = f["box"]
        a = before[int(y) : int(y + h), int(x) : int(x + w)]
        b = after[int(y) : int(y + h), int(x) : int(x + w)]
        if _inside(f["box"], regions["obama"]):
            np.testing.assert_array_equal(a, b)
        elif max(w, h) >= 16:
            assert np.abs(a.astype(int) - b).mean() > 4, f["box"]
