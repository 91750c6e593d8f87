"""Opt-in reveal: who may be shown unblurred in a capture's exports and public view.

Everyone is blurred unless they asked to be visible. A consent holds the embedding of the
person's own photo; in each frame, only the one face nearest to it is revealed, and only
when it is within the strict KEEP_THRESHOLD: a stranger shown is the costly mistake, so a
consent never reveals two faces of one frame, and erased faces are never revealed.
"""
from __future__ import annotations

import numpy as np

from .errors import GigafaceError
from .index import Consent, Library
from .search import KEEP_THRESHOLD, Reference


def add(library: Library, capture_id: int, ref: Reference, name: str, note: str = "") -> Consent:
    library.capture(capture_id)
    if not name.strip():
        raise GigafaceError("give the person's name (--name), so the consent can be found and withdrawn")
    return library.add_consent(capture_id, name.strip(), note.strip(), ref.embedding)


def revealed(library: Library, capture_id: int, threshold: float = KEEP_THRESHOLD) -> dict[int, int]:
    """{face id: consent id} of the faces shown unblurred in the capture's exports."""
    consents, templates = library.consent_embeddings(capture_id)
    if not consents:
        return {}
    ids, vectors = library.embeddings([capture_id])
    if not len(ids):
        return {}
    frame_of = {f.id: f.source for f in library.faces(capture_id)}
    frames = np.array([frame_of[int(i)] for i in ids])
    shown: dict[int, int] = {}
    for consent, template in zip(consents, templates):
        distances = np.linalg.norm(vectors - template, axis=1)
        for frame in np.unique(frames):
            in_frame = np.flatnonzero(frames == frame)
            best = in_frame[np.argmin(distances[in_frame])]
            if distances[best] <= threshold:
                shown[int(ids[best])] = consent.id
    return shown
