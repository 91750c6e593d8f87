"""bench.passes: the detect stage pass by pass, as the scan plans it."""
from __future__ import annotations

import json

from bench.passes import main, time_passes
from conftest import shared_data
from gigaface.engine.plan import plan_passes, settings_for
from gigaface.engine.source import probe

CROWD = ("wider_face_val_subset", "WIDER_val", "images", "0--Parade", "0_Parade_marchingband_1_465.jpg")


def test_each_planned_pass_is_timed_and_only_a_seeded_one_skips_tiles():
    image = str(shared_data(*CROWD))
    info = probe(image)
    rows = time_passes(image, "balanced", log=lambda _: None)
    planned = plan_passes(info.width, info.height, settings_for("balanced"))
    assert [(r["scale"], r["margin"], r["seeded"]) for r in rows] == [(p.scale, p.margin, p.seeded) for p in planned]
    for r in rows:
        assert r["seconds"] > 0
        if r["seeded"]:
            assert 0 < r["tiles_run"] <= r["tiles_planned"]  # a crowd: some tiles near faces, not all
        else:
            assert r["tiles_run"] == r["tiles_planned"]


def test_the_command_writes_its_rows_and_refuses_a_missing_image_in_one_line(tmp_path, capsys):
    image = str(shared_data(*CROWD))
    out = tmp_path / "passes.json"
    assert main([image, "--preset", "fast", "--json", str(out)]) == 0
    info = probe(image)
    fast = plan_passes(info.width, info.height, settings_for("fast"))
    assert [r["scale"] for r in json.loads(out.read_text())["passes"]] == [p.scale for p in fast]
    assert main([str(tmp_path / "absent.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
