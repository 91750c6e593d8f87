"""The cluster section's own measurements and arithmetic, without a cluster: the driver's
decode and SQLite rates on a real image and library, and the projection from them (the
section itself, with its clusters, runs in `python -m bench --sections cluster`)."""
from __future__ import annotations

import pytest

from bench import cluster
from tests.helpers import crowd, write_image


def test_the_driver_rates_are_measured_on_real_files(tmp_path):
    jpeg = write_image(tmp_path / "crowd.jpg", crowd(2000, 1200, [(500, 500, 80)]), Q=90)
    decode = cluster._decode(jpeg)
    scales = [p["scale"] for p in decode["passes"]]
    assert 1.0 in scales and all(p["bytes"] > 0 and p["mb_per_s"] > 0 for p in decode["passes"])
    native = next(p for p in decode["passes"] if p["scale"] == 1.0 and not p["upscale_tiles"])
    assert native["bytes"] >= 2000 * 1200 * 3  # every row decoded, margins once more
    sqlite = cluster._sqlite(tmp_path)
    assert sqlite["detections_per_s"] > 0 and sqlite["faces_per_s"] > 0
    assert list(tmp_path.glob("sqlite-*")) == []  # its library is removed


def test_the_projection_follows_from_the_rates():
    common = {"mp_per_s": 1.0, "detect_mp_per_s": 1.2, "load": 1.0, "megapixels": 25.0}
    rows = [{**common, "name": "local scan, 2 cores", "slots": 0, "scan_s": 10.0, "wall_s": 12.0, "detect_s": 9.0,
             "describe_s": 1.0, "tiles": 400, "faces": 110, "embedded": 100, "stored": 300},
            {**common, "name": "cluster: 1 node x 1 CPU, tiled TIFF (read by workers)", "slots": 1, "tiles": 400,
             "detect_s": 20.0, "embedded": 100, "describe_s": 2.0, "faces": 110, "stored": 300, "scan_s": 22.0,
             "wall_s": 25.0}]
    mb = 100e6
    driver = {"decode": {"passes": [{"scale": 1.0, "upscale_tiles": False, "bytes": mb, "mb_per_s": 100.0}]},
              "store": {"put_mb_per_s": 1000.0}, "sqlite": {"detections_per_s": 100_000, "faces_per_s": 10_000},
              "convert_s": 1.0}
    p = cluster.project(rows, driver, pixels=25_000_000)
    scale = cluster.PROJECTED_MP / 25
    assert p["slot_tiles_per_s"] == 20.0 and p["slot_faces_per_s"] == 50.0
    assert p["driver_decode_s"] == pytest.approx(scale * 1.0, rel=0.01)          # 100 MB at 100 MB/s, x20
    assert p["driver_store_s"] == pytest.approx(scale * 0.1, rel=0.01)
    work = p["tiles"] / 20.0 + 110 * scale / 50.0
    assert p["cpu_slot_s"] == pytest.approx(work, rel=0.01)
    assert p["cpu_slots_fed_jpeg"] == int(work / p["driver_jpeg_s"])
    assert p["cpu_slots_fed_tiff"] > p["cpu_slots_fed_jpeg"]  # no decoding or shipping for a TIFF
    assert p["day"]["cpu_slots_needed"] == -(-1000 * p["cpu_slot_s"] // 86_400)
    text = cluster.markdown({"mosaic": {"size": "5000x5000", "megapixels": 25.0}, "rows": rows,
                             "driver": {**driver, "decode": {"passes": [{**driver["decode"]["passes"][0],
                                                                         "source_mp_per_s": 33.3}]},
                                        "tiled_mb": 75.0, "jpeg_mb": 5.0, "convert_mp_per_s": 25.0,
                                        "store": {"band_mb": 10, "put_mb_per_s": 1000.0, "same_node_mb_per_s": 2000.0,
                                                  "other_node_mb_per_s": 500.0}},
                             "projection": p})
    assert "not measured (no GPU was lent" in text and f"{p['cpu_slots_fed_jpeg']:,} CPU slots" in text
