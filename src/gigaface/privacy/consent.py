"""Opt-in reveal: who may be shown unblurred in a capture's exports and public view.

Everyone is blurred unless they asked to be visible. A consent holds the embedding of the
person's own photo; in each frame, only the one face nearest to it is revealed, and only
when it is within the strict KEEP_MATCH_THRESHOLD: a stranger shown is the costly mistake, so a
consent never reveals two faces of one frame, and erased faces are never revealed.
"""
from __future__ import annotations

import numpy as np

from gigaface.library.audit_chain import local_user
from gigaface.errors import GigafaceError
from gigaface.library.records import Consent
from gigaface.library.store import Library
from gigaface.search import KEEP_MATCH_THRESHOLD, distances
from gigaface.references import Reference


def add(library: Library, capture_id: int, ref: Reference, name: str, note: str = "",
        who: str | None = None) -> Consent:
    """Add a consent; the audit log records who added it (default: this computer's user),
    the faces compared and how many it reveals."""
    library.captures.get(capture_id)
    if not name.strip():
        raise GigafaceError("give the person's name (--name), so the consent can be found and withdrawn")
    ids, vectors, frames = _embedded_faces(library, capture_id)
    shown = _nearest_per_frame(ref.embedding, vectors, frames, KEEP_MATCH_THRESHOLD)
    return library.consents.add(capture_id, name.strip(), note.strip(), ref.embedding, who=who or local_user(),
                               compared=len(ids), shown=len(shown))


def remove(library: Library, consent_id: int, who: str | None = None) -> Consent:
    """Withdraw a consent, recorded in the audit log."""
    return library.consents.remove(consent_id, who=who or local_user())


def revealed(library: Library, capture_id: int, match_threshold: float = KEEP_MATCH_THRESHOLD) -> dict[int, int]:
    """{face id: consent id} of the faces shown unblurred in the capture's exports."""
    consents, templates = library.consents.embeddings(capture_id)
    if not consents:
        return {}
    ids, vectors, frames = _embedded_faces(library, capture_id)
    shown: dict[int, int] = {}
    for consent, template in zip(consents, templates):
        for best in _nearest_per_frame(template, vectors, frames, match_threshold):
            shown[int(ids[best])] = consent.id
    return shown


def _embedded_faces(library: Library, capture_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face ids, embeddings, frame of each) of the capture's searchable faces."""
    ids, vectors = library.faces.embeddings([capture_id])
    frame_of = {f.id: f.frame for f in library.faces.all(capture_id)} if len(ids) else {}
    return ids, vectors, np.array([frame_of[int(i)] for i in ids], np.int64)


def _nearest_per_frame(template: np.ndarray, vectors: np.ndarray, frames: np.ndarray, match_threshold: float) -> list[int]:
    """Indices of the one face per frame nearest to `template`, where within `match_threshold`."""
    if not len(vectors):
        return []
    far = distances(vectors, template)
    found = []
    for frame in np.unique(frames):
        in_frame = np.flatnonzero(frames == frame)
        best = in_frame[np.argmin(far[in_frame])]
        if far[best] <= match_threshold:
            found.append(int(best))
    return found
