"""The small Python API:

    cap = gigaface.scan("crowd.jpg", db="library.db")
    cap.faces                      # every face, as gigaface.Face records
    cap.find("me.jpg")             # ranked gigaface.Match records
    gigaface.find("library.db", "me.jpg")   # the person in every capture of the library
    cap.anonymise("public.jpg")    # everyone blurred
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from gigaface.privacy import consent
from gigaface.process import configure_process
from gigaface.engine import describe as describing
from gigaface.privacy.anonymise import anonymise as _anonymise
from gigaface.engine.detector import CenterFace
from gigaface.engine.runtime import choose
from gigaface.errors import GigafaceError
from gigaface.library.records import CaptureRecord, Face
from gigaface.library.store import Library
from gigaface.engine.plan import settings_for
from gigaface.engine.reporter import Reporter
from gigaface.ingest import ScanResult, scan_path
from gigaface.search import DEFAULT_MATCH_THRESHOLD, KEEP_MATCH_THRESHOLD, Match, audited_rank
from gigaface.library.audit_chain import local_user
from gigaface.references import Reference, reference
from gigaface.search_index import LibraryIndex
from gigaface.engine.source import DEFAULT_MAX_PIXELS

PhotoArg = str | Sequence[str]


@dataclass
class Capture:
    """One scanned image (or camera-array capture) in a library."""

    library: Library
    record: CaptureRecord
    result: ScanResult | None = None

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def source(self) -> str:
        return self.record.source

    @property
    def faces(self) -> list[Face]:
        return self.library.faces.all(self.id)

    def find(self, photo: PhotoArg, top: int | None = None, threshold: float = DEFAULT_MATCH_THRESHOLD) -> list[Match]:
        refs = references([photo] if isinstance(photo, str) else list(photo))
        return audited_rank(self.library, refs, [self.id], local_user(), top=top, match_threshold=threshold,
                            index=warm_index(self.library))

    def anonymise(self, out: str, keep: PhotoArg = (), style: str = "blur",
                  threshold: float = KEEP_MATCH_THRESHOLD) -> int:
        """Write `out` with every face blurred except those matching the `keep` photos."""
        if self.record.kind != "image":
            raise GigafaceError("anonymise one frame at a time for camera-array captures: gigaface blur FRAME")
        return blur_image(self.library, self.record, out, [keep] if isinstance(keep, str) else list(keep),
                          style, threshold)


def find(db: str, photo: PhotoArg, captures: Sequence[int] | None = None, top: int | None = 20, offset: int = 0,
         threshold: float = DEFAULT_MATCH_THRESHOLD) -> list[Match]:
    """The person in the photo(s) among every capture of the library at `db` (or the given
    ones): ranks offset+1 .. offset+top. The library's templates stay loaded in this process
    for the next search (of any Capture of it too)."""
    configure_process()
    library = Library(db)
    for c in captures or ():
        library.captures.get(c)
    library.key()  # before the photos are read: a library without its key is never searched
    refs = references([photo] if isinstance(photo, str) else list(photo))
    return audited_rank(library, refs, list(captures) if captures else None, local_user(), top=top, offset=offset,
                        match_threshold=threshold, index=warm_index(library))


_warm: dict[str, LibraryIndex] = {}
_warm_lock = threading.Lock()


def warm_index(library: Library) -> LibraryIndex:
    """This process's index of a library file, shared by every object that opens it."""
    path = os.path.realpath(library.path)
    with _warm_lock:
        if path not in _warm:
            _warm[path] = LibraryIndex(path)
        return _warm[path]


def references(photos: list[str], detector: CenterFace | None = None) -> list[Reference]:
    detector = detector or CenterFace()
    return [reference(p, detector) for p in photos]


def blur_image(library: Library, capture: CaptureRecord, out: str, keep: list[str], style: str,
               threshold: float, frame_path: str | None = None, detector: CenterFace | None = None) -> int:
    configure_process()
    index = next((i for i, f in enumerate(capture.frames) if frame_path is None or f.path == frame_path), None)
    if index is None:
        raise GigafaceError(f"{frame_path}: not a frame of capture {capture.id}")
    frame = capture.frames[index]
    # Every box down to the blur point: unlisted faces are blurred as much as listed ones.
    faces = [f for f in library.faces.all(capture.id, include_unlisted=True) if f.frame == index]
    kept = set(consent.revealed(library, capture.id))  # people on the capture's consent list
    for ref in references(keep, detector) if keep else []:  # each photo is a person of its own
        matches = audited_rank(library, [ref], [capture.id], local_user(), match_threshold=threshold, purpose="keep",
                               only_matches=True)
        kept |= {m.face.id for m in matches}
    kept -= {f.id for f in faces if f.erased}
    boxes = [(f.box[0] - frame.x, f.box[1] - frame.y, f.box[2], f.box[3]) for f in faces if f.id not in kept]
    return _anonymise(frame.path, boxes, out, style)


def scan(path: str, db: str = "gigaface.db", preset: str = "balanced", min_face: float | None = None,
         min_embed: float | None = None, resume: bool = False, threads: int | None = None,
         max_pixels: int = DEFAULT_MAX_PIXELS, reporter: Reporter | None = None, frames_anywhere: bool = False,
         runtime: str | None = None, precision: str | None = None, cluster: str | None = None) -> Capture:
    """Scan an image (or a camera-array manifest .json) into the library at `db`. Another
    scan of the same capture (any process) is waited for, then found done. Everything runs
    in this process (threads, no worker processes), so a plain script or a notebook cell
    needs no `if __name__ == "__main__":` guard. `runtime`: auto, onnxruntime or openvino.
    `cluster`: a Ray cluster's address (HOST:PORT, ray://HOST:10001 or auto) to detect and
    describe on, this process writing the library (gigaface[ray])."""
    configure_process()
    settings = settings_for(preset, min_face, min_embed=min_embed)
    if threads is not None and threads < 1:
        raise GigafaceError(f"threads is at least 1 (got {threads})")
    if max_pixels < 1:
        raise GigafaceError(f"max_pixels is at least 1 (got {max_pixels})")
    if cluster is not None:
        return _scan_on_cluster(path, db, settings, cluster, resume, max_pixels, reporter, frames_anywhere,
                                runtime, precision)
    chosen = choose(runtime, precision)
    library = Library(db, create=True)
    with describing.Describer(chosen, threads) as describer:
        result = scan_path(library, path, settings, detector=CenterFace(settings.tile, runtime=chosen),
                           describer=describer, resume=resume, reporter=reporter, max_pixels=max_pixels,
                           frames_anywhere=frames_anywhere)
    return Capture(library, result.capture, result)


def _scan_on_cluster(path, db, settings, cluster, resume, max_pixels, reporter, frames_anywhere, runtime,
                     precision) -> Capture:
    from gigaface.cluster.connect import cluster_address
    from gigaface.cluster.scan import input_files, on_cluster, scan_one

    address = cluster_address(cluster) or "auto"
    with on_cluster(address, input_files([path], max_pixels, frames_anywhere), runtime, precision,
                    settings.tile) as pool:
        library = Library(db, create=True)
        result = scan_one(library, path, settings, pool, resume=resume, reporter=reporter, max_pixels=max_pixels,
                          frames_anywhere=frames_anywhere)
    return Capture(library, result.capture, result)


def open_capture(db: str, capture_id: int | None = None) -> Capture:
    """A capture of an existing library (the latest one when no id is given)."""
    library = Library(db)
    captures = library.captures.all()
    if not captures:
        raise GigafaceError(f"{db}: the library has no captures yet")
    record = captures[-1] if capture_id is None else library.captures.get(capture_id)
    return Capture(library, record)
