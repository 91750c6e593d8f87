"""`gigaface demo`: a synthetic stadium built from images that scikit-image ships, scanned end to end."""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from rich.console import Console
from rich.table import Table

from gigaface.engine import describe as describing
from gigaface.api import blur_image, references
from gigaface.engine.detections import iou_one_to_many
from gigaface.demo.scene import build_stadium
from gigaface.engine.detector import CenterFace
from gigaface.library.store import Library
from gigaface.process import peak_rss_mb
from gigaface.progress import BarReporter
from gigaface.engine.plan import settings_for
from gigaface.engine.reporter import Reporter
from gigaface.ingest import scan_path
from gigaface.search import KEEP_MATCH_THRESHOLD, audited_rank, contact_sheet
from gigaface.library.audit_chain import local_user


def _corners(boxes) -> np.ndarray:
    """x, y, w, h boxes as (N, 4) x1, y1, x2, y2, the form iou_one_to_many takes."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


DEMO_OCCUPANCY = 0.1  # a tenth of the seats: ~4,000 faces at 150 MP, about 3 minutes on 2 cores


def run_demo(out_dir: str, size: float, preset: str, bars: Console | None, out: Console) -> None:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Built in a process of its own, so that the memory reported below is the scan's. The
    # build is deterministic: building again gives the same file, which the library knows.
    with (bars or out).status("building the panorama"), ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as builder:
        scene = builder.submit(build_stadium, folder, megapixels=size, occupancy=DEMO_OCCUPANCY).result()
    built = time.perf_counter() - t0

    library = Library(str(folder / "library.db"), create=True)
    settings = settings_for(preset)
    detector = CenterFace(settings.tile)
    with describing.Describer(detector.runtime) as describer:
        with BarReporter(scene.panorama.name, bars) if bars is not None else Reporter() as reporter:
            result = scan_path(library, str(scene.panorama), settings, detector=detector, describer=describer,
                               reporter=reporter)
        t1 = time.perf_counter()
        refs = references([str(scene.reference)], detector)
        matches = audited_rank(library, refs, [result.capture.id], local_user(), top=12)
        sheet = contact_sheet(library, matches, str(folder / "matches.png"))
        target = _corners(scene.target_box)[0]
        found_at = next((m.rank for m in matches if iou_one_to_many(target, _corners(m.face.box))[0] > 0.3), None)
        search_seconds = time.perf_counter() - t1
        t2 = time.perf_counter()
        anonymised = str(folder / "stadium-anonymised.jpg")
        blurred = blur_image(library, result.capture, anonymised, [str(scene.reference)], "blur", KEEP_MATCH_THRESHOLD,
                             detector=detector)
        blur_seconds = time.perf_counter() - t2

    truth = json.loads(Path(scene.truth).read_text())
    faces = library.faces.all(result.capture.id)
    recall = _recall(truth["faces"], [f.box for f in faces])
    peak_main = peak_rss_mb()
    mp = scene.width * scene.height / 1e6
    table = Table(title="gigaface demo", show_header=False)
    table.add_row("panorama", f"{scene.panorama}  ({scene.width}x{scene.height}, {mp:,.0f} MP, built in {built:.0f} s)")
    table.add_row("faces found", f"{result.faces:,} (planted {scene.faces:,}; {recall:.0%} of planted found at IoU 0.3),"
                                 f" and {result.stored - result.faces:,} boxes seen only at the blur point")
    table.add_row("scan", f"{result.seconds:.1f} s (detect {result.detect_seconds:.1f} s = "
                          f"{mp / max(result.detect_seconds, 1e-9):.1f} MP/s, describe {result.describe_seconds:.1f} s)"
                  if not result.skipped else "already scanned (delete library.db to scan again)")
    table.add_row("find the astronaut", f"rank {found_at} of {len(faces):,}, "
                  f"distance {matches[found_at - 1].distance:.3f}" if found_at else "not in the top 12")
    table.add_row("search + contact sheet", f"{search_seconds:.1f} s -> {sheet}")
    # Blurred boxes include those seen only at the blur point (never listed), so the faces
    # kept are the stored ones less the blurred ones.
    kept = result.stored - blurred
    table.add_row("anonymised copy", f"{anonymised}  ({blurred:,} faces blurred, {kept} kept because they match "
                                     f"the reference at distance <= {KEEP_MATCH_THRESHOLD}; {blur_seconds:.1f} s)")
    table.add_row("runtime", str(detector.runtime))
    table.add_row("peak memory", f"{peak_main:,.0f} MB")
    table.add_row("library", str(folder / "library.db"))
    out.print(table)


def _recall(truth: list, found: list) -> float:
    if not truth:
        return 1.0
    if not found:
        return 0.0
    found_corners = _corners(found)
    hits = sum(bool((iou_one_to_many(t, found_corners) >= 0.3).any()) for t in _corners(truth))
    return hits / len(truth)
