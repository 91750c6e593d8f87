"""Where a scan's detection time goes: each pass of a preset over one image, timed.

    python -m bench.passes IMAGE [--preset balanced] [--json out.json]

Runs the scan's own detect stage pass by pass (`plan.plan_passes`, `detect.detect_passes`:
a seeded pass is seeded by what the passes before it found, as in `detect_image`) and prints,
for each pass, its scale and margin, the tiles it ran of those it planned, its seconds and
the milliseconds a tile. No library and no describing: the detect stage alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def time_passes(path: str, preset: str = "balanced", log=print) -> list[dict]:
    from gigaface.engine.detect import detect_passes, units
    from gigaface.engine.detector import CenterFace
    from gigaface.engine.plan import plan_passes, settings_for
    from gigaface.engine.source import probe

    settings = settings_for(preset)
    info = probe(path, max_pixels=1 << 40)
    detector = CenterFace(settings.tile)
    detector.detect(np.zeros((1, settings.tile, settings.tile, 3), np.uint8))  # first-call set-up, untimed
    found = []
    rows = []
    for p in plan_passes(info.width, info.height, settings):
        before, start, cpu = detector.tiles_run, time.perf_counter(), time.process_time()
        found = detect_passes(info, [p], detector, settings, found)  # seeded by all found before, as a scan
        seconds = time.perf_counter() - start
        ran = detector.tiles_run - before
        rows.append({"scale": p.scale, "margin": p.margin, "tile": p.tile, "seeded": p.seeded,
                     "faces_px": [p.min_size, p.max_size],
                     "tiles_planned": sum(t for _, t in units(info.width, info.height, p)), "tiles_run": ran,
                     "seconds": round(seconds, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                     "ms_per_tile": round(1e3 * seconds / ran, 1) if ran else None})
        log(f"scale {p.scale:g}{' (seeded)' if p.seeded else ''}, margin {p.margin}: "
            f"{ran:,} of {rows[-1]['tiles_planned']:,} tiles in {seconds:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passes", description=__doc__.split("\n")[0])
    parser.add_argument("image")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    from gigaface.errors import GigafaceError
    from gigaface.process import configure_process

    configure_process()
    try:
        rows = time_passes(args.image, args.preset)
    except GigafaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(r["seconds"] for r in rows)
    print(f"{sum(r['tiles_run'] for r in rows):,} tiles in {total:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"image": args.image, "preset": args.preset, "passes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
