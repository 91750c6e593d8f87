"""The embedding index against a plain numpy ranking, on identity-cluster data."""
from __future__ import annotations

import numpy as np
import pytest

from gigaface.errors import GigafaceError
from gigaface.library.sealed_blocks import Block, seal_block, unseal_block
from gigaface.library.sealing import LibraryKey
from gigaface.search_index import EmbeddingIndex

from bench.search import identity_clusters


def blocks_of(vectors: np.ndarray, per_block: int, captures: int = 3, first_id: int = 1) -> list[Block]:
    out = []
    for b, start in enumerate(range(0, len(vectors), per_block)):
        part = vectors[start:start + per_block].astype(np.float16)
        out.append(Block(b + 1, b % captures + 1, np.arange(start, start + len(part)) + first_id, part))
    return out


def same_ranking(hits, want_ids: np.ndarray, want_dist: np.ndarray, k: int | None = None) -> bool:
    """An exact ranking of the first k (all) faces: at each rank a face whose own distance
    is the one that rank has. faiss sums in another order than numpy (1e-4 apart at
    most), which may swap two strangers at nearly equal distances."""
    k = len(want_ids) if k is None else k
    truth = dict(zip(want_ids.tolist(), want_dist.tolist()))
    got = hits.ids.tolist()
    return (len(got) == len(set(got)) == min(k, len(want_ids))
            and np.allclose([truth[i] for i in got], want_dist[:k], atol=2e-4)
            and np.allclose(hits.distances, want_dist[:k], atol=2e-4))


def plain_rank(blocks: list[Block], q: np.ndarray, captures=None) -> tuple[np.ndarray, np.ndarray]:
    """Every face of the blocks by distance (ties to the lower id), over the stored float16."""
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
    index = EmbeddingIndex.of(blocks)
    assert len(index) == 3000 and index.method == "exact"
    for q in queries:
        want_ids, want_dist = plain_rank(blocks, q)
        hits = index.search(q, limit=None)
        assert hits.method == "exact" and hits.total == 3000
        assert same_ranking(hits, want_ids, want_dist)
        narrowed = index.search(q, captures=[2], limit=15)
        assert same_ranking(narrowed, *plain_rank(blocks, q, {2}), k=15)
        assert narrowed.total == sum(len(b.ids) for b in blocks if b.capture == 2)
        assert index.search(q, captures=[], limit=5).ids.size == 0


def test_within_finds_every_face_under_the_distance(data):
    blocks, queries = data
    index = EmbeddingIndex.of(blocks)
    for q in queries[:5]:
        ids, dist = plain_rank(blocks, q)
        for radius in (0.6, 1.4):   # the person's faces; then hundreds of strangers too
            hits = index.within(q, radius)
            sure, unsure = ids[dist <= radius - 2e-4], ids[np.abs(dist - radius) < 2e-4]
            assert set(sure.tolist()) <= set(hits.ids.tolist()) <= set(sure.tolist()) | set(unsure.tolist())
            assert np.array_equal(hits.ids[:5], ids[:5])
    assert len(index.within(queries[0], 1.4).ids) > 64   # beyond the first k, so the search grew


def test_pages_are_sliced_from_one_ranking(data, monkeypatch):
    blocks, queries = data
    index = EmbeddingIndex.of(blocks)
    whole = index.search(queries[0], limit=60).ids
    ranked = []
    real = index._rank
    monkeypatch.setattr(index, "_rank", lambda *a, **kw: ranked.append(a[1]) or real(*a, **kw))
    pages = [index.search(queries[0], offset=o, limit=20).ids for o in (0, 20, 40)]
    assert np.array_equal(np.concatenate(pages), whole)
    assert ranked == []   # every page sliced from the ranking made for the first
    assert len(index.search(queries[0], offset=2990, limit=20).ids) == 10
    assert ranked == [3000]


def test_incremental_add_and_remove_at_once(data):
    blocks, queries = data
    index = EmbeddingIndex.of(blocks[:6])
    q = queries[0]
    nearest_of_all = plain_rank(blocks, q)[0][0]
    owner = next(b for b in blocks if nearest_of_all in b.ids)
    index.search(q, limit=5)        # warm: its ranking is kept for paging
    index.add_block(owner)          # a scan adds faces to a warm index
    assert index.search(q, limit=1).ids[0] == nearest_of_all
    assert index.remove_blocks([owner.id]) == 1
    after = index.search(q, limit=None)
    assert nearest_of_all not in after.ids and not np.isin(owner.ids, after.ids).any()
    assert index.remove_blocks([owner.id]) == 0


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
    before = index.search(q, limit=5).ids            # warm: the ranking is kept for paging
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
    # A block listed but gone before it could be loaded is skipped, not an error.
    assert index.sync(live | {2000}, lambda b: by_id[b]) == (0, 0)


def test_the_ivf_finds_what_exact_search_finds(data):
    blocks, queries = data
    by_id = {b.id: b for b in blocks}
    index = EmbeddingIndex.of(blocks[:10], exact_up_to=100)
    assert index.wants_ann()
    index.build_ann(by_id.__getitem__)
    assert index.method == "ivf" and not index.wants_ann()
    for b in blocks[10:]:
        index.add_block(b)             # new faces go to their lists
    hits = [index.search(q, limit=10) for q in queries]
    assert {h.method for h in hits} == {"ivf"}
    truth = [plain_rank(blocks, q)[0][:10] for q in queries]
    assert np.mean([h.ids[0] == t[0] for h, t in zip(hits, truth)]) >= 0.95
    assert np.mean([len(set(h.ids[:5]) & set(t[:5])) / 5 for h, t in zip(hits, truth)]) >= 0.9
    # Every list probed: exact again, as erasure needs it.
    for q in queries[:5]:
        exact = index.search(q, limit=None, exact=True)
        ids, dist = plain_rank(blocks, q)
        assert exact.method == "exact" and same_ranking(exact, ids, dist)
        assert np.array_equal(index.within(q, 0.6).ids, ids[dist <= 0.6])
    gone = next(b for b in blocks if truth[0][0] in b.ids)
    index.remove_blocks([gone.id])
    assert not np.isin(index.search(queries[0], limit=50).ids, gone.ids).any()
    assert set(index.search(queries[1], captures=[1], limit=None).ids) == \
        set(np.concatenate([b.ids for b in blocks if b.capture == 1 and b.id != gone.id]))


def test_blocks_that_change_while_the_ivf_is_built_are_in_it(data):
    blocks, queries = data
    by_id = {b.id: b for b in blocks[:8]}
    index = EmbeddingIndex.of(blocks[:8], exact_up_to=100)
    late, dropped = blocks[8], blocks[0]

    def loader(block_id):   # the library changes while the build reads it
        if block_id == blocks[3].id:
            index.add_block(late)
            index.remove_blocks([dropped.id])
        return by_id[block_id]

    index.build_ann(loader)
    assert index.method == "ivf" and index.block_ids() == {b.id for b in blocks[1:9]}
    held = index.search(queries[0], limit=None, exact=True).ids
    assert set(held) == set(np.concatenate([b.ids for b in blocks[1:9]]))


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
