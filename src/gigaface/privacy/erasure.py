"""Erasure on request: find a person's faces in every capture and forget them.

Their embeddings and crops are deleted for good (secure_delete zeroes the freed pages),
the faces stay as bare boxes marked `erased`, so every export and pyramid blurs them from
then on, and any consent that matches them is withdrawn. The caller rebuilds the files
of the captures named in the report (`privacy.refresh.refresh_outputs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.search import DEFAULT_MATCH_THRESHOLD, audited_rank, distances, person_embedding
from gigaface.references import Reference
from gigaface.search_index import LibraryIndex

# Erasure acts on every face under the threshold, for good: never looser than the search's
# own measured operating point (bench section 4: no impostor pair at 0.6, strangers start
# to match at 0.65). A stricter value is allowed; --dry-run shows what a value would erase.
MAX_FORGET_THRESHOLD = DEFAULT_MATCH_THRESHOLD


@dataclass
class CaptureErasure:
    capture: int
    faces: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    consents: list[int] = field(default_factory=list)


@dataclass
class ErasureReport:
    match_threshold: float
    captures: list[CaptureErasure]

    @property
    def faces(self) -> int:
        return sum(len(c.faces) for c in self.captures)

    def to_dict(self) -> dict:
        return {"threshold": self.match_threshold, "faces_erased": self.faces,
                "consents_removed": sum(len(c.consents) for c in self.captures),
                "captures": [c.__dict__ for c in self.captures]}


def check_forget_match_threshold(match_threshold: float) -> float:
    if not 0 < match_threshold <= MAX_FORGET_THRESHOLD:
        raise GigafaceError(f"the erasure threshold is more than 0 and at most {MAX_FORGET_THRESHOLD}"
                            f" (got {match_threshold:g}): a looser one would erase strangers too")
    return match_threshold


def forget(library: Library, refs: list[Reference], who: str, match_threshold: float = DEFAULT_MATCH_THRESHOLD,
           dry_run: bool = False, index: LibraryIndex | None = None) -> ErasureReport:
    """Erase every face within `match_threshold` of the person in `refs`, in every capture.

    The threshold is the search's, not the stricter reveal one: here a missed face is the
    costly mistake, and a stranger erased by error only becomes unsearchable and blurred.
    With `dry_run`, the report says what would be erased and withdrawn; nothing changes.
    """
    check_forget_match_threshold(match_threshold)
    # A dry run identifies the person as much as an erasure does: logged, but as what it was.
    purpose = "erasure-dry-run" if dry_run else "erasure"
    # Every face within the threshold, found exactly (a warm index too scans them all for this).
    matches = audited_rank(library, refs, None, who, match_threshold=match_threshold, purpose=purpose,
                           index=index, only_matches=True)
    by_capture: dict[int, CaptureErasure] = {}
    for m in matches:
        entry = by_capture.setdefault(m.face.capture, CaptureErasure(m.face.capture))
        entry.faces.append(m.face.id)
        entry.boxes.append([round(v, 1) for v in m.face.box])
    target = person_embedding(refs)
    for capture in library.captures.all():
        consents, templates = library.consents.embeddings(capture.id)
        for consent, template in zip(consents, templates):
            if distances(template, target) <= match_threshold:
                if not dry_run:
                    library.consents.remove(consent.id, who=who)
                by_capture.setdefault(capture.id, CaptureErasure(capture.id)).consents.append(consent.id)
    if not dry_run:
        library.faces.erase([m.face.id for m in matches])
    return ErasureReport(match_threshold, [by_capture[c] for c in sorted(by_capture)])
