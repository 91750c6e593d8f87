"""`gigaface demo`: the option checks in front of gigaface.demo.run."""
from __future__ import annotations

import os

import typer

from gigaface.cli.console import err, out
from gigaface.engine.plan import PRESETS, settings_for
from gigaface.errors import GigafaceError


def demo(out_dir: str = typer.Option("demo-output", "--out", help="Folder for the demo's files."),
         size: float = typer.Option(150.0, "--size", help="Panorama size in megapixels."),
         preset: str = typer.Option("balanced", help=f"One of {', '.join(PRESETS)}.")) -> None:
    """Build a synthetic stadium panorama, scan it, find the astronaut, blur everyone else."""
    from gigaface.demo.run import run_demo
    from gigaface.demo.scene import ASPECT, FACE_BOTTOM, JPEG_MAX_SIDE

    settings_for(preset)  # an unknown preset is said before minutes of building
    # What build_stadium can draw: rows of faces down to 60 px, and one JPEG's largest side.
    smallest, largest = (8 * FACE_BOTTOM) ** 2 * ASPECT / 1e6, JPEG_MAX_SIDE ** 2 / ASPECT / 1e6
    if not smallest <= size <= largest:
        raise GigafaceError(f"--size is a panorama of {smallest:.2f} to {largest:,.0f} megapixels (got {size:g})")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise GigafaceError(f"{out_dir}: cannot make the demo's folder ({exc.strerror})") from None
    run_demo(out_dir, size, preset, err if err.is_terminal else None, out)
