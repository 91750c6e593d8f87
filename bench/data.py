"""The one way benchmarks and tests reach ../shared/data, and readers for what is in it.

The folder is `<repo>/../shared/data`; GIGAFACE_SHARED_DATA points elsewhere. A missing
folder or file raises MissingData with a reason that says what is absent and how to fix
it; tests turn that into a skip, benchmarks into a skipped section of the report.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WIDER_DIR = "wider_face_val_subset"
WIDER_GT = "wider_face_val_bbx_gt_subset.txt"
IDENTITY_SETS = ("face_recognition_examples", "deepface_identities")


class MissingData(Exception):
    """The shared real-data folder, or a file inside it, is not there."""


def shared_path(*parts: str) -> Path:
    override = os.environ.get("GIGAFACE_SHARED_DATA")
    base = Path(override) if override else REPO.parent / "shared" / "data"
    if not base.is_dir():
        how = "GIGAFACE_SHARED_DATA" if override else "the default location <repo>/../shared/data"
        raise MissingData(f"real test data not available: {base} (from {how}) is not a folder; "
                          "set GIGAFACE_SHARED_DATA to the shared data folder")
    path = base.joinpath(*parts)
    if not path.exists():
        raise MissingData(f"real test data not available: {path} is missing from the shared data folder")
    return path


@dataclass
class WiderImage:
    """One image with its official boxes: (N, 4) x, y, w, h and the `invalid` flag per face."""

    path: Path
    name: str  # event/file.jpg, as in the ground-truth file
    boxes: np.ndarray
    invalid: np.ndarray = field(repr=False)


def parse_wider_gt(text: str, images_dir: Path) -> list[WiderImage]:
    """The official wider_face_*_bbx_gt.txt format: path, count, then one line per face
    `x y w h blur expression illumination invalid occlusion pose` (an image with no face
    has a count of 0 and one line of zeros)."""
    lines = [l.strip() for l in text.splitlines()]
    out: list[WiderImage] = []
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        name, count = lines[i], int(lines[i + 1])
        rows = [list(map(int, l.split()[:10])) for l in lines[i + 2 : i + 2 + max(count, 1)]]
        i += 2 + max(count, 1)
        table = np.array(rows[:count], np.int64).reshape(-1, 10)
        out.append(WiderImage(images_dir / name, name, table[:, :4].astype(np.float32), table[:, 7] == 1))
    return out


def wider_images() -> list[WiderImage]:
    gt = shared_path(WIDER_DIR, WIDER_GT)
    images = parse_wider_gt(gt.read_text(), shared_path(WIDER_DIR, "WIDER_val", "images"))
    return [im for im in images if im.path.exists()]


@dataclass(frozen=True)
class IdentityPhoto:
    path: Path
    identity: str  # one person; photos of several people are left out


def identity_photos(sets: tuple[str, ...] = IDENTITY_SETS) -> list[IdentityPhoto]:
    """Single-person photos of the identity sets, labelled from each folder's identities.csv."""
    photos = []
    for name in sets:
        folder = shared_path(name)
        with open(shared_path(name, "identities.csv"), newline="") as f:
            for row in csv.DictReader(f):
                label = (row.get("identities") or row.get("identity_cluster") or "").strip()
                label = label.replace("(expected)", "").strip()
                if not label or label == "unlabelled" or ";" in label or not (folder / row["file"]).exists():
                    continue
                photos.append(IdentityPhoto(folder / row["file"], f"{name}:{label}"))
    return photos
