"""Find a person: reference embeddings -> one person embedding -> faces ranked by distance.

The one place distances between templates are taken: ranking, consent (who is revealed)
and erasure (who is forgotten) all use `person_embedding` and `distances`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gigaface.errors import GigafaceError
from gigaface.library.records import Face
from gigaface.library.store import Library
from gigaface.output.contact_sheet import Cell, write_contact_sheet
from gigaface.references import Reference
from gigaface.search_index import LibraryIndex, loaded

# Measured in bench/report.md (section 4) on 64 photos of 15 people, faces shrunk to
# 64/48/32/24 px against full-size references: the largest threshold (0.05 steps) that
# accepted no impostor pair at any size. At 0.6, 99% of genuine pairs match at 48 px and
# above, 94% at 32 px, 78% at 24 px; at 0.65 strangers start to match (0.1-0.5%).
DEFAULT_MATCH_THRESHOLD = 0.6
# Revealing a face is the costly mistake: a stranger shown is worse than a consenting
# person blurred. In the demo stadium, 0.6 let 17 strangers through; 0.5 none.
KEEP_MATCH_THRESHOLD = 0.5
# Distances between dlib descriptors of different people rarely pass 1.0; a threshold
# beyond it marks everyone a match and means nothing.
MAX_MATCH_THRESHOLD = 1.0


def check_match_threshold(match_threshold: float, maximum: float = MAX_MATCH_THRESHOLD) -> float:
    """A match threshold (a distance between embeddings) a person can mean, or a clear error."""
    if not 0 < match_threshold <= maximum:
        raise GigafaceError(f"the match threshold is a distance more than 0 and at most {maximum:g}"
                            f" (got {match_threshold:g})")
    return match_threshold


@dataclass(frozen=True)
class Match:
    rank: int
    face: Face
    distance: float
    match: bool

    def to_dict(self) -> dict:
        return {"rank": self.rank, "face_id": self.face.id, "capture": self.face.capture,
                "source": self.face.source, "box": [round(v, 1) for v in self.face.box],
                "distance": round(self.distance, 4), "match": self.match,
                "quality": self.face.quality}


def person_embedding(refs: Sequence[Reference]) -> np.ndarray:
    """One embedding for a person seen in several photos: the mean of their references."""
    if not refs:
        raise GigafaceError("give at least one reference photo")
    return np.mean([r.embedding for r in refs], axis=0)


def distances(vectors: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of `vectors` (or one vector) to `target`: what every
    match threshold in gigaface is measured in."""
    return np.linalg.norm(np.asarray(vectors) - target, axis=-1)


class Ranking(list):
    """Matches in rank order (a list, as it always was), and what a page needs besides:
    how many faces were ranked in all, and how (exact or ivf)."""

    def __init__(self, matches: Iterable[Match] = (), searched: int = 0, method: str = "exact",
                 index_ms: float = 0.0):
        super().__init__(matches)
        self.searched, self.method = searched, method
        self.index_ms = index_ms   # in the index (loading or syncing it, and ranking)


def rank(library: Library, refs: list[Reference], capture_ids: list[int] | None = None,
         top: int | None = None, match_threshold: float = DEFAULT_MATCH_THRESHOLD, offset: int = 0,
         index: LibraryIndex | None = None, only_matches: bool = False) -> Ranking:
    """Faces of the captures (None: all) ordered by distance to the person (the mean of the
    references): ranks offset+1 .. offset+top, or with `only_matches` every face within
    `match_threshold`, found exactly (what erasure and `keep` act on). A long-lived
    process passes its warm `index`; without one the library's blocks are loaded for
    this search alone."""
    target = person_embedding(refs)
    started = time.perf_counter()
    held = index.synced(library) if index is not None else loaded(library, capture_ids)
    if only_matches:
        hits = held.within(target, match_threshold, capture_ids)
    else:
        hits = held.search(target, capture_ids, offset=offset, limit=top)
    index_ms = (time.perf_counter() - started) * 1000
    faces = {f.id: f for f in library.faces.by_id([int(i) for i in hits.ids])}
    # A face erased between the ranking and this read is left out, not shown.
    found = [(int(i), float(d)) for i, d in zip(hits.ids, hits.distances) if int(i) in faces and not faces[int(i)].erased]
    return Ranking([Match(offset + k + 1, faces[i], d, d <= match_threshold) for k, (i, d) in enumerate(found)],
                   hits.total, hits.method, index_ms)


def audited_rank(library: Library, refs: list[Reference], capture_ids: list[int] | None, who: str,
                 top: int | None = None, match_threshold: float = DEFAULT_MATCH_THRESHOLD, purpose: str = "search",
                 offset: int = 0, index: LibraryIndex | None = None, only_matches: bool = False) -> Ranking:
    """`rank`, recorded in the library's audit log: when, who, which captures, a hash of
    the reference embedding and how many results. Every search goes through here."""
    matches = rank(library, refs, capture_ids, top=top, match_threshold=match_threshold, offset=offset,
                   index=index, only_matches=only_matches)
    searched = capture_ids if capture_ids is not None else [c.id for c in library.captures.all()]
    library.audit.record_search(who, purpose, searched, person_embedding(refs),
                          len(matches), sum(m.match for m in matches))
    return matches


def contact_sheet(library: Library, matches: list[Match], out: str, columns: int = 6) -> str:
    """A PNG of each match's crop with its rank, distance and place in the panorama."""
    cells = []
    for m in matches:
        x, y, w, h = m.face.box
        lines = [f"#{m.rank}  d={m.distance:.3f}{'  MATCH' if m.match else ''}",
                 f"capture {m.face.capture} face {m.face.id}", f"at {int(x)},{int(y)} ({int(w)}px)"]
        cells.append(Cell(library.faces.crop(m.face.id), lines, m.match))
    return write_contact_sheet(cells, out, columns)
