"""Search over a real library file: templates sealed in blocks as scans describe, a warm index
that follows scans, erasure, purge and deletion at once, libraries without their key, and
libraries of older schemas migrated on open. Synthetic faces (identity clusters) through the
library's own writes, so each test takes a second or two."""
from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pytest

from gigaface.engine.detections import Detections
from gigaface.errors import GigafaceError
from gigaface.library.sealed_blocks import BLOCK_FACES
from gigaface.library.store import Library
from gigaface.privacy.retention import purge
from gigaface.search import rank
from gigaface.search_index import LibraryIndex

from bench.search import add_capture, identity_clusters, person
from tests.helpers import as_schema_4, drop_column


@pytest.fixture
def made(tmp_path):
    """A library of two captures (3000 and 2000 faces), its vectors and queries."""
    vectors, queries = identity_clusters(6000, queries=10, seed=2)
    library = Library(str(tmp_path / "lib.db"), create=True)
    add_capture(library, "a", vectors[:3000], batch=64)
    add_capture(library, "b", vectors[3000:5000], batch=64)
    return library, vectors, queries


def face_ids(library: Library) -> np.ndarray:
    return np.array([r[0] for r in library.db.execute("SELECT id FROM faces ORDER BY id")], np.int64)


def top_ids(matches) -> list[int]:
    return [m.face.id for m in matches]


def numpy_ranking(library: Library, q: np.ndarray, k: int) -> list[int]:
    ids, vectors = library.faces.embeddings()
    dist = np.linalg.norm(vectors - q, axis=1)
    return ids[np.lexsort((ids, dist))][:k].tolist()


def test_templates_fill_blocks_as_a_scan_describes(tmp_path):
    vectors, _ = identity_clusters(9000, queries=1, seed=3)
    library = Library(str(tmp_path / "lib.db"), create=True)
    add_capture(library, "big", vectors, batch=64)
    sizes = [n for (n,) in library.db.execute("SELECT faces FROM face_blocks ORDER BY id")]
    assert sizes == [BLOCK_FACES, BLOCK_FACES, 9000 - 2 * BLOCK_FACES]   # merged as they filled, then packed
    ids, stored = library.faces.embeddings()
    assert np.array_equal(ids, face_ids(library))
    assert np.array_equal(stored, vectors.astype(np.float16).astype(np.float32))
    assert library.faces.count(1, embedded=True) == 9000


def test_ranking_is_exact_cold_and_warm(made):
    library, _, queries = made
    warm = LibraryIndex(library.path)
    for q in queries[:5]:
        want = numpy_ranking(library, q, 10)
        assert top_ids(rank(library, person(q), top=10)) == want
        assert top_ids(rank(library, person(q), top=10, index=warm)) == want
    page = rank(library, person(queries[0]), top=5, offset=5, index=warm)
    assert [m.rank for m in page] == [6, 7, 8, 9, 10] and page.searched == 5000
    assert top_ids(page) == numpy_ranking(library, queries[0], 10)[5:]
    narrowed = rank(library, person(queries[0]), capture_ids=[2], top=3, index=warm)
    assert {m.face.capture for m in narrowed} == {2} and narrowed.searched == 2000


def test_a_warm_index_follows_scans_erasure_purge_and_deletion(made):
    library, vectors, queries = made
    warm = LibraryIndex(library.path)
    q = queries[0]
    first = rank(library, person(q), top=3, index=warm)[0].face   # warm now, its ranking kept for paging
    # A scan adds a capture holding an even closer view of the person: found at once.
    added = add_capture(library, "c", np.stack([q + 1e-3, *vectors[5000:5100]]), batch=8)
    top = rank(library, person(q), top=3, index=warm)
    assert top[0].face.capture == added.id and top[1].face.id == first.id
    # Erasure: that face never comes back, from this warm index or any other search.
    library.faces.erase([first.id])
    for index in (warm, None):
        assert first.id not in top_ids(rank(library, person(q), top=None, index=index))
    assert first.id not in library.faces.embeddings()[0]
    # Purge of the added capture, then deletion of another: their faces go at once.
    library.captures.set_expiry(added.id, time.time() - 1)
    assert [p.capture for p in purge(library, library.path)] == [added.id]
    after = rank(library, person(q), top=None, index=warm)
    assert added.id not in {m.face.capture for m in after} and after.searched == 4999
    library.captures.delete(2)
    assert {m.face.capture for m in rank(library, person(q), top=None, index=warm)} == {1}
    assert warm.index.block_ids() == set(library.faces.block_ids())


def test_a_warm_index_builds_its_ivf_and_still_forgets(made):
    library, _, queries = made
    warm = LibraryIndex(library.path, exact_up_to=1000)
    q = queries[1]
    want = numpy_ranking(library, q, 5)
    rank(library, person(q), top=5, index=warm)
    warm.wait(60)
    assert warm.index.method == "ivf"
    found = rank(library, person(q), top=5, index=warm)
    assert found.method == "ivf" and top_ids(found)[0] == want[0]
    library.faces.erase([want[0]])
    again = rank(library, person(q), top=None, index=warm)
    assert want[0] not in top_ids(again) and top_ids(again)[:4] == want[1:]


def test_matches_only_are_every_face_under_the_threshold(made):
    library, _, queries = made
    ids, vectors = library.faces.embeddings()
    for q in queries[:3]:
        found = rank(library, person(q), match_threshold=0.6, only_matches=True)
        near = np.linalg.norm(vectors - q, axis=1) <= 0.6
        assert sorted(top_ids(found)) == sorted(ids[near].tolist()) and all(m.match for m in found)


def test_an_erased_face_gets_no_template_when_described_later(tmp_path):
    vectors, _ = identity_clusters(10, queries=1)
    library = Library(str(tmp_path / "lib.db"), create=True)
    capture = add_capture(library, "a", vectors[:5])
    boxes = np.array([[0, 0, 40, 40], [50, 0, 90, 40]], np.float32)
    dets = Detections(boxes, np.full(2, 0.9, np.float32), np.repeat(boxes[:, None, :2] + 20, 5, axis=1))
    library.faces.replace(capture.id, np.zeros(2, np.int64), dets)   # a re-scan: the faces go...
    assert library.db.execute("SELECT COUNT(*) FROM face_blocks").fetchone()[0] == 0   # ...with their blocks
    first, second = (f.id for f in library.faces.undescribed(capture.id))
    library.faces.erase([first])   # forgotten while the scan describes
    library.faces.save_descriptions([(first, {}, vectors[5], None), (second, {}, vectors[6], None)])
    assert library.faces.embeddings()[0].tolist() == [second]


def test_a_library_without_its_key_lists_but_never_searches(made, tmp_path):
    library, _, queries = made
    warm = LibraryIndex(library.path)
    rank(library, person(queries[0]), top=3, index=warm)    # the templates are held in memory
    os.rename(library.path + ".key", tmp_path / "apart.key")
    keyless = Library(library.path)
    assert len(keyless.captures.all()) == 2 and len(keyless.faces.all(1)) == 3000
    for index in (warm, None):
        with pytest.raises(GigafaceError, match="encrypted"):
            rank(keyless, person(queries[0]), top=3, index=index)


@pytest.mark.parametrize("schema", [3, 4])
def test_an_older_library_is_migrated_on_open(made, schema):
    library, _, queries = made
    before = [top_ids(rank(library, person(q), top=10)) for q in queries[:3]]
    ids, vectors = library.faces.embeddings()
    key = library.key()
    library.close()
    con = sqlite3.connect(library.path, isolation_level=None)
    if schema == 3:   # also no listed column and no audit chain (test_governance has the real scans)
        drop_column(con, "faces", "listed")
        con.execute("ALTER TABLE searches DROP COLUMN chain")
        con.execute("DELETE FROM meta WHERE key = 'audit_head'")
    as_schema_4(con, key)
    if schema == 3:
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    assert con.execute("SELECT COUNT(*) FROM faces WHERE embedding IS NOT NULL").fetchone()[0] == 5000
    con.close()
    migrated = Library(library.path)
    assert migrated.meta("schema") == "5"
    columns = {r[1] for r in migrated.db.execute("PRAGMA table_info(faces)")}
    assert "embedding" not in columns and "block" in columns
    per_capture = migrated.db.execute("SELECT capture_id, faces FROM face_blocks ORDER BY id").fetchall()
    assert per_capture == [(1, 3000), (2, 2000)]
    again_ids, again = migrated.faces.embeddings()
    assert np.array_equal(ids, again_ids) and np.array_equal(vectors, again)
    assert [top_ids(rank(migrated, person(q), top=10)) for q in queries[:3]] == before
