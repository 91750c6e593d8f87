"""Search: one person among 10^4 .. 10^6 faces of a real library file, templates sealed in blocks.

    python -m bench --sections search --search-sizes 10000,100000,1000000
    python -m bench.search --faces 100000 --measure warm    # one measurement, printed as JSON

A synthetic library per size, made once under --work through the library's own writes
(`captures.create`, `faces.replace`, `faces.save_descriptions` in describe-sized batches,
`captures.set_stage("done")`, so the blocks are sealed, merged and packed as a scan leaves
them): identity clusters (VIEWS noisy views of random unit centres in 128-d, so a query
has true neighbours to find, as a person's faces across a season would), CAPTURE faces a
capture. The exact top 10 of each query, computed in float32 from the original vectors,
is kept beside it.

Each measurement runs in a fresh process, so `rss_mb` (its VmHWM) is its own:
- cold: `gigaface find`'s path without the photo: open the library, load its blocks into
  a one-shot index, rank the first query, read its 20 faces, audit it (`cold_s`); and the
  real command with a photo (`cli_s`, and what it takes beyond the smallest library's);
- warm: the service's path: a `LibraryIndex` loaded once (`load_s`, and the IVF build in
  its own thread beyond EXACT_UP_TO, `ivf_build_s`), then 100 queries through
  `audited_rank` (p50/p99, recall against float32 exact search);
- other (from 10^5 faces): the same with the other method forced (IVF where the policy
  is exact, exact where it is IVF), so the choice of EXACT_UP_TO rests on both measured
  side by side at each size.
The 10^7 row is an estimate from the largest measured size (see `estimate`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import run_cli
from gigaface.engine.detections import Detections
from gigaface.engine.frames import Frame
from gigaface.library.records import CaptureRecord
from gigaface.library.store import Library
from gigaface.process import configure_process, peak_rss_mb
from gigaface.references import Reference
from gigaface.search import audited_rank
from gigaface.search_index import EXACT_UP_TO, LibraryIndex

HERE = Path(__file__).resolve().parent
DIM = 128
VIEWS = 5
NOISE = 0.03        # per dimension: two views of one person lie ~0.48 apart, as dlib's do
CAPTURE = 32_768    # faces a capture: a full stadium
BATCH = 512         # faces a describe commit (the scan's are smaller; this keeps 10^6 to minutes)
QUERIES = 100
TOP = 20
IVF_FROM = 100_000  # sizes at which the IVF is measured beside exact search


def identity_clusters(faces: int, views: int = VIEWS, queries: int = QUERIES, seed: int = 0,
                      noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    """`faces` embeddings, `views` per person, and `queries` fresh views of stored people."""
    rng = np.random.default_rng(seed)
    people = -(-faces // views)
    centres = rng.standard_normal((people, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.repeat(centres, views, axis=0)[:faces]
    vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * noise
    asked = centres[rng.integers(0, min(people, faces // views or 1), queries)]
    return vectors, (asked + rng.standard_normal(asked.shape, dtype=np.float32) * noise)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Row numbers of each query's k nearest, in float32; ties to the lower."""
    norms = np.einsum("ij,ij->i", vectors, vectors)
    out = []
    for q in queries:
        rough = norms - 2 * (vectors @ q)
        pick = np.argpartition(rough, 4 * k)[:4 * k]
        dist = np.linalg.norm(vectors[pick] - q, axis=1)
        out.append(pick[np.lexsort((pick, dist))][:k])
    return np.array(out)


def add_capture(library: Library, key: str, vectors: np.ndarray, batch: int = BATCH) -> CaptureRecord:
    """A capture of len(vectors) synthetic faces in a grid, described (templates given, no
    crops) in batches as a scan would, and finished."""
    n = len(vectors)
    side = int(np.ceil(np.sqrt(max(n, 1))))
    frame = Frame(f"/synthetic/{key}.jpg", 0, 0, side * 50, side * 50)
    capture = library.captures.create(key, frame.path, "image", frame.width, frame.height, [frame], {})
    xy = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1).astype(np.float32) * 50
    boxes = np.concatenate([xy, xy + 40], axis=1)
    landmarks = np.repeat((xy + 20)[:, None, :], 5, axis=1)
    library.faces.replace(capture.id, np.zeros(n, np.int64), Detections(boxes, np.full(n, 0.9, np.float32), landmarks))
    ids = [r[0] for r in library.db.execute("SELECT id FROM faces WHERE capture_id = ? ORDER BY id", (capture.id,))]
    for s in range(0, n, batch):
        library.faces.save_descriptions([(i, {"size": 40.0}, v, None)
                                         for i, v in zip(ids[s:s + batch], vectors[s:s + batch])])
    library.captures.set_stage(capture.id, "done")
    return library.captures.get(capture.id)


def person(query: np.ndarray) -> list[Reference]:
    """A query as the reference a photo would have given."""
    return [Reference("query", np.asarray(query, np.float32), (0.0, 0.0, 1.0, 1.0), 1)]


def paths(work: Path, faces: int) -> dict[str, Path]:
    stem = work / f"search-{faces}"
    return {"db": Path(f"{stem}.db"), "npz": Path(f"{stem}.npz"), "json": Path(f"{stem}.json")}


def library(work: Path, faces: int) -> dict[str, Path]:
    """The cached synthetic library of `faces` faces, made when missing (atomically: made
    aside, renamed into place, so an interrupted build leaves nothing half made)."""
    p = paths(work, faces)
    if p["json"].exists():
        return p
    work.mkdir(parents=True, exist_ok=True)
    vectors, queries = identity_clusters(faces)
    aside = Path(tempfile.mkdtemp(dir=work, prefix=f"search-{faces}-"))
    try:
        db = aside / "library.db"
        lib = Library(str(db), create=True)
        started = time.perf_counter()
        for c, s in enumerate(range(0, faces, CAPTURE)):
            add_capture(lib, f"synthetic-{c}", vectors[s:s + CAPTURE])
        build_s = time.perf_counter() - started
        ids = np.array([r[0] for r in lib.db.execute("SELECT id FROM faces ORDER BY id")], np.int64)
        blocks = lib.db.execute("SELECT COUNT(*), SUM(LENGTH(sealed)) FROM face_blocks").fetchone()
        lib.flush_deleted()
        lib.close()
        np.savez(aside / "truth.npz", queries=queries, truth=ids[exact_top(vectors, queries)])
        meta = {"faces": faces, "build_s": round(build_s, 1), "blocks": blocks[0],
                "sealed_mb": round(blocks[1] / 1e6, 1), "file_mb": round(os.path.getsize(db) / 1e6, 1)}
        for name in ("", "-wal", "-shm"):
            if os.path.exists(f"{db}{name}"):
                os.replace(f"{db}{name}", f"{p['db']}{name}")
        os.replace(f"{db}.key", f"{p['db']}.key")
        os.replace(aside / "truth.npz", p["npz"])
        p["json"].write_text(json.dumps(meta))
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return p


def _recall(found: list[np.ndarray], truth: np.ndarray) -> dict:
    return {"recall_at_1": float(np.mean([len(f) > 0 and f[0] == t[0] for f, t in zip(found, truth)])),
            "recall_at_10": float(np.mean([len(set(f[:10]) & set(t)) / 10 for f, t in zip(found, truth)])),
            # The person's own faces: the VIEWS nearest, all under the match threshold.
            "recall_of_person": float(np.mean([len(set(f[:VIEWS]) & set(t[:VIEWS])) / VIEWS
                                               for f, t in zip(found, truth)]))}


def _timings(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def measure(work: Path, faces: int, how: str) -> dict:
    """One measurement in this process (call it in a fresh one for a clean rss_mb)."""
    configure_process()
    p = library(work, faces)
    saved = np.load(p["npz"])
    queries, truth = saved["queries"], saved["truth"]
    if how == "cold":
        started = time.perf_counter()
        lib = Library(str(p["db"]))
        first = audited_rank(lib, person(queries[0]), None, "bench", top=TOP)
        return {"cold_s": round(time.perf_counter() - started, 3), "cold_rss_mb": round(peak_rss_mb()),
                "cold_index": first.method}
    lib = Library(str(p["db"]))
    # The service's index: at this size as the library's policy has it (warm), or with the
    # other method forced, to compare them at one size.
    policy = {"warm": EXACT_UP_TO, "ivf": 0, "exact": 10**12}[how]
    warm = LibraryIndex(str(p["db"]), exact_up_to=policy)
    started = time.perf_counter()
    warm.synced(lib)
    load_s = time.perf_counter() - started
    warm.wait()
    built = time.perf_counter() - started - load_s
    extra = {"load_s": round(load_s, 2), "ivf_build_s": round(built, 1) if warm.index.method == "ivf" else None}
    times, found, method = [], [], None
    for q in queries:
        q = np.array(q)   # a fresh array each time, as a new request's would be
        started = time.perf_counter()
        got = audited_rank(lib, person(q), None, "bench", top=TOP, index=warm)
        times.append((time.perf_counter() - started) * 1000)
        method = got.method
        found.append(np.array([m.face.id for m in got[:10]]))
    return {**_timings(times), **_recall(found, truth), "rss_mb": round(peak_rss_mb()), "index": method, **extra}


def cli_seconds(work: Path, faces: int, runs: int = 2) -> float:
    """The real `gigaface find LIBRARY --photo PHOTO --json`, wall clock, best of `runs`;
    the photo is skimage's astronaut (her face is no one in the library)."""
    import cv2
    import skimage.data

    photo = work / "search-photo.jpg"
    if not photo.exists():
        cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        done = run_cli("find", paths(work, faces)["db"], "--photo", photo, "--json",
                       "--sheet", work / "search-matches.png", timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"gigaface find failed: {done.stderr[-1000:]}")
        best = min(best, time.perf_counter() - started)
    return round(best, 2)


def _run(work: Path, faces: int, how: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.search", "--faces", str(faces), "--work", str(work),
                           "--measure", how], cwd=HERE.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench.search --faces {faces} --measure {how} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(work: Path, sizes: list[int]) -> dict:
    rows = []
    for faces in sizes:
        p = library(work, faces)   # made here, so the measured processes only open it
        row = {"faces": faces, **_run(work, faces, "warm"), **_run(work, faces, "cold"),
               "cli_s": cli_seconds(work, faces), "load_average": [round(x, 2) for x in os.getloadavg()]}
        if faces >= IVF_FROM:   # the other method at this size, for the choice of EXACT_UP_TO
            other = _run(work, faces, "ivf" if row["index"] == "exact" else "exact")
            row["other"] = {k: other[k] for k in ("index", "p50_ms", "p99_ms", "recall_at_1", "recall_at_10",
                                                  "recall_of_person", "rss_mb", "load_s", "ivf_build_s")}
        row["library"] = json.loads(p["json"].read_text())
        rows.append(row)
        print(f"search: {row}", flush=True)
    for row in rows:   # what the library's size adds to the command, over the smallest measured
        row["cli_beyond_smallest_s"] = round(row["cli_s"] - rows[0]["cli_s"], 2)
    return {"rows": rows, "estimate_1e7": estimate(rows), "exact_up_to": EXACT_UP_TO, "dim": DIM, "views": VIEWS,
            "noise": NOISE, "capture": CAPTURE, "queries": QUERIES, "top": TOP, "cores": os.cpu_count()}


def estimate(rows: list[dict], faces: int = 10_000_000) -> dict | None:
    """10^7 faces from the largest size measured: the exact scan and the memory grow with
    the faces (the templates are 256 bytes each), the IVF build with the faces times the
    lists' square-root growth (training and assignment both compare each face with every
    list's centre)."""
    if not rows:
        return None
    top = max(rows, key=lambda r: r["faces"])
    n, scale = top["faces"], faces / top["faces"]
    out = {"from_faces": n, "faces": faces,
           "templates_mb": round(faces * (2 * DIM + 8) / 1e6),
           "rss_mb": round(top["rss_mb"] + (scale - 1) * n * (2 * DIM + 8) / 1e6),
           "library_build_s": round(top["library"]["build_s"] * scale),
           "sealed_mb": round(top["library"]["sealed_mb"] * scale),
           "cold_s": round(top["cold_s"] * scale, 1)}
    ivf = top if top["index"] == "ivf" else top.get("other")
    if ivf and ivf.get("ivf_build_s"):
        out["ivf_build_s"] = round(ivf["ivf_build_s"] * scale * np.sqrt(scale))
        out["ivf_p50_ms"] = round(ivf["p50_ms"] * np.sqrt(scale), 2)   # a 16th of the lists, each sqrt(N) long
    exact = top if top["index"] == "exact" else top.get("other")
    if exact:
        out["exact_p50_ms"] = round(exact["p50_ms"] * scale, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, required=True)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    parser.add_argument("--measure", choices=("warm", "cold", "ivf", "exact"), default="warm")
    args = parser.parse_args()
    print(json.dumps(measure(args.work, args.faces, args.measure)))


if __name__ == "__main__":
    main()
