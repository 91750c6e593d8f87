"""The embedding index against a plain exact ranking, on identity-cluster data."""
from __future__ import annotations

import numpy as np
import pytest

from gigaface.library.sealed_blocks import Block, seal_block, unseal_block
from gigaface.library.sealing import LibraryKey
from gigaface.errors import GigafaceError
from gigaface.search_index import EmbeddingIndex

from bench.search import identity_clusters


def blocks_of(vectors: np.ndarray, per_block: int, captures: int = 3, first_id: int = 1) -> list[Block]:
    out = []
    for b, start in enumerate(range(0, len(vectors), per_block)):
        part = vectors[start:start + per_block].astype(np.float16)
        out.append(Block(b + 1, b % captures + 1, np.arange(start, start + len(part)) + first_id, part))
    return out


def plain_rank(blocks: list[Block], q: np.ndarray, captures=None) -> tuple[np.ndarray, np.ndarray]:
    chosen = [b for b in blocks if captures is None or b.capture in captures]
    ids = np.concatenate([b.ids for b in chosen])
    dist = np.linalg.norm(np.concatenate([b.vectors for b in chosen]).astype(np.float32) - q, axis=1)
    order = np.lexsort((ids, dist))
    return ids[order], dist[order]


@pytest.fixture(scope="module")
def data():
    vectors, queries = identity_clusters(3000, views=5, queries=20, seed=1)
    return blocks_of(vectors, 250), queries


def test_exact_search_equals_a_full_ranking(data):
    blocks, queries = data
    index = EmbeddingIndex()
    for b in blocks:
        index.add_block(b)
    assert len(index) == 3000
    for q in queries:
        want_ids, want_dist = plain_rank(blocks, q)
        hits = index.search(q, limit=None)
        assert hits.method == "exact" and hits.total == 3000
        assert np.array_equal(hits.ids, want_ids)
        assert np.allclose(hits.distances, want_dist, atol=1e-5)
        narrowed = index.search(q, captures=[2], limit=15)
        assert np.array_equal(narrowed.ids, plain_rank(blocks, q, {2})[0][:15])
        assert narrowed.total == sum(len(b.ids) for b in blocks if b.capture == 2)


def test_pages_follow_one_ranking(data):
    blocks, queries = data
    index = EmbeddingIndex()
    for b in blocks:
        index.add_block(b)
    whole = index.search(queries[0], limit=60).ids
    pages = [index.search(queries[0], offset=o, limit=20).ids for o in (0, 20, 40)]
    assert np.array_equal(np.concatenate(pages), whole)
    assert len(index.search(queries[0], offset=2990, limit=20).ids) == 10


def test_incremental_add_and_remove_at_once(data):
    blocks, queries = data
    index = EmbeddingIndex()
    for b in blocks[:6]:
        index.add_block(b)
    q = queries[0]
    nearest_of_all = plain_rank(blocks, q)[0][0]
    owner = next(b for b in blocks if nearest_of_all in b.ids)
    index.add_block(owner)          # a scan adds faces to a warm index
    assert index.search(q, limit=1).ids[0] == nearest_of_all
    assert index.remove_block(owner.id)
    after = index.search(q, limit=None)
    assert nearest_of_all not in after.ids and not np.isin(owner.ids, after.ids).any()
    assert not index.remove_block(owner.id)


def test_sync_drops_vanished_blocks_and_loads_new_ones(data):
    blocks, queries = data
    by_id = {b.id: b for b in blocks}
    loaded = []
    index = EmbeddingIndex()

    def loader(block_id):
        loaded.append(block_id)
        return by_id[block_id]

    assert index.sync(by_id, loader) == (len(blocks), 0)
    q = queries[3]
    before = index.search(q, limit=5).ids            # warm: the ranking is cached for paging
    erased = next(b for b in blocks if before[0] in b.ids)
    # Erasure rewrites the block without the face, under a new id.
    keep = erased.ids != before[0]
    rewritten = Block(1000, erased.capture, erased.ids[keep], erased.vectors[keep])
    by_id[rewritten.id] = rewritten
    live = set(by_id) - {erased.id}
    loaded.clear()
    assert index.sync(live, loader) == (1, 1) and loaded == [1000]
    after = index.search(q, limit=None).ids
    assert before[0] not in after and set(before[1:]) <= set(after[:5])
    assert index.block_ids() == live


def test_the_graph_finds_what_exact_search_finds(data):
    blocks, queries = data
    index = EmbeddingIndex(exact_up_to=100)
    for b in blocks[:10]:
        index.add_block(b)
    assert index.wants_ann()
    index.build_ann(m=16, ef_construction=40)
    assert not index.wants_ann()
    for b in blocks[10:]:
        index.add_block(b)             # searched exactly beside the graph
    hits = [index.search(q, limit=10) for q in queries]
    assert {h.method for h in hits} == {"hnsw"}
    truth = [plain_rank(blocks, q)[0][:10] for q in queries]
    assert np.mean([h.ids[0] == t[0] for h, t in zip(hits, truth)]) >= 0.95
    assert np.mean([len(set(h.ids) & set(t)) / 10 for h, t in zip(hits, truth)]) >= 0.9
    # A block the graph covers, removed: filtered out of the walk at once.
    gone = next(b for b in blocks[:10] if truth[0][0] in b.ids)
    index.remove_block(gone.id)
    assert not np.isin(index.search(queries[0], limit=50).ids, gone.ids).any()
    # A narrow capture filter, and a graph saved and loaded into a fresh index.
    assert set(index.search(queries[1], captures=[1], limit=None).ids) == \
        set(np.concatenate([b.ids for b in blocks if b.capture == 1 and b.id != gone.id]))
    saved = index.ann_bytes()
    fresh = EmbeddingIndex(exact_up_to=100)
    for b in blocks:
        if b.id != gone.id:
            fresh.add_block(b)
    fresh.load_ann(saved)
    for q in queries[:5]:
        assert np.array_equal(fresh.search(q, limit=10).ids, index.search(q, limit=10).ids)


def test_a_block_opens_only_as_itself():
    key = LibraryKey(bytes(range(32)), "test key")
    block = Block(7, 3, np.array([5, 9], np.int64), np.random.default_rng(0).random((2, 128)).astype(np.float16))
    sealed = seal_block(key, block)
    back = unseal_block(key, sealed, 7, 3)
    assert np.array_equal(back.ids, block.ids) and np.array_equal(back.vectors, block.vectors)
    for block_id, capture in ((8, 3), (7, 4)):
        with pytest.raises(GigafaceError, match="does not open"):
            unseal_block(key, sealed, block_id, capture)
    with pytest.raises(GigafaceError, match="does not open"):
        unseal_block(LibraryKey(bytes(32), "another key"), sealed, 7, 3)


def test_bench_search_section_smoke(tmp_path):
    import json
    import subprocess
    import sys

    report = tmp_path / "report" / "report.md"
    subprocess.run([sys.executable, "-m", "bench", "--sections", "search", "--search-sizes", "10000",
                    "--work", str(tmp_path / "work"), "--report", str(report)], check=True, timeout=240)
    (row,) = json.loads((report.parent / "results" / "search.json").read_text())["rows"]
    assert row["faces"] == 10000 and row["index"] == "exact"
    assert row["recall_at_1"] >= 0.99 and row["recall_at_10"] >= 0.99
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["cold_s"] > 0 and row["rss_mb"] > 0
