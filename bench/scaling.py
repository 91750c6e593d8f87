"""Scaling curve: full scans of mosaics of growing size; time should be linear, memory
flat: bands are column stripes of at most 48 MB, whatever the panorama's width or area."""
from __future__ import annotations

from pathlib import Path

from .mosaic import build_mosaic
from .panorama import full_scan


def run(sizes: list[float], work: Path, preset: str = "balanced", log=print) -> list[dict]:
    rows = []
    for size in sizes:
        mosaic = build_mosaic(work / f"mosaic-{size:g}mp", megapixels=size, planted=0, tiff=False)
        row = full_scan(mosaic, work / f"scaling-{size:g}mp.db", preset)
        rows.append(row)
        log(f"{row['megapixels']} MP: {row['wall_s']} s (detect {row['detect_s']} s, describe {row['describe_s']} s), "
            f"{row['faces']:,} faces, peak {row['peak_main_mb']} MB")
    return rows


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp = [r["megapixels"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(mp, [r["wall_s"] for r in rows], "o-", label="scan, wall")
    left.plot(mp, [r["detect_s"] for r in rows], "s-", label="detect stage")
    left.plot(mp, [r["describe_s"] for r in rows], "^-", label="describe stage")
    left.set(xlabel="panorama (megapixels)", ylabel="seconds", title="Time: linear in size")
    left.legend()
    right.plot(mp, [r["peak_main_mb"] for r in rows], "o-", label="scan process")
    if all("peak_worker_mb" in r for r in rows):  # results from before describing ran in-process
        right.plot(mp, [r["peak_worker_mb"] for r in rows], "s-", label="one describe worker")
    for r in rows:  # say how wide each panorama is: memory used to follow the width
        right.annotate(f"{int(r['size'].split('x')[0]):,} px wide", (r["megapixels"], r["peak_main_mb"]),
                       textcoords="offset points", xytext=(-30, 8), fontsize=7)
    right.set(xlabel="panorama (megapixels)", ylabel="peak RSS (MB)",
              title="Memory: flat in width and area", ylim=(0, None))
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
