"""Scan benchmark: synthetic stadium panoramas of several sizes, scanned by the real CLI.

    python bench/scan_bench.py                 # 100 MP (minutes)
    python bench/scan_bench.py --size 100,500,1000

For each size it reports wall time, megapixels per second of detection, faces embedded per
second, peak RSS of the scanning process and of an embedding worker, and the detector-only
floor (tiles x single-tile latency) against the measured detection time. Results go to
stdout and to bench/out/scan-report.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gigaface.demo_scene import build_stadium
from gigaface.detector import CenterFace
from gigaface.plan import settings_for
from gigaface.scan_job import count_tiles
from gigaface.index import Frame

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def tile_latency(repeats: int = 30) -> float:
    """Median seconds for one 640x640 tile: the detector alone, one session using every core."""
    detector = CenterFace(streams=1)
    tile = np.random.default_rng(0).integers(0, 255, (1, 640, 640, 3), dtype=np.uint8)
    for _ in range(3):
        detector.detect(tile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.detect(tile)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def scan_once(panorama: Path, preset: str) -> dict:
    db = OUT / f"{panorama.stem}-{preset}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    cmd = [sys.executable, "-c", "from gigaface.cli import main; main()", "scan", str(panorama),
           "--db", str(db), "--preset", preset, "--json", "--quiet"]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    (result,) = json.loads(done.stdout)
    result["wall"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100", help="comma-separated panorama sizes in megapixels")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--occupancy", type=float, default=0.1,
                        help="fraction of seats taken (0.88 = sold out; describing costs ~40 ms a face)")
    parser.add_argument("--keep", action="store_true", help="keep the generated panoramas")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    latency = tile_latency()
    print(f"single 640x640 tile: {latency * 1000:.1f} ms (median)")
    rows = []
    for size in [float(s) for s in args.size.split(",")]:
        folder = OUT / f"stadium-{size:g}mp"
        t = time.perf_counter()
        scene = build_stadium(folder, megapixels=size, occupancy=args.occupancy)
        built = time.perf_counter() - t
        print(f"{size:g} MP: built {scene.width}x{scene.height} with {scene.faces:,} faces in {built:.0f} s")
        result = scan_once(scene.panorama, args.preset)
        frame = Frame(str(scene.panorama), 0, 0, scene.width, scene.height)
        tiles = count_tiles([frame], settings_for(args.preset))
        floor = tiles * latency
        mp = scene.width * scene.height / 1e6
        row = {
            "megapixels": round(mp, 1), "size": f"{scene.width}x{scene.height}", "planted": scene.faces,
            "faces": result["faces"], "embedded": result["embedded"], "embedded_per_s": round(result["embedded"] / max(result["describe_seconds"], 1e-9), 1),
            "wall_s": round(result["wall"], 1), "detect_s": result["detect_seconds"], "describe_s": result["describe_seconds"],
            "mp_per_s": round(mp / result["detect_seconds"], 2), "tiles": tiles, "floor_s": round(floor, 1),
            "floor_ratio": round(floor / result["detect_seconds"], 3),
            "peak_main_mb": result["peak_rss_mb"]["main"], "peak_worker_mb": result["peak_rss_mb"]["worker"],
        }
        rows.append(row)
        print(json.dumps(row))
        if not args.keep:
            for f in (scene.panorama, scene.reference):
                Path(f).unlink(missing_ok=True)
    write_report(rows, latency, args)


def write_report(rows: list[dict], latency: float, args) -> None:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        "# gigaface scan benchmark", "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"preset `{args.preset}`, occupancy {args.occupancy}; "
        f"`python bench/scan_bench.py --size {args.size} --occupancy {args.occupancy}`", "",
        f"Detector alone: {latency * 1000:.1f} ms per 640x640 tile (median of 30).", "",
        "| MP | size | faces planted | faces found | wall s | detect s | MP/s | floor s | floor/detect "
        "| describe s | embedded/s | peak RSS main MB | peak RSS worker MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['megapixels']} | {r['size']} | {r['planted']:,} | {r['faces']:,} | {r['wall_s']} | {r['detect_s']} "
                     f"| {r['mp_per_s']} | {r['floor_s']} | {r['floor_ratio']} | {r['describe_s']} | {r['embedded_per_s']} "
                     f"| {r['peak_main_mb']} | {r['peak_worker_mb']} |")
    report = OUT / "scan-report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
