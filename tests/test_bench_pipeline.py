"""Smoke test of the benchmark suite end to end on a tiny mosaic: every stage runs for real
(mosaic, CLI scan, search, gigaface and SAHI side by side, report), at a size that takes
seconds. Numbers are not asserted beyond what must hold at any speed."""
from __future__ import annotations

import json

import pytest

from bench.data import MissingData


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bench.mosaic import build_mosaic

    try:
        return build_mosaic(tmp_path_factory.mktemp("mosaic"), megapixels=6, seed=3, planted=2)
    except MissingData as exc:
        pytest.skip(str(exc))


def test_pipeline_and_report(tiny, tmp_path):
    from bench import panorama
    from bench.__main__ import save_json
    from bench.report import write_report

    scan = panorama.full_scan(tiny, tmp_path / "tiny.db")
    assert scan["faces"] > 0 and 0.0 < scan["ap"] <= 1.0
    assert scan["peak_main_mb"] > 0 and scan["detect_s"] > 0

    found = panorama.search(tiny, tmp_path / "tiny.db")
    assert {r["planted"] for r in found} == {p.photo.name for p in tiny.planted}
    for row in found:
        assert row["query"] != row["planted"]
        # Every planted person is found, embedded and ranked: a miss ("not detected", "too
        # small to embed") is a failure of the pipeline, not a number to report.
        assert row["why"] == "" and row["rank"] == 1, row  # 36-55 px faces, seed 3: each the first match
    print(found)  # shown with -s or on failure

    rows = panorama.side_by_side(tiny, ("balanced",), peers=("sahi-tuned",), timeout_s=300, log=lambda _: None)
    names = [r["name"] for r in rows]
    assert names == ["gigaface balanced (JPEG)", "gigaface balanced (tiled TIFF)", "sahi-tuned"]
    jpeg, tiff, sahi = rows
    assert jpeg["detections"] > 0 and sahi["detections"] > 0
    # The same detector on the same pixels: the JPEG and its tiled TIFF copy agree closely.
    assert abs(jpeg["ap"] - tiff["ap"]) < 0.05
    ratios = panorama.ratios(rows)
    assert {(r["ours"], r["peer"]) for r in ratios} == {(jpeg["name"], "sahi-tuned"), (tiff["name"], "sahi-tuned")}

    results = tmp_path / "results"
    save_json(results / "mosaic.json", {
        "mosaic": {"size": f"{tiny.width}x{tiny.height}", "megapixels": 6, "faces": int((~tiny.invalid).sum()),
                   "invalid": int(tiny.invalid.sum()), "cells": len(tiny.cells), "planted": 2, "build_s": 0},
        "scan": scan, "floor": panorama.floor(tiny, scan["detect_s"], 0.02), "search": found,
        "side_by_side": rows, "ratios": ratios, "seconds": 1, "command": "test"})
    save_json(results / "scaling.json", {"rows": [scan, scan], "seconds": 1, "command": "test"})
    report = write_report(results, tmp_path / "report.md", tmp_path / "plots")
    text = report.read_text()
    assert "gigaface balanced (tiled TIFF)" in text and "sahi-tuned" in text
    assert "## 1. WIDER FACE" in text and "Not run yet" in text  # sections without results say so
    assert (tmp_path / "plots" / "scaling.png").stat().st_size > 1000
    assert json.loads((results / "mosaic.json").read_text())["scan"]["faces"] == scan["faces"]
