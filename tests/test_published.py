"""What a published file carries: pixels and the source's RGB colour profile, nothing else.

The source photos carry EXIF (with IFD1's thumbnail of the unblurred photo), GPS, camera
fields, XMP, IPTC; every file made for publishing (`gigaface blur`, the service's exports,
the public pyramid, contact sheets) is checked byte by byte.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyvips

from conftest import shared_data
from gigaface.library.files import capture_files
from gigaface.library.store import Library
from gigaface.service.worker import run_job
from gigaface.engine.plan import settings_for
from gigaface.ingest import scan_path
from bench.harness import run_cli
from tests.helpers import astronaut, crowd, read_image, write_image

from tests.published import assert_publishable, exif_photo, icc_profile

# A crowd stored sideways, as a phone held upright stores it (EXIF orientation 6).
STORED = (1200, 700)  # width, height of the stored pixels
FACES = [(200, 180, 60), (620, 420, 80), (1000, 250, 50)]


def turned(box, stored_height: int):
    """A box (x, y, w, h) of the stored grid, in the picture turned 90 degrees clockwise."""
    x, y, w, h = box
    return (stored_height - (y + h), x, h, w)


def detail(rgb: np.ndarray, box) -> float:
    x, y, w, h = box
    crop = rgb[int(y + h * 0.2) : int(y + h * 0.8), int(x + w * 0.2) : int(x + w * 0.8)]
    return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


@pytest.fixture(scope="module")
def sideways(tmp_path_factory):
    """The sideways crowd with orientation 6, GPS, camera fields, XMP and a thumbnail, scanned."""
    folder = tmp_path_factory.mktemp("published")
    pixels = crowd(*STORED, FACES, seed=11)
    image = exif_photo(folder / "phone.jpg", pixels, orientation=6)
    db = folder / "library.db"
    done = run_cli("scan", image, "--db", db, "--quiet")
    assert done.returncode == 0, done.stderr
    boxes = [f["box"] for f in json.loads(run_cli("faces", db, "--json").stdout)]
    assert len(boxes) == len(FACES)
    return folder, image, db, boxes


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_blur_publishes_the_turned_pixels_only(sideways, tmp_path, suffix):
    folder, image, db, boxes = sideways
    out = tmp_path / f"public{suffix}"
    done = run_cli("blur", image, "--db", db, "--out", out)
    assert done.returncode == 0, done.stderr
    assert_publishable(out, icc=None)  # the source has no profile: none is made up
    published = pyvips.Image.new_from_file(str(out))
    assert not published.get_typeof("orientation") or published.get("orientation") == 1
    # The orientation is applied: the pixels are turned, the faces blurred where they are now.
    stored = read_image(image)
    upright = np.rot90(stored, k=-1)
    after = read_image(out)
    assert after.shape == upright.shape == (STORED[0], STORED[1], 3)
    for box in boxes:
        now = turned(box, STORED[1])
        assert detail(after, now) < 0.3 * detail(upright, now), box
    far = np.ones(upright.shape[:2], bool)
    for box in boxes:
        x, y, w, h = turned(box, STORED[1])
        far[max(0, int(y - h)) : int(y + 2 * h), max(0, int(x - w)) : int(x + 2 * w)] = False
    # Away from the faces: the stored pixels turned clockwise (up to the codec's loss), not
    # the other way round.
    right = np.abs(after[far].astype(int) - upright[far]).mean()
    wrong = np.abs(after[far].astype(int) - np.rot90(stored, k=1)[far]).mean()
    assert right < 0.3 * wrong, (right, wrong)


def test_the_source_photo_does_carry_what_must_not_be_published(sideways):
    """The check above would mean nothing if the source carried nothing."""
    _, image, _, _ = sideways
    with pytest.raises(AssertionError):
        assert_publishable(image)
    source = pyvips.Image.new_from_file(str(image))
    assert source.get("orientation") == 6 and source.get_typeof("exif-ifd3-GPSLatitude")
    assert source.get_typeof("jpeg-thumbnail-data") and source.get_typeof("xmp-data")


# Real photos whose EXIF holds an IFD1 thumbnail: with XMP, IPTC and an ICC profile; with GPS.
REAL = [("face_recognition_examples", "obama.jpg"), ("deepface_identities", "img1.jpg")]


@pytest.mark.parametrize("parts", REAL, ids=[p[1] for p in REAL])
def test_blur_of_a_real_photo_keeps_only_its_colour_profile(parts, tmp_path):
    source = shared_data(*parts)
    image = shutil.copy(source, tmp_path / parts[1])
    fields = pyvips.Image.new_from_file(image).get_fields()
    assert "jpeg-thumbnail-data" in fields and "icc-profile-data" in fields
    db = tmp_path / "library.db"
    done = run_cli("scan", image, "--db", db, "--quiet")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "public.jpg"
    done = run_cli("blur", image, "--db", db, "--out", out)
    assert done.returncode == 0, done.stderr
    assert_publishable(out, icc=icc_profile(Path(image).read_bytes()))
    faces = json.loads(run_cli("faces", db, "--json").stdout)
    assert faces
    before, after = read_image(image), read_image(out)
    for f in faces:
        assert detail(after, f["box"]) < 0.3 * detail(before, f["box"]) + 1, f["box"]


def test_exports_and_pyramids_of_a_job_carry_pixels_only(sideways, tmp_path, detector):
    """The service's job: the export and both pyramids' tiles and properties."""
    _, image, _, _ = sideways
    db = tmp_path / "library.db"
    library = Library(str(db), create=True)
    capture = scan_path(library, str(image), settings_for("balanced"), detector=detector).capture
    run_job(str(db), capture.id)
    files = capture_files(str(db), capture.id)
    (export,) = files.exports(capture.frames)
    assert_publishable(export)
    assert read_image(export).shape == (STORED[0], STORED[1], 3)  # turned, as the blur is
    size = ET.parse(files.public_pyramid).getroot()[0].attrib
    assert (int(size["Width"]), int(size["Height"])) == (STORED[1], STORED[0])
    for which in ("public", "pyramid"):
        tiles = glob.glob(os.path.join(files.tiles(which), "*", "*.jpg"))
        assert tiles
        for tile in tiles:
            assert_publishable(tile)
        properties = ET.parse(os.path.join(files.tiles(which), "vips-properties.xml")).getroot()
        names = [e.text for e in properties.iter() if e.tag.endswith("name")]
        assert names and not [n for n in names if n.startswith(("exif", "xmp", "iptc", "icc", "jpeg-thumbnail"))]


def test_contact_sheet_carries_pixels_only(sideways, tmp_path):
    _, _, db, _ = sideways
    reference = write_image(tmp_path / "astronaut.png", astronaut())
    sheet = tmp_path / "sheet.png"
    done = run_cli("find", db, "--photo", reference, "--sheet", sheet)
    assert done.returncode == 0, done.stderr
    assert_publishable(sheet)
