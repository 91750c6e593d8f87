"""Reference photos to embeddings: the largest face of each photo, bounded in size, and
photos received over the network decoded only in RAM, in worker processes for the service."""
from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pyvips

from gigaface.engine import describe as describing
from gigaface.engine.detect import detect_image, detect_largest
from gigaface.engine.detections import Detections
from gigaface.engine.detector import CenterFace
from gigaface.engine.plan import settings_for
from gigaface.engine.source import as_rgb8, error_text, open_sequential, probe
from gigaface.errors import GigafaceError
from gigaface.process import configure_process

REFERENCE_MAX_PIXELS = 100_000_000   # refused before decoding
# What a reference photo is shrunk to before detection: a selfie's face stays hundreds of
# pixels tall, far above the 150-px chip the descriptor works on.
REFERENCE_PIXELS = 4_000_000


@dataclass(frozen=True)
class Reference:
    path: str
    embedding: np.ndarray
    box: tuple[float, float, float, float]
    faces_in_photo: int


def detect_whole(path: str, detector: CenterFace | None = None, largest: bool = False
                 ) -> tuple[np.ndarray, Detections]:
    """Detect faces in a small photo, holding it in memory; returns (RGB pixels, detections).
    `largest`: only what finding its largest face takes (`detect_largest`), as a reference does."""
    detect = detect_largest if largest else detect_image
    dets = detect(path, settings_for("balanced"), detector, REFERENCE_MAX_PIXELS)
    pixels = as_rgb8(open_sequential(path)).numpy()
    return pixels, dets


def reference(path: str, detector: CenterFace | None = None, spare: str | None = None) -> Reference:
    """The embedding of the largest face in a reference photo (the one way a photo becomes a
    reference: the CLI, the Python API and the service's workers all come here). `spare`:
    a RAM file (`.v`) that the caller owns and removes, for the shrunk copy."""
    with bounded_photo(path, spare) as (photo, scale):
        pixels, dets = detect_whole(photo, detector, largest=True)
    if not len(dets):
        raise GigafaceError(f"{path}: no face found in the reference photo")
    areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
    i = int(np.argmax(areas))
    x1, y1, x2, y2 = map(float, dets.boxes[i])
    box = (x1, y1, x2 - x1, y2 - y1)
    x0, y0, rx1, ry1 = describing.region_box(box)
    x0, y0 = max(0, x0), max(0, y0)
    region = pixels[y0:ry1, x0:rx1]
    chip = describing.cut_chip(region, (box[0] - x0, box[1] - y0, box[2], box[3]),
                               dets.landmarks[i] - [x0, y0])
    return Reference(path, describing.embed(chip.chip[None])[0], tuple(v / scale for v in box), len(dets))


@contextmanager
def bounded_photo(path: str, spare: str | None = None) -> Iterator[tuple[str, float]]:
    """The photo, or a copy of it shrunk to REFERENCE_PIXELS, and the scale of that copy.

    A reference needs one face at a size the 150-px descriptor chip can use, so detecting
    over a 25-MP original only costs time and memory (13 s and 340 MB for a black 25-MP
    JPEG). libvips' thumbnail shrinks on load (JPEGs decode at 1/2-1/8) and the copy is
    written to RAM, removed when done: the photo is never copied to disk.
    """
    info = probe(path, REFERENCE_MAX_PIXELS)
    pixels = info.width * info.height
    if pixels <= REFERENCE_PIXELS:
        yield path, 1.0
        return
    scale = math.sqrt(REFERENCE_PIXELS / pixels)
    width, height = max(1, int(info.width * scale)), max(1, int(info.height * scale))
    try:
        # no_rotate: the same pixel frame as an unshrunk photo, whose orientation tag is ignored too
        small = as_rgb8(pyvips.Image.thumbnail(path, width, height=height, size="down", no_rotate=True,
                                               fail_on="truncated")).copy()
    except pyvips.Error as exc:
        raise GigafaceError(f"{path}: not an image that libvips can read ({error_text(exc)})") from None
    # A .v file keeps its metadata: the original's loader name would have the copy opened
    # with JPEG shrink-on-load options that libvips' own format does not take.
    small.remove("vips-loader")
    with nullcontext(spare) if spare else ram_file(suffix=".v") as copy:
        try:
            small.write_to_file(copy)
        except pyvips.Error as exc:
            raise GigafaceError(f"{path}: cannot be read ({error_text(exc)})") from None
        try:
            yield copy, small.width / info.width
        except GigafaceError as exc:
            raise GigafaceError(str(exc).replace(copy, path)) from None


# Photos received over the network are decoded from RAM: a tmpfs file with a name of its
# own (libvips caches loads by file name, so a reused name could return another photo).
RAM_FOLDER = "/dev/shm"


@contextmanager
def ram_file(data: bytes | None = None, suffix: str = "") -> Iterator[str]:
    """A new file in RAM (tmpfs) holding `data`, removed on exit however the block ends.
    Without /dev/shm (not Linux), the system's temporary folder, private to this user."""
    folder = RAM_FOLDER if os.path.isdir(RAM_FOLDER) else None
    # The pid in the name says whose file it is (a server's, a command's) to anyone looking.
    fd, path = tempfile.mkstemp(prefix=f"gigaface-ref-{os.getpid()}-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data)
        yield path
    finally:
        os.remove(path)


def reference_from_bytes(name: str, data: bytes, detector: CenterFace | None = None) -> Reference:
    """The embedding of the largest face in a photo given as bytes; the photo never
    touches the disk, and is gone when this returns."""
    _require_ram()
    with ram_file(data) as scratch, _named(scratch, name):
        ref = reference(scratch, detector)
    return Reference(name, ref.embedding, ref.box, ref.faces_in_photo)


def _require_ram() -> None:
    if not os.path.isdir(RAM_FOLDER):
        raise GigafaceError(f"{RAM_FOLDER} is missing: reference photos are only decoded in RAM")


@contextmanager
def _named(scratch: str, name: str) -> Iterator[None]:
    """Errors name the photo as the client did, never the RAM file."""
    try:
        yield
    except GigafaceError as exc:
        raise GigafaceError(str(exc).replace(scratch, name)) from None


class ReferencePool:
    """Reference photos to embeddings in worker processes, for the service. In the server's
    own process dlib holds the GIL for ~150 ms a face, stalling every other request, and one
    shared detector would serialise the searches; here each worker has its own models.

    The parent owns the photo: it writes the bytes to a RAM file, hands the worker its
    name (and that of a spare one for a shrunk copy) and removes both whatever happens,
    so a worker that dies leaves nothing behind. A
    pool whose worker died (killed, out of memory) is broken for good: it is replaced and
    the photo tried once more.
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or min(2, os.cpu_count() or 1))
        self.lock = threading.Lock()
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_reference_worker, initargs=(os.getpid(),))

    def reference(self, name: str, data: bytes) -> Reference:
        _require_ram()
        with ram_file(data) as scratch, ram_file(suffix=".v") as spare, _named(scratch, name):
            ref = self._in_a_worker(scratch, spare)
        return Reference(name, ref.embedding, ref.box, ref.faces_in_photo)

    def _in_a_worker(self, path: str, spare: str) -> Reference:
        for _attempt in range(2):
            executor = self.executor
            try:
                return executor.submit(_reference_in_worker, path, spare).result()
            except BrokenProcessPool:
                self._replace(executor)
        raise GigafaceError(f"{path}: the photo could not be read (its worker process stopped twice)")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self.lock:
            if self.executor is broken:  # another request may have replaced it already
                self.executor = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self.lock:
            self.executor.shutdown(wait=True, cancel_futures=True)


_worker_detector: CenterFace | None = None


def _init_reference_worker(parent: int) -> None:
    """One BLAS thread, exit with the parent, models loaded before the first photo."""
    global _worker_detector
    # The pool's workers together use the cores; a BLAS would start a thread per core in each.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    configure_process()
    describing.shape_predictor()
    describing.descriptor()
    _worker_detector = CenterFace(streams=1)


def _exit_with_parent(parent: int) -> None:
    """A worker whose server was killed (kill -9) would otherwise wait forever for work."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _reference_in_worker(path: str, spare: str) -> Reference:
    return reference(path, _worker_detector, spare)
