"""Search: one person among 10^4 .. 10^6 faces, embeddings sealed in blocks.

    python -m bench --sections search --search-sizes 10000,100000,1000000
    python -m bench.search --faces 100000          # one size, printed as JSON, no results file

A synthetic library per size, cached under --work: identity clusters (VIEWS noisy views of
random unit centres in 128-d, so a query has true neighbours to find, as a person's
faces across a season would), faces in blocks of BLOCK sealed with AES-256-GCM
(library/sealed_blocks.py) in one file, and, beyond the exact-search size, the HNSW
graph of the "well-kept library", sealed beside it. The exact top 10 of each query,
computed in float32 from the original vectors, is kept with it.

Each size is measured in a fresh process (so `rss_mb`, its VmHWM, is its own): `cold_s` is
reading and unsealing the file, building the index and the first query; then 100 queries
warm. In this phase the file stands in for the library; the lead wires it to library.db.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gigaface.library.sealed_blocks import Block, seal_block, unseal_block
from gigaface.library.sealing import LibraryKey
from gigaface.process import peak_rss_mb
from gigaface.search_index import EmbeddingIndex

HERE = Path(__file__).resolve().parent
DIM = 128
VIEWS = 5
NOISE = 0.03        # per dimension: two views of one person lie ~0.48 apart, as dlib's do
BLOCK = 4096
BLOCKS_PER_CAPTURE = 8
QUERIES = 100
_RECORD = struct.Struct("<qqQ")   # block id, capture id, sealed bytes
GRAPH_PURPOSE = b"face-graph"


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
    """Row numbers (= face id - 1) of each query's k nearest, in float32; ties to the lower."""
    norms = np.einsum("ij,ij->i", vectors, vectors)
    out = []
    for q in queries:
        rough = norms - 2 * (vectors @ q)
        pick = np.argpartition(rough, 4 * k)[:4 * k]
        dist = np.linalg.norm(vectors[pick] - q, axis=1)
        out.append(pick[np.lexsort((pick, dist))][:k])
    return np.array(out)


def paths(work: Path, faces: int) -> dict[str, Path]:
    stem = work / f"search-{faces}"
    return {s: Path(f"{stem}.{s}") for s in ("blocks", "key", "graph", "npz", "json")}


def _write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        write(f)
    os.replace(tmp, path)


def library(work: Path, faces: int) -> dict[str, Path]:
    """The cached synthetic library of `faces` faces, made when missing."""
    p = paths(work, faces)
    if p["json"].exists():
        return p
    work.mkdir(parents=True, exist_ok=True)
    vectors, queries = identity_clusters(faces)
    key = LibraryKey(secrets.token_bytes(32), str(p["key"]))
    _write(p["key"], lambda f: f.write(key.secret))
    blocks = [Block(b + 1, b // BLOCKS_PER_CAPTURE + 1, np.arange(s, min(s + BLOCK, faces), dtype=np.int64) + 1,
                    vectors[s:s + BLOCK].astype(np.float16)) for b, s in enumerate(range(0, faces, BLOCK))]
    started = time.perf_counter()
    sealed = [seal_block(key, b) for b in blocks]
    seal_s = time.perf_counter() - started

    def write_blocks(f):
        for b, s in zip(blocks, sealed):
            f.write(_RECORD.pack(b.id, b.capture, len(s)))
            f.write(s)
    _write(p["blocks"], write_blocks)
    mb = sum(map(len, sealed)) / 1e6
    meta = {"faces": faces, "blocks": len(blocks), "sealed_mb": round(mb, 1), "seal_mb_s": round(mb / seal_s)}
    index = EmbeddingIndex()
    for b in blocks:
        index.add_block(b)
    if index.wants_ann():
        started = time.perf_counter()
        index.build_ann()
        meta["graph_build_s"] = round(time.perf_counter() - started, 1)
        graph = key.seal(index.ann_bytes(), GRAPH_PURPOSE)
        _write(p["graph"], lambda f: f.write(graph))
        meta["graph_mb"] = round(len(graph) / 1e6, 1)
    del index
    np.savez(p["npz"], queries=queries, truth=exact_top(vectors, queries) + 1)
    _write(p["json"], lambda f: f.write(json.dumps(meta).encode()))
    return p


def open_index(p: dict[str, Path], key: LibraryKey) -> tuple[EmbeddingIndex, float]:
    """The cold path: the sealed graph (when there is one), then each sealed block, one AES
    call each, streamed from the file. Returns the index and the unsealing MB/s."""
    index, sealed_bytes, aes_s = EmbeddingIndex(), 0, 0.0
    if p["graph"].exists():
        started = time.perf_counter()
        sealed = p["graph"].read_bytes()
        plain = key.unseal(sealed, GRAPH_PURPOSE)
        aes_s, sealed_bytes = time.perf_counter() - started, len(sealed)
        del sealed
        index.load_ann(plain)
        del plain
    with open(p["blocks"], "rb") as f:
        while head := f.read(_RECORD.size):
            block_id, capture, size = _RECORD.unpack(head)
            sealed = f.read(size)
            started = time.perf_counter()
            block = unseal_block(key, sealed, block_id, capture)
            aes_s += time.perf_counter() - started
            sealed_bytes += size
            index.add_block(block)
    return index, sealed_bytes / 1e6 / max(aes_s, 1e-9)


def measure(work: Path, faces: int) -> dict:
    """One size, in this process (call it in a fresh one for a clean rss_mb)."""
    p = library(work, faces)
    meta = json.loads(p["json"].read_text())
    saved = np.load(p["npz"])
    queries, truth = saved["queries"], saved["truth"]
    key = LibraryKey(p["key"].read_bytes(), str(p["key"]))
    started = time.perf_counter()
    index, unseal_mb_s = open_index(p, key)
    first = index.search(queries[0], limit=20)
    cold = time.perf_counter() - started
    times, found = [], []
    for q in queries:
        # A fresh array each time, as a new request's would be: no paging cache hit.
        q = np.array(q)
        started = time.perf_counter()
        hits = index.search(q, limit=20)
        times.append(time.perf_counter() - started)
        found.append(hits.ids[:10])
    ms = np.array(times) * 1000
    return {"faces": faces, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "cold_s": round(cold, 2),
            "rss_mb": round(peak_rss_mb()), "recall_at_1": float(np.mean([f[0] == t[0] for f, t in zip(found, truth)])),
            "recall_at_10": float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])),
            "index": first.method, "unseal_mb_s": round(unseal_mb_s), **{k: v for k, v in meta.items() if k != "faces"}}


def run(work: Path, sizes: list[int]) -> dict:
    rows = []
    for faces in sizes:
        library(work, faces)   # made here, so the measured process only opens it
        done = subprocess.run([sys.executable, "-m", "bench.search", "--faces", str(faces), "--work", str(work)],
                              cwd=HERE.parent, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"search: {rows[-1]}", flush=True)
    return {"rows": rows, "dim": DIM, "views": VIEWS, "noise": NOISE, "block": BLOCK, "queries": QUERIES}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, required=True)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()
    print(json.dumps(measure(args.work, args.faces)))


if __name__ == "__main__":
    main()
