"""Faces ranked by distance to a person, from embeddings held in memory as blocks.

A long-lived process (the service, a Python library object) keeps one `EmbeddingIndex` per
library. The library hands it blocks (library/sealed_blocks.py: a capture's faces, a few
thousand at a time, each block id naming one immutable content); before each search the
process calls `sync` with the block ids the library holds now, so blocks written by a scan
are loaded and blocks gone (erasure rewrites a block under a new id, purge and capture
deletion remove it) are dropped before the ranking: an erased face never comes back, not
even from a warm index.

Exact search, then an HNSW graph beyond `EXACT_UP_TO` faces. Measured on this 2-core
machine (shared, load 7-9 while measuring; bench/search.py and the numbers in the branch's
report), 128-d identity clusters (5 noisy views of random unit centres), 100 queries:

    10^5 faces, exact numpy float32 GEMV        p50 20 ms   p99 47 ms  recall 1
    10^5 faces, exact faiss flat fp16 (SQ)      p50 20 ms   p99 53 ms  recall 1
    10^5 faces, exact faiss flat float32        p50 66 ms   (faiss' single-query path, no BLAS)
    10^5 faces, numpy float16 -> float32 chunks p50 181 ms  (the conversion dominates)
    10^5 faces, faiss int8 SQ                   p50 10 ms   recall@1 0.98: under the 0.99 target
    10^6 faces, exact numpy float32             p50 186 ms  p99 314 ms
    10^5 faces, faiss HNSW M=32 fp16, ef 64     build 86 s, p50 0.35 ms, recall@1 1.00 @10 0.97
    10^5 faces, usearch f16 conn 16, ef 64      build 86 s, p50 0.51 ms, recall@1 1.00 @10 0.88
    10^5 faces, usearch f16 conn 32, ef 64      build 105 s, p50 0.75 ms, recall@1 1.00 @10 0.91
    bench/search.py, 10^5 faces, this index     exact, p50 17 ms, p99 30 ms, cold 0.33 s, 163 MB
    bench/search.py, 2x10^5, HNSW ef 64         build 175 s, p50 0.54 ms, recall@1 1.00 @10 0.92
    bench/search.py, 2x10^5, HNSW ef 128        p50 1.0 ms, p99 5.6 ms, recall@1 1.00 @10 0.95, cold 1.2 s

So: exact float32 (numpy, BLAS GEMV) while a scan of all faces stays under the 50 ms
target even on a loaded machine, which is 10^5 faces (exact float32 at 10^6 is 512 MB,
still under the 1 GB target, but 186 ms); beyond, faiss HNSW over fp16 codes (half the memory of float32; the
graph adds M*2 int32 a face). faiss over usearch: at the same build time its recall@10 is
higher and its queries are faster, and it filters during the graph walk (`IDSelector`), so
a capture filter and the rows of blocks removed since the graph was built are honoured in
the walk rather than by asking for more results and throwing some away.

The graph is "well kept": built by `build_ann` over the blocks held then (minutes at 10^6
on 2 cores, so never on a search's path), saved with `ann_bytes` and loaded with `load_ann`
(sealed by the caller like the blocks). Blocks added after the build are searched exactly
beside it; rows of removed blocks are filtered out of the walk at once; `wants_ann` says
when a rebuild pays (a tenth of the faces new or gone).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from gigaface.library.sealed_blocks import Block

EXACT_UP_TO = 100_000
HNSW_M = 32
EF_CONSTRUCTION = 80
EF_SEARCH = 128
# The graph walk answers the first pages; a deeper request (all faces ranked, as the CLI's
# `find` without --top asks, or more than a 50th of the faces searched) is an exact scan:
# a walk asked for most of its graph misses some.
ANN_MAX_K = 1000
ANN_MAX_SHARE = 1 / 50
STALE_FRACTION = 0.1
_PAGES_KEPT = 32   # rankings kept for paging: a next page is sliced, not ranked again


@dataclass(frozen=True)
class Hits:
    ids: np.ndarray         # face ids, nearest first
    distances: np.ndarray   # euclidean, float32
    total: int              # faces searched
    method: str             # "exact" or "hnsw"


class _Held:
    __slots__ = ("id", "capture", "ids", "vectors", "norms", "row")

    def __init__(self, block: Block):
        self.id, self.capture = block.id, block.capture
        self.ids = np.ascontiguousarray(block.ids, np.int64)
        self.vectors: np.ndarray | None = np.ascontiguousarray(block.vectors, np.float32)
        self.norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.row: int | None = None   # first row in the graph, when it covers this block


class _Graph:
    def __init__(self, index, rows: list[tuple[int, int, int]], face_ids: np.ndarray):
        self.index = index
        self.rows = rows                        # (block id, first row, faces) as built
        self.face_ids = face_ids                # face id of each row
        self.alive = np.ones(len(face_ids), bool)
        # Rows of blocks not held when the graph was installed: a cold start loads the
        # graph first, then each block attaches to its rows without a float32 copy.
        self.pending: dict[int, tuple[int, int]] = {}

    def vectors(self, held: _Held) -> np.ndarray:
        return self.index.storage.reconstruct_n(held.row, len(held.ids))


class EmbeddingIndex:
    """(face id, embedding) of a library in blocks; thread-safe."""

    def __init__(self, dim: int = 128, exact_up_to: int = EXACT_UP_TO):
        self.dim, self.exact_up_to = dim, exact_up_to
        self._blocks: dict[int, _Held] = {}
        self._graph: _Graph | None = None
        self._lock = threading.RLock()
        self._generation = 0
        self._pages: OrderedDict[tuple, Hits] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(h.ids) for h in self._blocks.values())

    def block_ids(self) -> set[int]:
        with self._lock:
            return set(self._blocks)

    # --- what is held ------------------------------------------------------------------
    def add_block(self, block: Block) -> None:
        if block.vectors.shape[1:] != (self.dim,):
            raise ValueError(f"block {block.id}: {block.vectors.shape[1:]} embeddings in a {self.dim}-d index")
        held = _Held(block)
        with self._lock:
            self.remove_block(block.id)
            graph = self._graph
            start, n = graph.pending.pop(block.id, (None, None)) if graph else (None, None)
            if start is not None and n == len(held.ids):
                graph.face_ids[start:start + n] = held.ids
                graph.alive[start:start + n] = True
                held.row, held.vectors = start, None
            self._blocks[block.id] = held
            self._changed()

    def remove_block(self, block_id: int) -> bool:
        with self._lock:
            held = self._blocks.pop(block_id, None)
            if held is None:
                return False
            if held.row is not None:
                self._graph.alive[held.row:held.row + len(held.ids)] = False
            self._changed()
            return True

    def sync(self, live: Iterable[int], loader: Callable[[int], Block]) -> tuple[int, int]:
        """Hold exactly the blocks in `live`: vanished ones dropped first, then missing ones
        loaded by `loader(block_id)`. Returns (added, removed)."""
        live = set(live)
        with self._lock:
            gone = [b for b in self._blocks if b not in live]
            for b in gone:
                self.remove_block(b)
            new = [b for b in live if b not in self._blocks]
        # Loading (unsealing) happens outside the lock so searches go on meanwhile; the
        # removals above are already in force for them.
        for b in new:
            self.add_block(loader(b))
        return len(new), len(gone)

    def _changed(self) -> None:
        self._generation += 1
        self._pages.clear()

    # --- search --------------------------------------------------------------------------
    def search(self, query: np.ndarray, captures: Iterable[int] | None = None,
               offset: int = 0, limit: int | None = 20) -> Hits:
        """Faces nearest to `query`, ranks offset .. offset+limit (limit None: to the end),
        of the given captures (None: all). Ties go to the lower face id."""
        q = np.ascontiguousarray(query, np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"a {self.dim}-d query, not {query.shape}")
        wanted = None if captures is None else frozenset(int(c) for c in captures)
        with self._lock:
            held = [h for h in self._blocks.values() if wanted is None or h.capture in wanted]
            total = sum(len(h.ids) for h in held)
            depth = total if limit is None else min(total, offset + limit)
            key = (q.tobytes(), wanted)
            cached = self._pages.get(key)
            if cached is None or len(cached.ids) < depth:
                cached = self._rank(held, q, depth, wanted, total)
                self._pages[key] = cached
                while len(self._pages) > _PAGES_KEPT:
                    self._pages.popitem(last=False)
            self._pages.move_to_end(key)
        end = None if limit is None else offset + limit
        return Hits(cached.ids[offset:end], cached.distances[offset:end], total, cached.method)

    def _rank(self, held: list[_Held], q: np.ndarray, k: int, wanted, total: int) -> Hits:
        graph = self._graph
        covered = [h for h in held if h.row is not None]
        if k == 0:
            return Hits(np.empty(0, np.int64), np.empty(0, np.float32), total, "exact")
        in_graph = sum(len(h.ids) for h in covered)
        if graph is None or in_graph <= self.exact_up_to or k > min(ANN_MAX_K, ANN_MAX_SHARE * in_graph):
            return _top(*_exact(held, q, k, graph), k, total, "exact")
        ids, dist = _exact([h for h in held if h.row is None], q, k, graph)
        g_ids, g_dist = self._walk(graph, covered, q, k, wanted is not None)
        return _top(np.concatenate([ids, g_ids]), np.concatenate([dist, g_dist]), k, total, "hnsw")

    def _walk(self, graph: _Graph, covered: list[_Held], q: np.ndarray, k: int, filtered: bool):
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = max(EF_SEARCH, k)
        if filtered or not graph.alive.all():
            allowed = graph.alive
            if filtered:
                allowed = np.zeros(len(graph.alive), bool)
                for h in covered:
                    allowed[h.row:h.row + len(h.ids)] = True
            bits = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        squared, rows = graph.index.search(q[None], k, params=params)
        rows, squared = rows[0], squared[0]
        found = rows >= 0
        return graph.face_ids[rows[found]], np.sqrt(np.maximum(squared[found], 0)).astype(np.float32)

    # --- the graph ------------------------------------------------------------------------
    def wants_ann(self) -> bool:
        """Whether a (re)build pays: more faces than an exact scan serves fast, and no graph
        yet, or a tenth of them added or removed since it was built."""
        with self._lock:
            faces = sum(len(h.ids) for h in self._blocks.values())
            if faces <= self.exact_up_to:
                return False
            if self._graph is None:
                return True
            outside = sum(len(h.ids) for h in self._blocks.values() if h.row is None)
            dead = int((~self._graph.alive).sum())
            return outside + dead > STALE_FRACTION * faces

    def build_ann(self, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION) -> None:
        """An HNSW graph over the blocks held now (slow: call it off the search path)."""
        import faiss

        with self._lock:
            held = list(self._blocks.values())
            vectors = [h.vectors if h.vectors is not None else self._graph.vectors(h) for h in held]
        index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, m)
        index.hnsw.efConstruction = ef_construction
        rows, start = [], 0
        for h in held:
            rows.append((h.id, start, len(h.ids)))
            start += len(h.ids)
        matrix = np.concatenate(vectors) if vectors else np.empty((0, self.dim), np.float32)
        index.train(matrix[:1])    # fp16 codes need no statistics
        index.add(matrix)
        del matrix
        self._install(index, rows)

    def ann_bytes(self) -> bytes:
        """The graph and which rows are which blocks, for the caller to seal and store."""
        import faiss

        with self._lock:
            if self._graph is None:
                raise ValueError("no graph built")
            head = json.dumps(self._graph.rows).encode()
            return len(head).to_bytes(8, "little") + head + faiss.serialize_index(self._graph.index).tobytes()

    def load_ann(self, data: bytes) -> None:
        """A graph from `ann_bytes`, loaded before the blocks or after them; rows of blocks
        not held are filtered out of the walk."""
        import faiss

        size = int.from_bytes(data[:8], "little")
        rows = [tuple(r) for r in json.loads(data[8:8 + size])]
        index = faiss.deserialize_index(np.frombuffer(data, np.uint8, offset=8 + size))
        self._install(index, rows)

    def _install(self, index, rows: list[tuple[int, int, int]]) -> None:
        with self._lock:
            old = self._graph
            for h in self._blocks.values():
                if h.vectors is None:
                    h.vectors = old.vectors(h)   # back to float32 while the rows change
                h.row = None
            face_ids = np.full(index.ntotal, -1, np.int64)
            graph = _Graph(index, rows, face_ids)
            for block_id, start, n in rows:
                h = self._blocks.get(block_id)
                if h is None or len(h.ids) != n:
                    graph.alive[start:start + n] = False   # not held (yet), or replaced
                    if h is None:
                        graph.pending[block_id] = (start, n)
                    continue
                face_ids[start:start + n] = h.ids
                h.row = start
                h.vectors = None   # the graph's fp16 codes are the copy kept
            self._graph = graph
            self._changed()


_blas = None


def _one_blas_thread():
    """A block's GEMV (4096 x 128) is too small to share: on the 2 loaded cores OpenBLAS'
    second thread made 10^5 faces 81 ms p50 / 414 ms p99 against 13 / 22 ms with one
    (bench/search.py). Limited for the scan only (15 us a call), then restored."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _exact(held: list[_Held], q: np.ndarray, k: int, graph: _Graph | None) -> tuple[np.ndarray, np.ndarray]:
    with _one_blas_thread():
        return _exact_scan(held, q, k, graph)


def _exact_scan(held: list[_Held], q: np.ndarray, k: int, graph: _Graph | None) -> tuple[np.ndarray, np.ndarray]:
    """Each block's k nearest, by one GEMV over its matrix, distances then computed exactly
    for those (|x|^2 - 2x.q + |q|^2 loses digits near 0)."""
    ids, dist = [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    for h in held:
        vectors = h.vectors if h.vectors is not None else graph.vectors(h)
        rough = h.norms - 2 * (vectors @ q)
        pick = np.argpartition(rough, k - 1)[:k] if len(rough) > k else np.arange(len(rough))
        ids.append(h.ids[pick])
        dist.append(np.linalg.norm(vectors[pick] - q, axis=1).astype(np.float32))
    return np.concatenate(ids), np.concatenate(dist)


def _top(ids: np.ndarray, dist: np.ndarray, k: int, total: int, method: str) -> Hits:
    order = np.lexsort((ids, dist))[:k]
    return Hits(ids[order], dist[order], total, method)
