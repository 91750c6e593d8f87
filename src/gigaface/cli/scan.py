"""`gigaface scan`: find every face in images and store them in a library."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from gigaface.cli.console import err, out
from gigaface.cli.options import at_least, runtime_text, use_runtime
from gigaface.cluster.connect import cluster_address
from gigaface.engine import describe as describing
from gigaface.engine.detector import CenterFace
from gigaface.engine.plan import PRESETS, settings_for
from gigaface.engine.source import DEFAULT_MAX_PIXELS
from gigaface.errors import GigafaceError
from gigaface.engine.manifest import frames_of
from gigaface.ingest import scan_path
from gigaface.library.files import files_root
from gigaface.library.store import Library
from gigaface.process import peak_rss_mb
from gigaface.progress import BarReporter, QuietReporter, bars


def scan(
    images: list[str] = typer.Argument(..., metavar="IMAGE...", help="Images (any format libvips reads) or camera-array manifests (.json)."),
    db: str = typer.Option(..., "--db", help="Library file (SQLite); created if missing."),
    preset: str = typer.Option("balanced", help=f"Speed/recall trade-off: {', '.join(PRESETS)}."),
    min_face: Optional[float] = typer.Option(None, "--min-face", help="Smallest face in pixels to look for (below 16 adds an upscaled pass)."),
    min_embed: Optional[float] = typer.Option(None, "--min-embed", help="Faces smaller than this (px) are measured and cropped but not embedded (default 20)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan from its last finished band."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images (decompression bombs)."),
    threads: Optional[int] = typer.Option(None, "--threads", "--workers", help="Threads describing faces (default: one per core)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="Inference runtime: auto, onnxruntime or openvino (default: $GIGAFACE_RUNTIME, else auto)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, f32 or bf16 (openvino on CPUs that have it; default: $GIGAFACE_PRECISION, else auto)."),
    frames_anywhere: bool = typer.Option(False, "--frames-anywhere", help="Let a manifest name frames outside its own folder."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Scan on a Ray cluster: HOST:PORT of its head, ray://HOST:10001 "
                                          "or auto (default: $GIGAFACE_CLUSTER; needs gigaface[ray]). Every node must see "
                                          "the images at the same path."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Find every face in IMAGE... and store them in the library."""
    settings = settings_for(preset, min_face, min_embed=min_embed)
    at_least(1, max_pixels=max_pixels, threads=threads)
    address = cluster_address(cluster)
    # On a cluster the models run on the workers, which choose on their own machines.
    chosen = use_runtime(runtime, precision) if address is None else None
    for path in images:  # every input is checked before the library is touched
        frames_of(path, max_pixels, frames_anywhere)
    # The cluster too: reached, the same gigaface on every node, every file seen by each.
    with _cluster(address, images, max_pixels, frames_anywhere, runtime, precision, settings.tile) as pool:
        files_folder_was_there = os.path.exists(files_root(db))
        library = Library(db, create=True)
        try:
            library.key()  # a wrong --key-file is said now, not after loading models and detecting
            for path in images:
                if library.is_own_file(path):
                    raise GigafaceError(f"{path}: is the library itself, not an image")
            if pool is not None:
                summaries = _scan_on_cluster(library, db, images, settings, pool, resume, max_pixels,
                                             frames_anywhere, quiet, as_json)
            else:
                detector = CenterFace(settings.tile, runtime=chosen)
                with describing.Describer(chosen, threads) as describer:
                    summaries = _scan_all(library, images, settings, detector, describer, resume, max_pixels,
                                          frames_anywhere, quiet, as_json)
        except GigafaceError:
            # A damaged image found mid-decode: a library this command created and left
            # empty (and the key and files folder made for it) would be half-written files.
            if db in library.made and not library.captures.all():
                library.close()
                folder = [] if files_folder_was_there else [files_root(db)]
                _remove_made([db + "-wal", db + "-shm", *library.made, *folder])
            raise
        cluster_info = _cluster_summary(address, pool) if pool is not None else None
    for s in summaries:
        s["peak_rss_mb"] = round(peak_rss_mb())
        s["runtime"] = chosen.to_dict() if chosen is not None else cluster_info["runtime"]
        if cluster_info is not None:
            s["cluster"] = cluster_info
    _print_summaries(summaries, as_json)


def _cluster(address, images, max_pixels, frames_anywhere, runtime, precision, tile):
    if address is None:
        return nullcontext()
    from gigaface.cluster.scan import input_files, on_cluster  # Ray only when a cluster is asked for

    return on_cluster(address, input_files(images, max_pixels, frames_anywhere), runtime, precision, tile)


def _cluster_summary(address: str, pool) -> dict:
    reports = pool.reports()
    runtimes = sorted({runtime_text(r["runtime"]) for r in reports})
    return {"address": address, "workers": len(reports), "nodes": len({r["node"] for r in reports}),
            "gpus": sum(len(r["gpus"]) for r in reports), "runtimes": runtimes,
            "runtime": reports[0]["runtime"] if reports else {}, "notes": sorted({r["note"] for r in reports if r["note"]})}


def _scan_on_cluster(library, db, images, settings, pool, resume, max_pixels, frames_anywhere, quiet,
                     as_json) -> list[dict]:
    from gigaface.cluster.scan import scan_paths

    for note in sorted({r["note"] for r in pool.reports() if r["note"]}):
        err.print(f"[yellow]gigaface: a worker was {note}")
    display = bars(err) if _bars_wanted(quiet, as_json) else None

    def reporter_for(path: str):
        return BarReporter(Path(path).name, progress=display) if display is not None else QuietReporter()

    with display if display is not None else nullcontext():
        results = scan_paths(db, images, settings, pool, reporter_for, resume=resume, max_pixels=max_pixels,
                             frames_anywhere=frames_anywhere)
    return [_summary(library, result) for result in results]


def _print_summaries(summaries: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summaries, indent=2))
        return
    for s in summaries:
        if s["skipped"]:
            out.print(f"capture {s['capture']}: {s['source']} already scanned with these settings: {s['faces']:,} faces")
        else:
            out.print(f"capture {s['capture']}: {s['faces']:,} faces in {s['width']}x{s['height']} "
                      f"({s['width'] * s['height'] / 1e6:,.0f} MP) in {s['seconds']:.1f} s on {runtime_text(s['runtime'])};"
                      f" peak memory {s['peak_rss_mb']:,} MB")


def _remove_made(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def _bars_wanted(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and err.is_terminal


def _scan_all(library, images, settings, detector, describer, resume, max_pixels, frames_anywhere, quiet,
              as_json) -> list[dict]:
    summaries = []
    for path in images:
        with BarReporter(Path(path).name, err) if _bars_wanted(quiet, as_json) else QuietReporter() as reporter:
            result = scan_path(library, path, settings, detector=detector, describer=describer, resume=resume,
                               reporter=reporter, max_pixels=max_pixels, frames_anywhere=frames_anywhere)
        summaries.append(_summary(library, result))
    return summaries


def _summary(library, result) -> dict:
    cap = result.capture
    megapixels = cap.width * cap.height / 1e6
    return {
        "capture": cap.id, "source": cap.source, "width": cap.width, "height": cap.height,
        "faces": result.faces, "stored": result.stored, "described": result.described,
        "embedded": library.faces.count(cap.id, embedded=True), "skipped": result.skipped,
        "seconds": round(result.seconds, 2), "detect_seconds": round(result.detect_seconds, 2),
        "describe_seconds": round(result.describe_seconds, 2), "tiles": result.tiles,
        "megapixels_per_second": round(megapixels / result.detect_seconds, 2) if result.detect_seconds else None,
    }
