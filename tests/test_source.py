"""Decoding: every format read band by band (sequentially) gives the pixels of a whole read."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import shared_data
from gigaface.errors import GigafaceError
from gigaface.engine.source import RowWindow, bands, load_scaled, probe
from tests.helpers import astronaut, crowd, read_image, write_image

H, W = 480, 600


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A real photo (the astronaut) at 600x480 with a colour ramp, so no two rows are alike."""
    rgb = cv2.resize(astronaut(), (W, H), interpolation=cv2.INTER_AREA).astype(np.int16)
    rgb[:, :, 2] += np.linspace(0, 40, H, dtype=np.int16)[:, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


FORMATS = {
    "png": ("png", {}),
    "tiff": ("tif", {}),
    "tiled-pyramid-tiff": ("tif", dict(tile=True, pyramid=True, tile_width=64, tile_height=64)),
    "webp-lossless": ("webp", dict(lossless=True)),
    "jpeg": ("jpg", dict(Q=95)),
}


def core_rows(band):
    return band.pixels[band.core_top - band.top : band.core_bottom - band.top]


def check_bands(found, whole: np.ndarray, core: int, margin: int, start: int = 0) -> None:
    """Bands own consecutive cores, carry `margin` rows beyond them, and hold the right pixels."""
    height = whole.shape[0]
    assert [b.index for b in found] == list(range(start, -(-height // core)))
    assert found[0].core_top == start * core
    assert found[-1].core_bottom == height
    for prev, band in zip(found, found[1:]):
        assert band.core_top == prev.core_bottom
    for band in found:
        assert band.core_bottom - band.core_top == min(core, height - band.core_top)
        assert band.top == max(0, band.core_top - margin)
        bottom = min(height, band.core_bottom + margin)
        assert band.pixels.shape == (bottom - band.top, whole.shape[1], 3)
        assert band.pixels.dtype == np.uint8
        np.testing.assert_array_equal(band.pixels, whole[band.top : bottom], err_msg=f"band {band.index}")


@pytest.mark.parametrize("kind", list(FORMATS))
@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "inline"])
def test_formats_read_in_bands_equal_whole_read(tmp_path, picture, kind, prefetch):
    suffix, options = FORMATS[kind]
    path = write_image(tmp_path / f"picture.{suffix}", picture, **options)
    info = probe(str(path))
    assert (info.width, info.height) == (W, H)
    whole = read_image(path)
    if kind == "jpeg":
        # Lossy: close to the original, not equal.
        assert np.abs(whole.astype(int) - picture).mean() < 3
    else:
        np.testing.assert_array_equal(whole, picture)
    image, scale = load_scaled(info, 1.0)
    assert scale == 1.0
    # Odd core and margin: reads that start and end in the middle of JPEG strips.
    core, margin = 97, 13
    found = list(bands(image, core, margin, path=str(path), prefetch=prefetch))
    check_bands(found, whole, core, margin)
    np.testing.assert_array_equal(np.concatenate([core_rows(b) for b in found]), whole)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_bands_from_a_start_band(tmp_path, picture, suffix):
    path = write_image(tmp_path / f"picture.{suffix}", picture)
    whole = read_image(path)
    image, _ = load_scaled(probe(str(path)), 1.0)
    core, margin = 64, 40
    found = list(bands(image, core, margin, start=3, path=str(path)))
    check_bands(found, whole, core, margin, start=3)


def test_band_margin_larger_than_core(tmp_path, picture):
    """Each band's margin reaches past its neighbour's core; the carried rows stay right."""
    path = write_image(tmp_path / "picture.jpg", picture)
    whole = read_image(path)
    image, _ = load_scaled(probe(str(path)), 1.0)
    check_bands(list(bands(image, 50, 120, path=str(path))), whole, 50, 120)


@pytest.mark.parametrize("scale", [2.0, 4.0, 0.5, 0.25, 0.3])
def test_scaled_jpeg_read_in_bands(tmp_path, picture, scale):
    """The up- and down-scaled views the passes use, read in bands, equal one whole read.

    Upscaled views re-read source rows across band edges, which a sequential JPEG only allows
    when reads share one pipeline.
    """
    path = write_image(tmp_path / "picture.jpg", picture, Q=90)
    info = probe(str(path))
    image, exact = load_scaled(info, scale)
    assert image.width == round(W * scale)
    assert exact == pytest.approx(scale, rel=0.01)
    whole, _ = load_scaled(info, scale)
    whole = whole.numpy()
    assert whole.shape == (image.height, image.width, 3)
    core, margin = 640 - 2 * 48, 48
    found = list(bands(image, core, margin, path=str(path)))
    check_bands(found, whole, core, margin)


def test_scaled_view_matches_resized_original(tmp_path, picture):
    path = write_image(tmp_path / "picture.png", picture)
    image, exact = load_scaled(probe(str(path)), 0.5)
    half = np.concatenate([core_rows(b) for b in bands(image, 100, 20)])
    expected = cv2.resize(picture, (image.width, image.height), interpolation=cv2.INTER_AREA)
    assert exact == 0.5
    assert np.abs(half.astype(int) - expected).mean() < 4


@pytest.mark.parametrize("suffix", ["jpg", "png"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_window_returns_requested_rows_and_stays_small(tmp_path, suffix, seed):
    rng = np.random.default_rng(seed)
    tall = np.concatenate([cv2.resize(astronaut(), (300, 300))] * 8)  # 2400 x 300
    path = write_image(tmp_path / f"tall.{suffix}", tall)
    whole = read_image(path)
    image, _ = load_scaled(probe(str(path)), 1.0)
    keep, step = 150, 64
    window = RowWindow(image, keep=keep, step=step, path=str(path))
    y1 = 0
    requests = 0
    while y1 < whole.shape[0]:
        # Like the describe stage: regions sorted by their bottom, each at most `keep` tall;
        # small, big and unaligned jumps in between.
        y1 = min(whole.shape[0], y1 + int(rng.choice([0, 1, 3, 7, 40, 90, 200, 333])))
        y0 = y1 - int(rng.integers(1, keep + 1))
        rows = window.rows(y0, y1)
        requests += 1
        np.testing.assert_array_equal(rows, whole[max(0, y0) : y1])
        assert window.pixels.shape[0] <= keep + step + (y1 - max(0, y0))
        assert window.top <= max(0, y0)
    assert requests > 10
    # Old rows were dropped: the window no longer starts at the top of the image...
    assert window.top >= whole.shape[0] - keep - step - keep
    # ... and asking for them again is an error, not wrong pixels.
    with pytest.raises(ValueError):
        window.rows(0, whole.shape[0])


def test_row_window_with_one_big_request_after_small_ones(tmp_path):
    """A tall region whose bottom follows small regions' bottoms is still there to read."""
    tall = np.concatenate([cv2.resize(astronaut(), (200, 200))] * 6)
    path = write_image(tmp_path / "tall.jpg", tall)
    whole = read_image(path)
    image, _ = load_scaled(probe(str(path)), 1.0)
    window = RowWindow(image, keep=400, step=256)
    for y0, y1 in [(700, 740), (735, 750), (355, 752)]:
        np.testing.assert_array_equal(window.rows(y0, y1), whole[y0:y1])


# --- refusing bad input ---------------------------------------------------------------
def test_probe_missing_file(tmp_path):
    path = tmp_path / "nothing-here.jpg"
    with pytest.raises(GigafaceError, match="no such file") as exc:
        probe(str(path))
    assert str(path) in str(exc.value)


def test_probe_directory(tmp_path):
    with pytest.raises(GigafaceError, match="directory") as exc:
        probe(str(tmp_path))
    assert str(tmp_path) in str(exc.value)


@pytest.mark.parametrize("content", [b"this is a text file, not a picture\n" * 20, b""], ids=["text", "empty"])
def test_probe_not_an_image(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(GigafaceError, match="not an image") as exc:
        probe(str(path))
    assert str(path) in str(exc.value)


def test_probe_pixel_limit(tmp_path, picture):
    path = write_image(tmp_path / "picture.png", picture)
    assert probe(str(path), max_pixels=W * H).width == W  # exactly at the limit is fine
    with pytest.raises(GigafaceError) as exc:
        probe(str(path), max_pixels=1000)
    message = str(exc.value)
    assert str(path) in message
    assert f"{W}x{H}" in message
    assert "1,000" in message or "1000" in message, message  # says what the limit is
    assert "--max-pixels" in message


def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _truncated_jpeg(tmp_path, picture):
    full = write_image(tmp_path / "full.jpg", np.concatenate([picture] * 3), Q=90)
    return _truncate(full, tmp_path / "half.jpg")


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "inline"])
def test_truncated_jpeg_fails_when_its_rows_are_read(tmp_path, picture, prefetch):
    path = _truncated_jpeg(tmp_path, picture)
    info = probe(str(path))  # the header is intact
    image, _ = load_scaled(info, 1.0)
    with pytest.raises(GigafaceError) as exc:
        for _ in bands(image, 100, 20, path=str(path), prefetch=prefetch):
            pass
    assert str(path) in str(exc.value)


def test_truncated_jpeg_fails_in_row_window(tmp_path, picture):
    path = _truncated_jpeg(tmp_path, picture)
    image, _ = load_scaled(probe(str(path)), 1.0)
    window = RowWindow(image, keep=100, path=str(path))
    with pytest.raises(GigafaceError) as exc:
        for y in range(50, image.height + 1, 50):
            window.rows(y - 50, y)
    assert str(path) in str(exc.value)


def test_truncated_real_photo(tmp_path):
    path = _truncate(shared_data("face_recognition_examples", "obama.jpg"), tmp_path / "obama-half.jpg")
    image, _ = load_scaled(probe(str(path)), 1.0)
    with pytest.raises(GigafaceError, match="obama-half.jpg"):
        for _ in bands(image, 512, 64, path=str(path)):
            pass


# --- colour and depth -----------------------------------------------------------------
def _read_all(path) -> np.ndarray:
    image, _ = load_scaled(probe(str(path)), 1.0)
    return np.concatenate([core_rows(b) for b in bands(image, 128, 32)])


def test_grey_8_and_16_bit(tmp_path, picture):
    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey8.png"), grey)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey.astype(np.uint16) * 257)
    for name in ("grey8.png", "grey16.png"):
        rgb = _read_all(tmp_path / name)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8, name
        for c in range(3):
            np.testing.assert_array_equal(rgb[:, :, c], grey, err_msg=name)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_rgb_16_bit(tmp_path, picture, suffix):
    deep = picture.astype(np.uint16) * 257
    if suffix == "png":
        cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    else:
        import pyvips

        pyvips.Image.new_from_array(deep).copy(interpretation="rgb16").tiffsave(str(tmp_path / "deep.tif"))
    rgb = _read_all(tmp_path / f"deep.{suffix}")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, picture)


def test_rgba_flattens_onto_white(tmp_path, picture):
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:100, :150] = 0
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(np.dstack([picture, alpha]), cv2.COLOR_RGBA2BGRA))
    rgb = _read_all(tmp_path / "rgba.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb[:100, :150] == 255).all()
    np.testing.assert_array_equal(rgb[100:], picture[100:])
    np.testing.assert_array_equal(rgb[:, 150:], picture[:, 150:])


def test_grey_with_alpha(tmp_path, picture):
    import pyvips

    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    alpha = np.full((H, W), 255, np.uint8)
    alpha[-50:, -50:] = 0
    pyvips.Image.new_from_array(np.dstack([grey, alpha])).copy(interpretation="b-w").pngsave(str(tmp_path / "ga.png"))
    rgb = _read_all(tmp_path / "ga.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb[-50:, -50:] == 255).all()
    np.testing.assert_array_equal(rgb[:-50, :, 1], grey[:-50])


@pytest.mark.parametrize("name, options, kind", [("prog.jpg", {"interlace": True}, "progressive JPEG"),
                                                 ("adam7.png", {"interlace": True}, "interlaced PNG")])
def test_large_unstreamable_images_are_refused(tmp_path, monkeypatch, name, options, kind):
    """Progressive JPEG / interlaced PNG decoders hold the whole image: refuse big ones."""
    import gigaface.engine.source as source

    path = write_image(tmp_path / name, crowd(300, 200, []), **options)
    baseline = write_image(tmp_path / ("plain" + path.suffix), crowd(300, 200, []))
    monkeypatch.setattr(source, "UNSTREAMABLE_MAX_PIXELS", 1000)
    with pytest.raises(GigafaceError, match=kind) as exc:
        probe(str(path))
    assert str(path) in str(exc.value)
    assert probe(str(baseline)).width == 300  # the same pixels stored plainly are fine


_WALK = """
import sys
from gigaface.process import configure_process
configure_process()
from gigaface.engine.source import bands, probe, load_scaled
def resident_file_mb():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssFile"].split()[0]) >> 10

info = probe(sys.argv[1])
image, _ = load_scaled(info, 1.0)
before = resident_file_mb()  # the libraries' pages: 48-85 MB, as the venv's files happen to be cached
for band in bands(image, 512, 32, path=sys.argv[1]):
    pass
print(resident_file_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_walking_down_a_jpeg_does_not_keep_the_file_resident(tmp_path):
    """libvips maps a file it opens by name, and every page read stayed resident until the
    image closed: a 2-GP JPEG's 345 MB counted in the scan's peak RSS. Read through
    read() calls, a walk down a JPEG keeps none of the file."""
    import pyvips

    noise = pyvips.Image.gaussnoise(4000, 12000, mean=128, sigma=60).cast("uchar")
    path = tmp_path / "tall.jpg"
    noise.bandjoin([noise, noise]).write_to_file(str(path), Q=95)
    size_mb = path.stat().st_size >> 20
    done = subprocess.run([sys.executable, "-c", _WALK, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert size_mb > 30
    assert int(done.stdout.split()[-1]) < size_mb // 4, (done.stdout, size_mb)
