"""Faces ranked by distance to a person, from templates held in memory.

`EmbeddingIndex` holds a library's templates as the library stores them (float16, the
blocks of library/sealed_blocks.py) in one faiss index whose ids are face ids. A one-shot
process (the CLI's `find`) fills one from the sealed blocks and searches once; a
long-lived one (the service, the Python API) keeps a `LibraryIndex`, which compares the
library's block ids with its own before each search: blocks written by a scan are loaded,
blocks gone are dropped (an erasure rewrites a block under a new id; purge and capture
deletion remove it), so an erased face never comes back, not even from a warm index.

Measured on this 2-core machine, shared (load average 1.8-3.0; bench/search.py, `python -m
bench --sections search`: 128-d identity clusters, 5 views a person, 100 queries through
`audited_rank`, top 20, recall against exact float32):

    10^5 faces, exact: faiss flat scan of float16   p50 1.4-6.8 ms, p99 2.7-27 ms, 136 MB
    10^5 faces, IVF 1024 lists, 64 probed            p50 0.7 ms, recall@1 1.00, @10 0.76; built in 3 s
    10^6 faces, exact                                 p50 10-25 ms, p99 13-137 ms (as the load varied), 368 MB
    10^6 faces, IVF 4096 lists, 256 probed            p50 3.2 ms, p99 7.9 ms, recall@1 1.00, @10 0.80,
                                                      the person's own 5 faces 1.00; built in 54 s, 645 MB peak
    10^6 faces, numpy float32 GEMV (exact)            p50 26 ms quiet (186 ms loaded), 512 MB
    2x10^5 faces, faiss HNSW M=32 fp16, ef 128        p50 1.0 ms, recall@1 1.00, @10 0.95; built in 175 s

So exact search, faiss' flat scan of the float16 codes (SIMD-decoded as it goes: half the
bytes of float32, nothing converted in numpy), up to EXACT_UP_TO faces, where its p99
stays in tens of ms however loaded the machine; beyond, an IVF over the same codes. IVF
over HNSW: it builds in seconds to a minute rather than many minutes, so it is rebuilt in
memory from the sealed blocks (nothing but the blocks is stored), takes new faces by
assigning them to a list (no graph to repair), costs 8 bytes a face beyond the codes
(HNSW: 256 at M=32), and with every list probed it is exact again, for erasure. Its
recall@10 is the lower one: places 6-10 of a query are strangers at nearly equal
distances, which only an exact scan orders; the person's own faces it finds.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from gigaface.library.sealed_blocks import Block
from gigaface.library.store import Library

EXACT_UP_TO = 200_000
# IVF: lists ~4 sqrt(N) (faiss' guidance), each trained on ~40 faces; a query probes a
# 16th of them (recall@1 1.00 from a 128th at 10^6; the rest buys recall@10 and margin).
PROBED_SHARE = 1 / 16
TRAIN_PER_LIST = 40
# The probed lists answer the first pages; deeper is exact.
ANN_MAX_K = 1000
REBUILD_GROWTH = 2.0   # an IVF trained on N faces is trained again at 2N
_PAGES_KEPT = 32       # rankings kept for paging: a next page is sliced, not ranked again
_PAGE_DEPTH_KEPT = 10_000
PAGES_AHEAD = 200      # ranks found by the first search for a person: ten pages of 20
SAME_QUERY = 1e-4      # queries this close share their ranking (dlib's people lie 0.3-1.0 apart)


@dataclass(frozen=True)
class Hits:
    ids: np.ndarray         # face ids, nearest first
    distances: np.ndarray   # euclidean, float32
    total: int              # faces searched
    method: str             # "exact" or "ivf"


@dataclass(frozen=True)
class _Scope:
    faces: int
    bits: np.ndarray   # bit i: face id i is in the captures searched


class EmbeddingIndex:
    """(face id, template) of a library's blocks; thread-safe."""

    def __init__(self, dim: int = 128, exact_up_to: int = EXACT_UP_TO):
        import faiss   # here, not at the top: commands that never search do not pay its import

        self.dim, self.exact_up_to = dim, exact_up_to
        self._flat = faiss.IndexIDMap(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16))
        self._ivf = None
        self._trained_on = 0
        self._blocks: dict[int, tuple[int, np.ndarray]] = {}   # block id -> (capture, face ids)
        self._building: dict[int, Block] | None = None          # blocks added while an IVF is built
        self._lock = threading.RLock()
        self._pages: OrderedDict[int, tuple] = OrderedDict()   # (query, captures, exact, ranking)
        self._page_key = 0
        self._scopes: dict[frozenset[int], _Scope] = {}

    @classmethod
    def of(cls, blocks: Iterable[Block], **kw) -> EmbeddingIndex:
        index = cls(**kw)
        for block in blocks:
            index.add_block(block)
        return index

    def __len__(self) -> int:
        with self._lock:
            return self._store.ntotal

    @property
    def method(self) -> str:
        return "ivf" if self._ivf is not None else "exact"

    @property
    def _store(self):
        return self._ivf if self._ivf is not None else self._flat

    def block_ids(self) -> set[int]:
        with self._lock:
            return set(self._blocks)

    # --- what is held ------------------------------------------------------------------
    def add_block(self, block: Block) -> None:
        """A block's faces; a block id held already is skipped (its content never changes)."""
        if block.vectors.shape[1:] != (self.dim,):
            raise ValueError(f"block {block.id}: {block.vectors.shape[1:]} embeddings in a {self.dim}-d index")
        # A copy: the block's ids are a view of its whole unsealed message, which would
        # stay in memory beside the index (measured: +245 MB at 10^6 faces).
        ids = np.array(block.ids, np.int64)
        with self._lock:
            if block.id in self._blocks:
                return
            if self._ivf is not None:
                self._ivf.add_with_ids(np.asarray(block.vectors, np.float32), ids)
            else:
                codes = np.ascontiguousarray(block.vectors, "<f2").view(np.uint8).reshape(len(ids), 2 * self.dim)
                self._flat.add_sa_codes(codes, ids)
            if self._building is not None:
                self._building[block.id] = block
            self._blocks[block.id] = (block.capture, ids)
            self._changed()

    def remove_blocks(self, block_ids: Iterable[int]) -> int:
        """Drop these blocks' faces at once; returns how many blocks were held."""
        import faiss

        with self._lock:
            gone = [self._blocks.pop(b) for b in set(block_ids) if b in self._blocks]
            if gone:
                self._store.remove_ids(faiss.IDSelectorBatch(np.concatenate([ids for _, ids in gone])))
                self._changed()
            return len(gone)

    def sync(self, live: Iterable[int], loader: Callable[[int], Block]) -> tuple[int, int]:
        """Hold exactly the blocks in `live`: vanished ones dropped first, then missing ones
        loaded by `loader(block_id)` (a KeyError: gone meanwhile). Returns (added, removed)."""
        live = set(live)
        with self._lock:
            removed = self.remove_blocks([b for b in self._blocks if b not in live])
            new = sorted(b for b in live if b not in self._blocks)
        added = 0
        # Loading (unsealing) happens outside the lock so searches go on meanwhile; the
        # removals above are already in force for them.
        for b in new:
            try:
                self.add_block(loader(b))
                added += 1
            except KeyError:
                pass
        return added, removed

    def _changed(self) -> None:
        self._pages.clear()
        self._scopes.clear()

    # --- search --------------------------------------------------------------------------
    def search(self, query: np.ndarray, captures: Iterable[int] | None = None, offset: int = 0,
               limit: int | None = 20, exact: bool = False) -> Hits:
        """Faces nearest to `query`, ranks offset .. offset+limit (limit None: to the end),
        of the given captures (None: all). `exact` scans every face even beyond
        EXACT_UP_TO. Ties go to the lower face id."""
        q = self._query(query)
        wanted = None if captures is None else frozenset(int(c) for c in captures)
        with self._lock:
            allowed = self._allowed(wanted)
            total = self._store.ntotal if allowed is None else allowed.faces
            depth = total if limit is None else min(total, offset + limit)
            cached = self._cached(q, wanted, exact, depth)
            if cached is None:
                # Ranked a few pages ahead (as fast as one page: the scan is the cost), and
                # twice as deep as asked beyond that, so paging on seldom ranks again.
                ahead = depth if limit is None else min(total, max(PAGES_AHEAD, 2 * depth if offset else depth))
                if 0 < depth <= self._ann_depth(total, exact):
                    ahead = min(ahead, self._ann_depth(total, exact))   # still answered by the IVF
                cached = self._rank(q, ahead, allowed, total, exact)
                if ahead <= _PAGE_DEPTH_KEPT:
                    self._pages[self._page_key] = (q, wanted, exact, cached)
                    self._page_key += 1
                    while len(self._pages) > _PAGES_KEPT:
                        self._pages.popitem(last=False)
        end = None if limit is None else offset + limit
        return Hits(cached.ids[offset:end], cached.distances[offset:end], total, cached.method)

    def _cached(self, q: np.ndarray, wanted, exact: bool, depth: int) -> Hits | None:
        """A ranking kept for this query, at least `depth` deep. The same photo embedded
        again by another worker process differs in the last bits: the same person."""
        for key, (query, scope, how, hits) in reversed(self._pages.items()):
            if scope == wanted and how == exact and len(hits.ids) >= min(depth, hits.total) \
                    and float(np.linalg.norm(query - q)) <= SAME_QUERY:
                self._pages.move_to_end(key)
                return hits
        return None

    def within(self, query: np.ndarray, distance: float, captures: Iterable[int] | None = None) -> Hits:
        """Every face at or under `distance` of `query`, nearest first, always exact (what
        erasure and consent act on). A k-nearest search, doubled until the farthest found
        is beyond `distance`: faiss' range search over float16 codes took 50x longer."""
        q = self._query(query)
        wanted = None if captures is None else frozenset(int(c) for c in captures)
        with self._lock:
            allowed = self._allowed(wanted)
            total = self._store.ntotal if allowed is None else allowed.faces
            k = 64
            while True:
                hits = self._rank(q, min(k, total), allowed, total, exact=True)
                if k >= total or len(hits.distances) == 0 or hits.distances[-1] > distance:
                    break
                k *= 4
        near = hits.distances <= distance
        return Hits(hits.ids[near], hits.distances[near], total, hits.method)

    def _query(self, query: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(query, np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"a {self.dim}-d query, not {np.shape(query)}")
        return q

    def _allowed(self, wanted: frozenset[int] | None) -> _Scope | None:
        """The faces of the wanted captures, as a bitmap over face ids for faiss; kept
        until the index changes (made anew, 10^6 faces cost ~10 ms a search)."""
        if wanted is None:
            return None
        scope = self._scopes.get(wanted)
        if scope is None:
            parts = [ids for capture, ids in self._blocks.values() if capture in wanted]
            ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
            bitmap = np.zeros(int(ids.max(initial=-1)) + 1, bool)
            bitmap[ids] = True
            scope = self._scopes[wanted] = _Scope(len(ids), np.packbits(bitmap, bitorder="little"))
            while len(self._scopes) > _PAGES_KEPT:
                self._scopes.pop(next(iter(self._scopes)))
        return scope

    def _ann_depth(self, total: int, exact: bool) -> int:
        """How deep a ranking the IVF answers (0: none, exact search). Its probed lists
        hold a 16th of the faces: deeper than a few of their share, or than ANN_MAX_K, is
        an exact scan."""
        if self._ivf is None or exact or total <= self.exact_up_to:
            return 0
        return int(min(ANN_MAX_K, total * PROBED_SHARE / 4))

    def _rank(self, q: np.ndarray, k: int, allowed: _Scope | None, total: int, exact: bool) -> Hits:
        import faiss

        if k == 0:
            return Hits(np.empty(0, np.int64), np.empty(0, np.float32), total, "exact")
        ivf = self._ivf
        approximate = k <= self._ann_depth(total, exact)
        if ivf is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = max(1, round(ivf.nlist * PROBED_SHARE)) if approximate else ivf.nlist
        else:
            params = faiss.SearchParameters()
        if allowed is not None:
            # Its size is in bytes, not ids (given ids, it reads past the bitmap). Held in
            # a local for the search: `params.sel` keeps no Python reference to it.
            selector = faiss.IDSelectorBitmap(len(allowed.bits), faiss.swig_ptr(allowed.bits))
            params.sel = selector
        squared, ids = self._store.search(q[None], k, params=params)
        ids, squared = ids[0], squared[0]
        found = ids >= 0
        ids, dist = ids[found], np.sqrt(np.maximum(squared[found], 0)).astype(np.float32)
        order = np.lexsort((ids, dist))
        return Hits(ids[order], dist[order], total, "ivf" if approximate else "exact")

    # --- beyond EXACT_UP_TO: the IVF index ---------------------------------------------------
    def wants_ann(self) -> bool:
        """Whether an IVF (re)build pays: more faces than an exact scan serves fast, and no
        IVF yet, or twice the faces it was trained on."""
        with self._lock:
            n = self._store.ntotal
            return self._building is None and n > self.exact_up_to and n > REBUILD_GROWTH * self._trained_on

    def build_ann(self, loader: Callable[[int], Block], seed: int = 0) -> None:
        """An IVF index over the blocks held now, filled from `loader(block_id)` (the
        library's sealed blocks, read again: no second copy of the templates in memory),
        then swapped in with what changed meanwhile. A minute at 10^6 faces on 2 cores:
        call it off the search path."""
        import faiss

        with self._lock:
            if self._building is not None:
                return
            self._building = {}
            held = sorted(self._blocks)
            n = self._store.ntotal
        try:
            ivf = _filled_ivf(self.dim, held, loader, n, seed)
            if ivf is None:   # a block went while it was read: the next search asks again
                return
            ivf, built = ivf
            with self._lock:
                for block in self._building.values():   # added meanwhile
                    if block.id in self._blocks and block.id not in built:
                        built[block.id] = _add(ivf, block)
                stale = [ids for b, ids in built.items() if b not in self._blocks]   # removed meanwhile
                if stale:
                    ivf.remove_ids(faiss.IDSelectorBatch(np.concatenate(stale)))
                for b in set(self._blocks) - set(built):   # gone from the library since the last sync
                    del self._blocks[b]
                self._ivf, self._flat, self._trained_on = ivf, None, n
                self._changed()
        finally:
            with self._lock:
                self._building = None


def _filled_ivf(dim: int, held: list[int], loader: Callable[[int], Block], n: int, seed: int):
    """An IVF over the blocks `held`, its lists sized exactly: one pass assigns each face
    to a list, the lists are allocated, a second pass copies each block's float16 codes
    in. Filled face by face, faiss grows each list by doubling: 1.2 GB at 10^6 faces
    beside the exact index, against 0.26 GB of codes. Returns (ivf, {block id: face
    ids}), or None when a block could not be read twice."""
    import faiss

    nlist = 2 ** max(4, round(math.log2(4 * math.sqrt(max(n, 1)))))
    quantizer = faiss.IndexFlatL2(dim)
    # Not by residual: the codes are the blocks' own float16, so probing every list is an
    # exact search, and a block is copied in, not encoded again.
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2, False)
    sample, need = [], TRAIN_PER_LIST * nlist
    for b in np.random.default_rng(seed).permutation(held):
        if need <= 0:
            break
        block = _load(loader, int(b))
        if block is not None:
            sample.append(block.vectors.astype(np.float32))
            need -= len(block.ids)
    if not sample:
        return None
    ivf.train(np.concatenate(sample))
    del sample
    lists: dict[int, np.ndarray] = {}
    for b in held:
        block = _load(loader, b)
        if block is not None:
            lists[b] = quantizer.assign(block.vectors.astype(np.float32), 1).ravel()
    counts = np.bincount(np.concatenate(list(lists.values())) if lists else np.empty(0, np.int64), minlength=nlist)
    for list_no, count in enumerate(counts):
        ivf.invlists.resize(list_no, int(count))
    filled = np.zeros(nlist, np.int64)
    built: dict[int, np.ndarray] = {}
    for b, assigned in lists.items():
        block = _load(loader, b)
        if block is None:
            return None
        order = np.argsort(assigned, kind="stable")
        ranked = assigned[order]
        ids = np.ascontiguousarray(block.ids[order], np.int64)
        codes = np.ascontiguousarray(block.vectors[order], "<f2").view(np.uint8).reshape(len(ids), 2 * dim)
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(ranked)]):
            list_no = int(ranked[start])
            ivf.invlists.update_entries(list_no, int(filled[list_no]), int(end - start),
                                        faiss.swig_ptr(ids[start:end]), faiss.swig_ptr(codes[start:end]))
            filled[list_no] += end - start
        built[b] = np.array(block.ids, np.int64)
    ivf.ntotal = int(counts.sum())
    return ivf, built


def _add(ivf, block: Block) -> np.ndarray:
    ids = np.array(block.ids, np.int64)
    ivf.add_with_ids(np.asarray(block.vectors, np.float32), ids)
    return ids


def _load(loader: Callable[[int], Block], block_id: int) -> Block | None:
    try:
        return loader(block_id)
    except KeyError:
        return None


class LibraryIndex:
    """One library's templates held by a long-lived process (the service, the Python
    API), synced with the library before each search, its IVF built in a thread of its own
    when the library grows past EXACT_UP_TO."""

    def __init__(self, path: str, exact_up_to: int = EXACT_UP_TO):
        self.path = path
        self.index = EmbeddingIndex(exact_up_to=exact_up_to)
        self._builder: threading.Thread | None = None
        self._lock = threading.Lock()

    def synced(self, library: Library) -> EmbeddingIndex:
        """The index holding exactly the library's blocks now. The key first: a library
        opened without it is never searched, even where its templates are held."""
        library.key()
        self.index.sync(library.faces.block_ids(), library.faces.block)
        if self.index.wants_ann():
            with self._lock:
                if self._builder is None or not self._builder.is_alive():
                    self._builder = threading.Thread(target=self._build, name="gigaface-ivf", daemon=True)
                    self._builder.start()
        return self.index

    def _build(self) -> None:
        library = Library(self.path)   # its own connection: SQLite's belong to their thread
        try:
            self.index.build_ann(library.faces.block)
        finally:
            library.close()

    def wait(self, timeout: float | None = None) -> None:
        """Until a build in progress is done (tests and benchmarks)."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)


def loaded(library: Library, captures: Iterable[int] | None = None) -> EmbeddingIndex:
    """A one-shot index of the library's blocks (of the given captures): the cold path."""
    library.key()
    return EmbeddingIndex.of(library.faces.blocks(captures))
