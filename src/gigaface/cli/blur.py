"""`gigaface blur`: an anonymised copy of one scanned image."""
from __future__ import annotations

import os
from typing import Optional

import typer

from gigaface.api import blur_image
from gigaface.cli.console import out
from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.search import KEEP_MATCH_THRESHOLD, check_match_threshold


def blur(image: str = typer.Argument(..., help="A scanned image (or one frame of a camera-array capture)."),
         db: str = typer.Option(..., "--db", help="Library file holding the image's faces."),
         out_path: str = typer.Option(..., "--out", help="Where to write the anonymised copy (.jpg, .png, .tif, .webp)."),
         keep: Optional[list[str]] = typer.Option(None, "--keep", help="Photo of a person who stays visible (repeat)."),
         style: str = typer.Option("blur", help="blur or pixelate."),
         threshold: float = typer.Option(KEEP_MATCH_THRESHOLD, help="Distance under which a face counts as a --keep person (stricter than find's: showing a stranger is the worse mistake).")) -> None:
    """Write a copy of IMAGE with every face blurred, except people in --keep photos."""
    check_match_threshold(threshold)
    library = Library(db)
    real = os.path.realpath(image)
    for cap in library.captures.all():
        for frame in cap.frames:
            if os.path.realpath(frame.path) == real:
                n = blur_image(library, cap, out_path, keep or [], style, threshold, frame_path=frame.path)
                out.print(f"{out_path}: {n:,} faces {'pixelated' if style == 'pixelate' else 'blurred'}")
                return
    raise GigafaceError(f"{image}: not scanned into {db}; run gigaface scan first")
