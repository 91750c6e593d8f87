"""Run the benchmark suite and write bench/report.md with its plots.

    python -m bench                          # the default size: 16 minutes on 2 cores (measured), + 6 for load
    python -m bench --sections mosaic --mosaic-presets balanced,accurate   # + accurate (4 min more)
    python -m bench --size 500 --scaling 100,250,500,1000
    python -m bench --sections identity      # one section; the report keeps the others' last results
    python -m bench --sections load          # searches and face listings on a server while it scans (6 min)
    python -m bench --sections load --size 40 --load-clients 4 --load-seconds 30
    python -m bench --sections load --load-faces 1000000   # searches over 10^6 faces while it scans
    python -m bench --sections privacy       # labelled faces left sharp by the anonymiser (15 min)
    python -m bench --sections search        # one person among 10^4, 10^5, 10^6 faces (4 min; libraries made once)
    python -m bench --sections search --search-sizes 10000,100000   # other sizes
    python -m bench --sections wider,identity --precision f32   # the same on f32, saved apart
    python -m bench --sections cluster       # scans on Ray clusters of this machine's cores (75 s)
    python -m bench --report-only            # rewrite the report from saved results

Each section saves its results as JSON under bench/results/ as soon as it finishes, so
an interrupted run loses one section at most and the report can be rebuilt at any time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gigaface.atomic import write_bytes
from gigaface.engine.runtime import PRECISION_ENV, RUNTIME_ENV, choose
from gigaface.process import configure_process

from .data import MissingData

HERE = Path(__file__).resolve().parent
SECTIONS = ("wider", "identity", "mosaic", "scaling", "load", "privacy", "search", "cluster")


def save_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(value, indent=1, default=float).encode())


def run_section(name: str, args, results: Path, plots: Path) -> None:
    started = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        if name == "wider":
            from . import wider

            value = {"rows": wider.run()}
        elif name == "identity":
            from . import identity

            value = identity.run(plots)
        elif name == "mosaic":
            value = run_mosaic(args, plots)
            name = mosaic_results_name(args.size)
        elif name == "privacy":
            from . import privacy

            value = privacy.run(args.work, images=args.privacy_images)
        elif name == "search":
            from . import search

            value = search.run(args.work, [int(s) for s in args.search_sizes.split(",")])
        elif name == "cluster":
            from . import cluster

            value = cluster.run(args.work, size=args.cluster_size)
        elif name == "load":
            from . import load

            value = load.run(args.work, size=args.size, clients=args.load_clients, seconds=args.load_seconds,
                             faces=args.load_faces)
            name = load_results_name(args.size, args.load_faces)
        else:
            from . import scaling

            rows = scaling.run([float(s) for s in args.scaling.split(",")], args.work)
            value = {"rows": rows}
    except MissingData as exc:
        value = {"skipped": str(exc)}
        print(f"{name}: skipped: {exc}")
    value["seconds"] = round(time.perf_counter() - started, 1)
    value["command"] = " ".join(["python -m bench"] + sys.argv[1:])
    value["runtime"] = str(choose())
    save_json(results / f"{name}{runtime_suffix(args)}.json", value)


def runtime_suffix(args) -> str:
    """Results of a runtime asked for by name sit beside those of the default (auto) one:
    `wider@openvino-f32.json` beside `wider.json`, for the report to compare."""
    if not (args.runtime or args.precision):
        return ""
    chosen = choose()
    return f"@{chosen.backend}-{chosen.precision}"


def mosaic_results_name(size: float) -> str:
    """One results file per mosaic size, so a bigger run sits beside the default one."""
    return "mosaic" if size == 100 else f"mosaic-{size:g}mp"


def load_results_name(size: float, faces: int = 0) -> str:
    name = "load" if size == 100 else f"load-{size:g}mp"
    return f"{name}-{faces}faces" if faces else name


def run_mosaic(args, plots: Path) -> dict:
    from . import panorama
    from .mosaic import build_mosaic

    start = time.perf_counter()
    mosaic = build_mosaic(args.work / f"mosaic-{args.size:g}mp", megapixels=args.size)
    built = time.perf_counter() - start
    print(f"mosaic {mosaic.width}x{mosaic.height}, {len(mosaic.boxes):,} faces, built in {built:.0f} s", flush=True)
    latency = panorama.tile_latency()
    scan = panorama.full_scan(mosaic, args.work / f"mosaic-{args.size:g}mp.db")
    print(f"full scan: {scan}", flush=True)
    found = panorama.search(mosaic, Path(scan["db"]))
    for row in found:
        print(f"search: {row}", flush=True)
    rows = panorama.side_by_side(mosaic, tuple(args.mosaic_presets.split(",")))
    return {"mosaic": {"size": f"{mosaic.width}x{mosaic.height}", "megapixels": round(mosaic.width * mosaic.height / 1e6, 1),
                       "faces": int((~mosaic.invalid).sum()), "invalid": int(mosaic.invalid.sum()),
                       "cells": len(mosaic.cells), "planted": len(mosaic.planted), "build_s": round(built, 1)},
            "scan": scan, "floor": panorama.floor(mosaic, scan["detect_s"], latency), "search": found,
            "side_by_side": rows, "ratios": panorama.ratios(rows)}


def main() -> None:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=100,
                        help="mosaic size, and the load section's scanned stadium, in megapixels (default 100)")
    parser.add_argument("--scaling", default="25,50,100",
                        help="comma-separated mosaic sizes for the scaling curve (default 25,50,100)")
    parser.add_argument("--mosaic-presets", default="balanced",
                        help="gigaface presets in the side-by-side on the mosaic")
    parser.add_argument("--load-clients", type=int, default=8, help="concurrent clients in the load section")
    parser.add_argument("--load-seconds", type=float, default=90, help="how long the load section's load lasts")
    parser.add_argument("--load-faces", type=int, default=0,
                        help="the load section starts from the search section's library of this many faces")
    parser.add_argument("--privacy-images", type=int, default=30,
                        help="WIDER images the privacy section anonymises (default 30)")
    parser.add_argument("--search-sizes", default="10000,100000,1000000",
                        help="faces in the search section's synthetic libraries (default 10000,100000,1000000)")
    parser.add_argument("--cluster-size", type=float, default=25,
                        help="the cluster section's mosaic, in megapixels (default 25)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, default=HERE / "out", help="where mosaics and libraries go")
    parser.add_argument("--report", type=Path, default=HERE / "report.md")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    parser.add_argument("--runtime", help="run the models on this runtime (auto, onnxruntime, openvino); results "
                                          "are saved apart, as NAME@RUNTIME-PRECISION.json")
    parser.add_argument("--precision", help="f32 or bf16 (openvino), results saved apart as for --runtime")
    args = parser.parse_args()
    if args.runtime:
        os.environ[RUNTIME_ENV] = args.runtime
    if args.precision:
        os.environ[PRECISION_ENV] = args.precision
    print(f"models run on {choose()}", flush=True)
    # Results and plots sit beside the report and are committed with it; the bulky mosaics
    # and libraries stay in --work.
    results, plots = args.report.parent / "results", args.report.parent / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.sections.split(","):
            if name not in SECTIONS:
                parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            run_section(name, args, results, plots)
    from .report import write_report

    print(f"report: {write_report(results, args.report, plots)}")


if __name__ == "__main__":
    main()
