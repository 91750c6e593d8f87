"""Camera-array manifests: clear errors for bad ones, and the same faces as the whole picture."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.engine.manifest import read_manifest
from gigaface.engine.plan import settings_for
from gigaface.ingest import scan_path
from bench.harness import run_cli
from tests.helpers import crowd, iou, write_image


@pytest.fixture
def frame_file(tmp_path):
    return write_image(tmp_path / "cam0.png", np.full((40, 60, 3), 128, np.uint8))


def write_manifest(tmp_path, content) -> str:
    path = tmp_path / "frames.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize("content, message", [
    ('{"frames": [{"file": "cam0.png", "x": 0,', "not a valid JSON manifest"),
    ("", "not a valid JSON manifest"),
    ({"frames": []}, "non-empty \"frames\" list"),
    ({"cameras": [{"file": "cam0.png"}]}, "non-empty \"frames\" list"),
    ({"frames": "cam0.png"}, "non-empty \"frames\" list"),
    ({"frames": [{"x": 0, "y": 0}]}, "frame 0: needs a \"file\" string"),
    ({"frames": [{"file": "cam0.png"}, {"file": ""}]}, "frame 1: needs a \"file\" string"),
    ({"frames": [{"file": "cam0.png", "x": -5, "y": 0}]}, "frame 0: negative offset"),
    ({"frames": [{"file": "cam0.png", "x": 0, "y": -1}]}, "frame 0: negative offset"),
    ({"frames": [{"file": "cam0.png", "x": 1.5, "y": 0}]}, "frame 0: x and y must be whole numbers"),
    ({"frames": [{"file": "cam0.png", "x": 0, "y": "10"}]}, "frame 0: x and y must be whole numbers"),
    ({"frames": [{"file": "cam0.png", "x": True, "y": 0}]}, "frame 0: x and y must be whole numbers"),
], ids=["truncated-json", "empty-file", "empty-frames", "no-frames-key", "frames-not-a-list", "no-file",
        "empty-file-name", "negative-x", "negative-y", "fractional-x", "string-y", "bool-x"])
def test_bad_manifest(tmp_path, frame_file, content, message):
    path = write_manifest(tmp_path, content)
    with pytest.raises(GigafaceError) as exc:
        read_manifest(path)
    assert message in str(exc.value)
    assert str(exc.value).startswith(path)


def test_manifest_frame_file_missing(tmp_path, frame_file):
    path = write_manifest(tmp_path, {"frames": [{"file": "cam0.png"}, {"file": "cam9.png", "x": 60}]})
    with pytest.raises(GigafaceError, match="no such file") as exc:
        read_manifest(path)
    assert "cam9.png" in str(exc.value)


def test_manifest_frame_not_an_image(tmp_path, frame_file):
    (tmp_path / "notes.png").write_text("not pixels")
    path = write_manifest(tmp_path, {"frames": [{"file": "notes.png"}]})
    with pytest.raises(GigafaceError, match="not an image") as exc:
        read_manifest(path)
    assert "notes.png" in str(exc.value)


def test_manifest_itself_missing(tmp_path):
    path = str(tmp_path / "nowhere.json")
    with pytest.raises(GigafaceError, match="cannot read manifest") as exc:
        read_manifest(path)
    assert path in str(exc.value)


def test_manifest_panorama_over_pixel_limit(tmp_path, frame_file):
    # Each frame is small, but they are spread over a huge panorama.
    path = write_manifest(tmp_path, {"frames": [{"file": "cam0.png"}, {"file": "cam0.png", "x": 50_000, "y": 50_000}]})
    assert len(read_manifest(path)) == 2
    with pytest.raises(GigafaceError, match="pixel limit"):
        read_manifest(path, max_pixels=10**9)


def test_manifest_paths_are_relative_to_it(tmp_path, frame_file):
    sub = tmp_path / "sub"
    sub.mkdir()
    write_image(sub / "cam1.png", np.full((30, 50, 3), 90, np.uint8))
    (sub / "frames.json").write_text(json.dumps([{"file": "cam1.png", "x": 3, "y": 4},
                                                 {"file": "../sub/cam1.png", "x": 60, "y": 4}]))
    first, second = read_manifest(str(sub / "frames.json"))
    assert first.path == second.path == str(sub / "cam1.png")
    assert (first.x, first.y, first.width, first.height) == (3, 4, 50, 30)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_manifest_frames_stay_in_its_folder_unless_allowed(tmp_path, frame_file, where):
    """A manifest (perhaps handed to the service) cannot make gigaface read images elsewhere."""
    sub = tmp_path / "sub"
    sub.mkdir()
    name = {"parent": "../cam0.png", "absolute": str(frame_file), "symlink": "link.png"}[where]
    (sub / "link.png").symlink_to(frame_file)
    manifest = sub / "frames.json"
    manifest.write_text(json.dumps([{"file": name, "x": 3, "y": 4}]))
    with pytest.raises(GigafaceError, match="outside the manifest's folder") as exc:
        read_manifest(str(manifest))
    assert "--frames-anywhere" in str(exc.value)
    (frame,) = read_manifest(str(manifest), frames_anywhere=True)
    assert os.path.realpath(frame.path) == str(frame_file)
    assert (frame.x, frame.y, frame.width, frame.height) == (3, 4, 60, 40)


def test_scan_refuses_frames_outside_unless_told(tmp_path, frame_file):
    sub = tmp_path / "sub"
    sub.mkdir()
    manifest = sub / "frames.json"
    manifest.write_text(json.dumps([{"file": "../cam0.png"}]))
    refused = run_cli("scan", manifest, "--db", tmp_path / "lib.db", "--quiet")
    assert refused.returncode == 2 and "outside the manifest's folder" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "lib.db").exists()
    allowed = run_cli("scan", manifest, "--db", tmp_path / "lib.db", "--quiet", "--frames-anywhere", "--json")
    assert allowed.returncode == 0, allowed.stderr
    (summary,) = json.loads(allowed.stdout)
    assert (summary["width"], summary["height"], summary["faces"]) == (60, 40, 0)


@pytest.mark.timeout(20)
def test_a_fifo_as_manifest_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "frames.json"
    os.mkfifo(fifo)
    with pytest.raises(GigafaceError, match="not a regular file"):
        read_manifest(str(fifo))


# --- a camera array -----------------------------------------------------------------------
WIDTH, HEIGHT, OVERLAP = 1600, 800, 200
FACES = [  # (cx, cy, face height): some inside one frame, some in overlaps, one in all four
    (200, 150, 60), (800, 120, 70), (1300, 200, 80), (300, 400, 50),
    (800, 400, 60), (1400, 650, 70), (450, 680, 90), (1150, 420, 40),
]


@pytest.fixture(scope="module")
def camera_array(tmp_path_factory, detector):
    folder = tmp_path_factory.mktemp("array")
    picture = crowd(WIDTH, HEIGHT, FACES, seed=5)
    whole = write_image(folder / "whole.png", picture)
    fw, fh = (WIDTH + OVERLAP) // 2, (HEIGHT + OVERLAP) // 2
    entries = []
    for row, y in enumerate((0, HEIGHT - fh)):
        for col, x in enumerate((0, WIDTH - fw)):
            name = f"cam{row}{col}.png"
            write_image(folder / name, picture[y : y + fh, x : x + fw])
            entries.append({"file": name, "x": x, "y": y})
    manifest = folder / "frames.json"
    manifest.write_text(json.dumps({"frames": entries}))
    library = Library(str(folder / "library.db"), create=True)
    settings = settings_for("balanced")
    whole_scan = scan_path(library, str(whole), settings, detector=detector)
    array_scan = scan_path(library, str(manifest), settings, detector=detector)
    return folder, library, whole_scan, array_scan


def test_manifest_capture_record(camera_array):
    folder, library, _, array_scan = camera_array
    cap = array_scan.capture
    assert cap.kind == "manifest"
    assert (cap.width, cap.height) == (WIDTH, HEIGHT)
    assert len(cap.frames) == 4
    assert {os.path.basename(f.path) for f in cap.frames} == {"cam00.png", "cam01.png", "cam10.png", "cam11.png"}
    assert cap.stage == "done"


def test_camera_array_finds_the_faces_of_the_whole_picture(camera_array):
    folder, library, whole_scan, array_scan = camera_array
    whole = library.faces.all(whole_scan.capture.id)
    array = library.faces.all(array_scan.capture.id)
    assert len(whole) == len(FACES)
    for face in whole:
        hits = [f for f in array if iou(face.box, f.box) > 0.5]
        assert len(hits) == 1, f"{face.box}: {[f.box for f in hits]}"
    for face in array:  # and nothing else, no duplicates from the overlaps
        assert sum(iou(face.box, f.box) > 0.5 for f in whole) == 1, face.box
    assert len(array) == len(whole)


def test_camera_array_faces_come_from_frames(camera_array):
    folder, library, _, array_scan = camera_array
    frames = {f.path: f for f in array_scan.capture.frames}
    for face in library.faces.all(array_scan.capture.id):
        assert face.source in frames
        frame = frames[face.source]
        x, y, w, h = face.box  # panorama pixels, inside the frame it was taken from
        assert frame.x <= x and x + w <= frame.x + frame.width, (face.box, frame)
        assert frame.y <= y and y + h <= frame.y + frame.height, (face.box, frame)
        assert face.embedded


def test_manifest_rescan_is_skipped(camera_array, detector):
    folder, library, _, array_scan = camera_array
    again = scan_path(library, str(folder / "frames.json"), settings_for("balanced"), detector=detector)
    assert again.skipped
    assert again.capture.id == array_scan.capture.id
    assert library.faces.count(array_scan.capture.id) == array_scan.faces
