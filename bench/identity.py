"""Identity verification and the match threshold, on the labelled identity photos.

    python -m bench.identity --out bench/out

Each photo's largest face is described the way `references.reference` does it (detector box and
landmarks, dlib 5-point alignment, a 150x150 chip, the dlib ResNet descriptor). To ask how
small a face can be and still be found, the whole photo is also shrunk (INTER_AREA) until
that face is N px (the box's larger side, the engine's `quality.size`) and the shrunk face
is described from the shrunk pixels with the box and landmarks scaled alike. The detector is
not re-run on the small image: its recall at small sizes is measured elsewhere, and this
isolates the descriptor.

Pairs. At native size, every unordered pair of photos. At N px, a small face against the
native description of every other photo: the realistic search, a good reference photo as
the query and a small face in a crowd as the target; these pairs are ordered, (A small, B
native) and (B small, A native) are different pairs. A pair of one person is genuine, of
two people an impostor. Pairs of the same source frame are left out: byte-identical files
are dropped outright, and files that are the same frame re-encoded, resized, cropped or
mirrored (SAME_FRAME) are never paired with each other, since they would score as the same
photo, not the same person.

A face is accepted when its distance is <= the threshold, as in `search.rank`. TAR is the
share of genuine pairs accepted, FAR the share of impostor pairs accepted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench.data import IdentityPhoto, MissingData, identity_photos, shared_path
from gigaface.engine import describe as describing
from gigaface.search import DEFAULT_MATCH_THRESHOLD, KEEP_MATCH_THRESHOLD
from gigaface.references import detect_whole

SIZES: tuple[int | None, ...] = (None, 64, 48, 32, 24)  # None: the face as photographed
TARGET_FARS = (1e-2, 1e-3)
FIXED_THRESHOLDS = (0.5, 0.55, 0.6, 0.65)
# The most impostors the default threshold may accept, at any face size (see `recommend`).
FAR_BUDGET = 1e-3
# Pairs of different frames this close at native size are listed for a person to look at:
# below what two different photos of one person measured here (0.25 at the closest).
SUSPECT_DISTANCE = 0.2

# Files that show the same source frame, as paths inside the shared data folder, checked by
# eye. Distance alone cannot find them: re-encodings measure 0.04-0.18, the mirror 0.22 and
# the crops up to 0.34, while two different photos of one person can measure 0.25.
# Byte-identical copies are found by hashing instead.
SAME_FRAME = (
    # The official portrait: re-encoded at four resolutions, downscaled, and cropped twice.
    ("face_recognition_examples/obama.jpg", "face_recognition_examples/obama_small.jpg",
     "face_recognition_examples/obama-240p.jpg", "face_recognition_examples/obama-480p.jpg",
     "face_recognition_examples/obama-720p.jpg", "face_recognition_examples/obama-1080p.jpg",
     "face_recognition_examples/test_images/obama_partial_face.jpg",
     "face_recognition_examples/test_images/obama_partial_face2.jpg"),
    # The RGBA PNG is obama2.jpg converted.
    ("face_recognition_examples/obama2.jpg", "face_recognition_examples/test_images/32bit.png"),
    # A horizontally mirrored, enlarged copy.
    ("deepface_identities/img11.jpg", "deepface_identities/img11_reflection.jpg"),
)


# --- metrics: plain functions of two distance arrays -------------------------------------

def rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) when a distance <= threshold is accepted."""
    return float(np.mean(np.asarray(genuine) <= threshold)), float(np.mean(np.asarray(impostor) <= threshold))


def _sweep(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every threshold that changes a decision (the observed distances), with TAR and FAR.

    -inf comes first, so "accept nothing" is among the choices.
    """
    gen, imp = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([gen, imp]))])
    tar = np.searchsorted(gen, thresholds, side="right") / len(gen)
    far = np.searchsorted(imp, thresholds, side="right") / len(imp)
    return thresholds, tar, far


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict:
    """The best TAR with FAR <= far, and the largest threshold that gives it.

    The threshold is an observed distance: accepting d <= threshold reaches that TAR, and
    so does any threshold up to the next impostor distance. With fewer than 1/far impostor
    pairs, no impostor at all may be accepted, so the answer is TAR at FAR 0 and
    `resolved` is False.
    """
    thresholds, tar, rate = _sweep(genuine, impostor)
    i = int(np.nonzero(rate <= far)[0][-1])  # FAR grows with the threshold; -inf always fits
    return {"tar": float(tar[i]), "threshold": None if math.isinf(thresholds[i]) else float(thresholds[i]),
            "far": float(rate[i]), "resolved": len(impostor) * far >= 1,
            "impostors_needed": math.ceil(1 / far)}


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float | None]:
    """(equal error rate, its threshold): where FAR and FRR = 1 - TAR meet.

    On finite samples they rarely meet exactly; this takes the threshold where they are
    closest and reports their mean there.
    """
    thresholds, tar, far = _sweep(genuine, impostor)
    frr = 1 - tar
    gap = np.abs(far - frr)
    i = int(np.argmin(gap + 1e-12 * (far + frr)))  # on a tie in the gap, the fewer errors
    return float((far[i] + frr[i]) / 2), None if math.isinf(thresholds[i]) else float(thresholds[i])


def evaluate(genuine: np.ndarray, impostor: np.ndarray, thresholds=FIXED_THRESHOLDS,
             fars=TARGET_FARS) -> dict:
    """Everything the report says about one set of pairs."""
    value, at = eer(genuine, impostor)
    return {
        "genuine_pairs": len(genuine), "impostor_pairs": len(impostor),
        "genuine_mean": float(np.mean(genuine)), "impostor_mean": float(np.mean(impostor)),
        "genuine_max": float(np.max(genuine)), "impostor_min": float(np.min(impostor)),
        "tar_at_far": {f"{far:g}": tar_at_far(genuine, impostor, far) for far in fars},
        "eer": value, "eer_threshold": at,
        "at_threshold": {f"{t:g}": dict(zip(("tar", "far"), rates(genuine, impostor, t))) for t in thresholds},
    }


# --- faces -------------------------------------------------------------------------------

@dataclass
class Photo:
    name: str  # path inside the shared data folder
    identity: str
    frame: str  # photos with the same frame are never paired
    native_size: float = 0.0  # px, larger side of the detector's box
    faces_in_photo: int = 0
    embeddings: dict = field(default_factory=dict)  # size (None = native) -> (128,) float32


def describe_at(pixels: np.ndarray, box: np.ndarray, landmarks: np.ndarray, size: int | None) -> np.ndarray:
    """The embedding of one face, after shrinking the whole image so the face is `size` px.

    The description itself is `references.reference`'s: the region around the box, dlib's
    alignment and chip, the descriptor. A face already no bigger than `size` is not enlarged.
    """
    x1, y1, x2, y2 = map(float, box)
    if size is not None and size < max(x2 - x1, y2 - y1):
        f = size / max(x2 - x1, y2 - y1)
        h, w = pixels.shape[:2]
        small_w, small_h = max(1, round(w * f)), max(1, round(h * f))
        pixels = cv2.resize(pixels, (small_w, small_h), interpolation=cv2.INTER_AREA)
        scale = np.array([small_w / w, small_h / h], np.float32)  # per axis, as rounded
        x1, x2, y1, y2 = x1 * scale[0], x2 * scale[0], y1 * scale[1], y2 * scale[1]
        landmarks = landmarks * scale
    face = (x1, y1, x2 - x1, y2 - y1)
    x0, y0, rx1, ry1 = describing.region_box(face)
    x0, y0 = max(0, x0), max(0, y0)
    chip = describing.cut_chip(pixels[y0:ry1, x0:rx1], (face[0] - x0, face[1] - y0, face[2], face[3]),
                               landmarks - [x0, y0])
    return describing.embed(chip.chip[None])[0]


def frame_groups(photos: list[IdentityPhoto], base: Path) -> tuple[list[tuple[IdentityPhoto, str, str]], list[str]]:
    """[(photo, name, frame)] without byte-identical copies, and the names of those dropped."""
    group_of = {name: group[0] for group in SAME_FRAME for name in group}
    kept, dropped, seen = [], [], {}
    for p in photos:
        name = p.path.relative_to(base).as_posix()
        digest = hashlib.sha256(p.path.read_bytes()).hexdigest()
        if digest in seen:
            dropped.append(f"{name} (= {seen[digest]})")
            continue
        seen[digest] = name
        kept.append((p, name, group_of.get(name, name)))
    return kept, dropped


def describe_photos(photos: list[IdentityPhoto], sizes=SIZES, log=print) -> tuple[list[Photo], list[str], list[str]]:
    """Detect once per photo, describe its largest face at every size (the cache of this run).

    Returns the photos, the byte-identical copies dropped, and photos with no face.
    """
    from gigaface.engine.detector import CenterFace

    base = shared_path()
    kept, dropped = frame_groups(photos, base)
    detector = CenterFace()
    out, faceless = [], []
    for k, (p, name, frame) in enumerate(kept):
        pixels, dets = detect_whole(str(p.path), detector, largest=True)
        if not len(dets):
            faceless.append(name)
            continue
        # The largest face, as `references.reference` picks it; in the photos with several faces
        # it is the labelled person (their genuine distances are ordinary).
        i = int(np.argmax((dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])))
        box, landmarks = dets.boxes[i], dets.landmarks[i]
        photo = Photo(name, p.identity, frame, float(max(box[2] - box[0], box[3] - box[1])), len(dets))
        photo.embeddings = {s: describe_at(pixels, box, landmarks, s) for s in sizes}
        out.append(photo)
        if log and (k + 1) % 16 == 0:
            log(f"  described {k + 1}/{len(kept)} photos")
    return out, dropped, faceless


def pair_distances(photos: list[Photo], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) distances; see the module docstring for which pairs."""
    native = np.stack([p.embeddings[None] for p in photos])
    probe = np.stack([p.embeddings[size] for p in photos])
    dist = np.linalg.norm(probe[:, None, :] - native[None, :, :], axis=2)
    ident = np.array([p.identity for p in photos])
    frame = np.array([p.frame for p in photos])
    usable = frame[:, None] != frame[None, :]  # also leaves out a photo against itself
    if size is None:
        usable &= np.triu(np.ones_like(usable), 1).astype(bool)  # d(A,B) = d(B,A): count once
    same = ident[:, None] == ident[None, :]
    return dist[usable & same], dist[usable & ~same]


def suspects(photos: list[Photo]) -> list[dict]:
    """Cross-frame pairs at native size so close they may be one frame we do not know of."""
    found = []
    for i, a in enumerate(photos):
        for b in photos[i + 1:]:
            d = float(np.linalg.norm(a.embeddings[None] - b.embeddings[None]))
            if a.frame != b.frame and d < SUSPECT_DISTANCE:
                found.append({"a": a.name, "b": b.name, "distance": round(d, 4)})
    return found


# --- the threshold -----------------------------------------------------------------------

def recommend(by_size: dict, people: int, candidates=FIXED_THRESHOLDS,
              far_budget: float = FAR_BUDGET) -> tuple[float, str]:
    """The default search threshold, and a paragraph saying why, from the measured rates.

    Search ranks faces by distance; the threshold only marks which of them count as the
    person. Missing the person is the failure that matters there, so the rule takes the most
    recall (the largest threshold) whose FAR stays within `far_budget` at every face size.
    Candidates are 0.05 apart: a few people do not support tuning finer than that.
    """
    def at(row, t):
        return row["at_threshold"][f"{t:g}"]

    def worst_far(t):
        return max(at(r, t)["far"] for r in rows)

    rows = list(by_size.values())
    ok = [t for t in sorted(candidates) if worst_far(t) <= far_budget]
    chosen = ok[-1] if ok else min(candidates)
    lower = [t for t in sorted(candidates) if t < chosen]
    higher = [t for t in sorted(candidates) if t > chosen]
    impostors = sum(r["impostor_pairs"] for r in rows)
    accepted = sum(round(at(r, chosen)["far"] * r["impostor_pairs"]) for r in rows)
    tars = ", ".join(f"{_pct(at(r, chosen)['tar'])} at {r['label']}" for r in rows)
    text = (f"**Recommended default: {chosen:g}.** Search ranks every face by distance and the threshold "
            "only marks the ones that count as the person, so a missed person is the costly error there, "
            "while a stranger marked further down the list costs a glance (revealing a face is what must "
            f"not err, and it uses the stricter KEEP_MATCH_THRESHOLD {KEEP_MATCH_THRESHOLD:g}). The rule: the largest "
            f"threshold, on a 0.05 grid, whose FAR stays ≤ {far_budget:g} at every face size (about the finest "
            f"FAR our impostor pairs resolve; {far_budget * 10_000:g} strangers marked per 10,000 faces of a "
            f"crowd). At {chosen:g} the genuine pairs accepted are {tars}, and {accepted} of {impostors} "
            "impostor pairs over all sizes are accepted.")
    if not ok:
        text += " No candidate meets that FAR here, so this is the strictest one."
    closest = min(r["impostor_min"] for r in rows)
    text += (f" The closest impostor pair at any size measured {closest:.3f}: "
             + (f"{chosen:g} sits {closest - chosen:.3f} below the impostors' edge, with no room to spare."
                if closest > chosen else f"{chosen:g} already reaches into the impostors."))
    if lower:
        lo = lower[-1]
        loss = ", ".join(f"{100 * (at(r, chosen)['tar'] - at(r, lo)['tar']):.1f} at {r['label']}" for r in rows)
        gain = ("nothing measurable, since no impostor pair is accepted at "
                f"{chosen:g} already" if worst_far(chosen) == 0 else
                f"a worst FAR of {_pct(worst_far(lo), 2)} instead of {_pct(worst_far(chosen), 2)}")
        text += f" A lower {lo:g} would buy {gain}, and cost TAR points: {loss}."
    if higher:
        hi = higher[0]
        text += (f" A higher {hi:g} would find more small faces ("
                 + ", ".join(f"{_pct(at(r, hi)['tar'])} at {r['label']}" for r in rows[-2:])
                 + f") but accepts impostors, FAR up to {_pct(worst_far(hi), 2)}; our impostors are only "
                 f"{people} people, far fewer lookalikes than a real crowd holds, so the true FAR there "
                 "is likely higher still.")
    return chosen, text


# --- report ------------------------------------------------------------------------------

def size_label(size: int | None) -> str:
    return "native" if size is None else f"{size} px"


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _thr(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(result: dict) -> str:
    """The two tables: operating points per face size, and rates at the fixed thresholds."""
    rows = result["sizes"]
    lines = [
        ("| face size | genuine pairs | impostor pairs | genuine mean | impostor mean "
         "| TAR @ FAR 1e-2 (thr) | TAR @ FAR 1e-3 (thr) | EER (thr) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = []
        for far in ("0.01", "0.001"):
            t = r["tar_at_far"][far]
            cells.append(f"{_pct(t['tar'])} ({_thr(t['threshold'])}){'' if t['resolved'] else ' †'}")
        # With no overlap every threshold between the two distributions gives EER 0: show the gap.
        eer_at = (f"{r['genuine_max']:.3f}-{r['impostor_min']:.3f}" if r["genuine_max"] < r["impostor_min"]
                  else _thr(r["eer_threshold"]))
        lines.append(f"| {r['label']} | {r['genuine_pairs']} | {r['impostor_pairs']} "
                     f"| {r['genuine_mean']:.3f} | {r['impostor_mean']:.3f} | {cells[0]} | {cells[1]} "
                     f"| {_pct(r['eer'], 2)} ({eer_at}) |")
    lines += ["", "| face size | " + " | ".join(f"TAR / FAR (n) @ {t:g}" for t in result["fixed_thresholds"]) + " |",
              "|---|" + "---:|" * len(result["fixed_thresholds"])]
    for r in rows:
        cells = [f"{_pct(v['tar'])} / {_pct(v['far'], 2)} ({round(v['far'] * r['impostor_pairs'])})"
                 for v in r["at_threshold"].values()]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(result: dict) -> str:
    """How small a face can be, in words, from the numbers."""
    rows, t = result["sizes"], result["recommended_threshold"]
    native, smallest = rows[0], rows[-1]

    def tar(r, thr):
        return r["at_threshold"][f"{thr:g}"]["tar"]

    fine = [r for r in rows if tar(r, t) >= 0.95]
    short = [r for r in rows if tar(r, t) < 0.95]
    eer_at = ", ".join(f"{_thr(r['eer_threshold'])} at {r['label']}" for r in rows if r["eer"] > 0)
    text = (f"**How small can a face be?** Shrinking a face moves genuine distances up (mean "
            f"{native['genuine_mean']:.3f} native, {smallest['genuine_mean']:.3f} at {smallest['label']}) "
            f"while impostor distances barely move ({native['impostor_mean']:.3f} to "
            f"{smallest['impostor_mean']:.3f}): a small face is missed rather than taken for someone else")
    text += f", and the EER threshold climbs ({eer_at})." if eer_at else "."
    if fine:
        text += f" At {t:g}, TAR stays ≥ 95% down to {fine[-1]['label']}"
        text += ("; " + ", ".join(f"{_pct(tar(r, t))} at {r['label']}" for r in short) + ".") if short else "."
    return (text + f" The revealing threshold {KEEP_MATCH_THRESHOLD:g} is much stricter on small faces ("
            + ", ".join(f"{_pct(tar(r, KEEP_MATCH_THRESHOLD))} at {r['label']}" for r in rows)
            + "): a consenting person far from the camera will often stay blurred, the safe way to fail.")


def markdown(result: dict) -> str:
    d = result["data"]
    counts = sorted({r["impostor_pairs"] for r in result["sizes"]})
    few = min(round(1e-3 * n) for n in counts)
    parts = [
        "## 4. Identity verification and the threshold",
        "",
        (f"{d['photos']} single-person photos of {d['identities']} people "
         f"({', '.join(d['sets'])}); each photo's largest face, described as a reference photo is. "
         f"Native faces are {d['native_size_min']:.0f}-{d['native_size_max']:.0f} px (median "
         f"{d['native_size_median']:.0f}). Small sizes: the whole photo shrunk (INTER_AREA) until the "
         "face is N px (larger box side), the face described from those pixels without re-detecting "
         "(this measures the descriptor, not the detector), and compared with the native description "
         "of every other photo: a good reference photo against a small face in a crowd. Native pairs "
         "are unordered; small-size pairs are ordered (A small vs B, B small vs A). "
         "A pair is accepted when its distance is ≤ the threshold."),
        "",
        ("Same-frame pairs are left out, since they measure the photo, not the person: "
         f"{len(d['dropped_duplicates'])} byte-identical copies dropped "
         f"({'; '.join(d['dropped_duplicates']) or 'none'}), and files that are one frame re-encoded, "
         "resized, cropped or mirrored never paired with each other: "
         + "; ".join("{" + ", ".join(Path(n).name for n in g) + "}" for g in d["same_frame_groups"])
         + f". That leaves {d['frames']} distinct frames. The deepface clusters are anonymous; they are "
         "taken as people distinct from the named ones (by eye, none of them is)."),
        "",
        render(result),
        "",
        (f"FAR 1e-3 needs ≥ 1000 impostor pairs; we have {' and '.join(map(str, counts))}, so it rests on "
         f"as few as {few} accepted impostor{'s' if few != 1 else ''} († marks a size with fewer than 1000, "
         "where the figure is TAR with no impostor accepted). Impostor pairs are not independent either: "
         f"{d['identities']} people make only {d['identity_pairs']} pairs of people, so FAR below ~1e-2 is "
         "indicative. Threshold columns give the largest observed distance at which the operating point is "
         "reached; where genuine and impostor distances do not overlap, EER is 0 for any threshold in the "
         "gap shown."),
        "",
        (f"![distances at native size]({result['plots']['histogram']}) "
         f"![rates against face size]({result['plots']['by_size']})"),
        "",
        findings(result),
        "",
        "### Default match threshold",
        "",
        result["justification"],
    ]
    if result["suspects"]:
        parts += ["", f"Pairs of different frames closer than {SUSPECT_DISTANCE}, worth a look: "
                  + "; ".join(f"{s['a']} / {s['b']} ({s['distance']})" for s in result["suspects"])]
    return "\n".join(parts) + "\n"


def plot(result: dict, distances: dict, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genuine, impostor = distances[None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(0, max(1.2, float(impostor.max()) + 0.02), 61)
    ax.hist(impostor, bins, density=True, alpha=0.55, color="tab:red", label=f"impostor ({len(impostor)} pairs)")
    ax.hist(genuine, bins, density=True, alpha=0.55, color="tab:green", label=f"genuine ({len(genuine)} pairs)")
    native = result["sizes"][0]
    lines = [(0.5, "tab:blue", ":", "0.5 (KEEP_MATCH_THRESHOLD)"), (0.6, "k", "--", "0.6 (current default)")]
    if native["eer_threshold"] is not None:
        gap = native["genuine_max"] < native["impostor_min"]
        note = f" (EER 0 anywhere in {native['genuine_max']:.3f}-{native['impostor_min']:.3f})" if gap else ""
        lines.append((native["eer_threshold"], "tab:purple", "-", f"EER threshold {native['eer_threshold']:.3f}{note}"))
    for x, colour, style, label in lines:
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.4, label=label)
    ax.set(title="Genuine vs impostor distances, faces at native size",
           xlabel="Euclidean distance between dlib descriptors", ylabel="density (each histogram has area 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    histogram = out_dir / "identity-distances.png"
    fig.savefig(histogram, dpi=110)
    plt.close(fig)

    rows = result["sizes"][::-1]  # smallest face first, native last
    x = np.arange(len(rows))
    ticks = [r["label"] if r["size"] else f"native\n(median {result['data']['native_size_median']:.0f} px)"
             for r in rows]
    # Two panels: acceptance is near 1 and the error rates near 0, one scale would hide either.
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ys, style, colour, label in [
        ([r["tar_at_far"]["0.01"]["tar"] for r in rows], "o-", "tab:green", "TAR at FAR 1e-2"),
        ([r["at_threshold"]["0.6"]["tar"] for r in rows], "s--", "tab:olive", "TAR at threshold 0.6"),
        ([r["at_threshold"]["0.5"]["tar"] for r in rows], "v:", "tab:blue", "TAR at threshold 0.5 (KEEP)"),
    ]:
        left.plot(x, 100 * np.array(ys), style, color=colour, label=label)
    left.set(title="Genuine pairs accepted", ylabel="TAR (%)", ylim=(0, 102))
    for ys, style, colour, label in [
        ([r["eer"] for r in rows], "D-", "tab:red", "EER"),
        ([r["at_threshold"]["0.65"]["far"] for r in rows], "^--", "tab:orange", "FAR at threshold 0.65"),
        ([r["at_threshold"]["0.6"]["far"] for r in rows], "s--", "tab:olive", "FAR at threshold 0.6"),
    ]:
        right.plot(x, 100 * np.array(ys), style, color=colour, label=label)
    right.set(title="Errors", ylabel="rate (%)")
    right.set_ylim(bottom=-0.05)
    for ax in (left, right):
        ax.set_xticks(x, ticks)
        ax.set_xlabel("face size when described (larger side of the box)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Verification against face size: a face at that size vs native references of the others")
    fig.tight_layout()
    by_size = out_dir / "identity-by-size.png"
    fig.savefig(by_size, dpi=110)
    plt.close(fig)
    return {"histogram": histogram.name, "by_size": by_size.name}


def run(out_dir: Path) -> dict:
    """Describe, pair, measure, plot (PNGs in out_dir); the result is JSON-ready and carries `markdown`.

    Raises MissingData when the shared data folder is absent.
    """
    start = time.perf_counter()
    photos, dropped, faceless = describe_photos(identity_photos())
    result = measure(photos, dropped, faceless, Path(out_dir))
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def measure(photos: list[Photo], dropped: list[str], faceless: list[str], out_dir: Path) -> dict:
    """Everything after describing: pairs, rates, the threshold, the plots in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    distances = {s: pair_distances(photos, s) for s in SIZES}
    sizes = [{"size": s, "label": size_label(s), "faces": len(photos), **evaluate(*distances[s])} for s in SIZES]
    by_key = {r["label"]: r for r in sizes}
    identities = sorted({p.identity for p in photos})
    native_sizes = np.array([p.native_size for p in photos])
    result = {
        "data": {
            "sets": sorted({i.split(":")[0] for i in identities}),
            "photos": len(photos), "identities": len(identities),
            "identity_pairs": len(identities) * (len(identities) - 1) // 2,
            "frames": len({p.frame for p in photos}),
            "dropped_duplicates": dropped, "no_face": faceless,
            "same_frame_groups": [list(g) for g in SAME_FRAME],
            "several_faces": [p.name for p in photos if p.faces_in_photo > 1],
            "native_size_min": float(native_sizes.min()), "native_size_max": float(native_sizes.max()),
            "native_size_median": float(np.median(native_sizes)),
        },
        "fixed_thresholds": list(FIXED_THRESHOLDS),
        "sizes": sizes,
        "suspects": suspects(photos),
        "engine": {"default_threshold": DEFAULT_MATCH_THRESHOLD, "keep_threshold": KEEP_MATCH_THRESHOLD},
    }
    result["recommended_threshold"], result["justification"] = recommend(by_key, len(identities))
    result["plots"] = plot(result, distances, out_dir)
    result["markdown"] = markdown(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="folder for the plots, identity.json and identity.md")
    args = parser.parse_args(argv)
    try:
        result = run(args.out)
    except MissingData as e:
        print(f"identity benchmark skipped: {e}", file=sys.stderr)
        return 2
    (args.out / "identity.json").write_text(json.dumps(result, indent=1))
    (args.out / "identity.md").write_text(result["markdown"])
    print(render(result))
    print(f"\nrecommended default threshold: {result['recommended_threshold']:g}\n{result['justification']}")
    print(f"\n{result['seconds']} s; plots, identity.json and identity.md in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
