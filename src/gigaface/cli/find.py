"""`gigaface find`: rank a library's faces by likeness to reference photos."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer
from rich.table import Table

from gigaface.api import references
from gigaface.cli.console import err, out
from gigaface.cli.options import at_least, output_file
from gigaface.library.store import Library
from gigaface.search import DEFAULT_MATCH_THRESHOLD, audited_rank, check_match_threshold, contact_sheet
from gigaface.library.audit_chain import local_user


def find(db: str = typer.Argument(..., help="Library file."),
         photo: list[str] = typer.Option(..., "--photo", help="Reference photo of the person (repeat for more)."),
         top: int = typer.Option(20, "--top", help="How many faces to list."),
         capture: Optional[list[int]] = typer.Option(None, "--capture", help="Only these captures."),
         threshold: float = typer.Option(DEFAULT_MATCH_THRESHOLD, help="Distance at or under which a face is a match."),
         sheet: Optional[str] = typer.Option(None, "--sheet", help="Contact sheet PNG (default: matches.png beside the library)."),
         as_json: bool = typer.Option(False, "--json", help="Print a ranked JSON array.")) -> None:
    """Rank the faces of every capture (or those given) by similarity to the person in the
    reference photos."""
    at_least(1, top=top)
    check_match_threshold(threshold)
    sheet_path = output_file(sheet or os.path.join(os.path.dirname(os.path.abspath(db)), "matches.png"),
                             "contact sheet (.png)")
    library = Library(db)
    for c in capture or []:
        library.captures.get(c)
    library.key()  # without its key a library can be listed, not searched: say so before any work
    refs = references(photo)
    for r in refs:
        if r.faces_in_photo > 1:
            err.print(f"[yellow]warning: {r.path} shows {r.faces_in_photo} faces; using the largest")
    matches = audited_rank(library, refs, capture or None, local_user(), top=top, match_threshold=threshold)
    contact_sheet(library, matches, sheet_path)
    if as_json:
        print(json.dumps([m.to_dict() for m in matches]))
        return
    table = Table("rank", "face", "capture", "box (x, y, w, h)", "distance", "match")
    for m in matches:
        table.add_row(str(m.rank), str(m.face.id), str(m.face.capture), ", ".join(f"{v:.0f}" for v in m.face.box),
                      f"{m.distance:.3f}", "[green]yes" if m.match else "no")
    out.print(table)
    out.print(f"{sum(m.match for m in matches)} of {len(matches)} under the threshold {threshold}"
              f" ({matches.searched:,} faces searched); contact sheet: {sheet_path}")
