"""`gigaface captures` and `gigaface faces`: what a library holds."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from gigaface.cli.console import out
from gigaface.library.store import Library


def captures(db: str = typer.Argument(..., help="Library file."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the captures in a library."""
    library = Library(db)
    from gigaface.privacy.retention import expiry_text

    rows = [{"id": c.id, "source": c.source, "kind": c.kind, "width": c.width, "height": c.height,
             "stage": c.stage, "faces": library.faces.count(c.id), "settings": c.settings,
             "expires_at": c.expires_at, "expires": expiry_text(c)} for c in library.captures.all()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "source", "size", "faces", "stage", "expires")
    for r in rows:
        table.add_row(str(r["id"]), r["source"], f"{r['width']}x{r['height']}", f"{r['faces']:,}", r["stage"],
                      r["expires"])
    out.print(table)
    if not library.has_key():
        out.print("[yellow]no key for this library's embeddings: it can be listed, not searched (--key-file)")


def faces(db: str = typer.Argument(..., help="Library file."),
          capture: Optional[int] = typer.Option(None, "--capture", help="Only this capture."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON array.")) -> None:
    """List faces: box in panorama pixels, score, landmarks, quality."""
    library = Library(db)
    if capture is not None:
        library.captures.get(capture)
    found = library.faces.all(capture)
    if as_json:
        print(json.dumps([f.to_dict() for f in found]))
        return
    table = Table("id", "capture", "x", "y", "w", "h", "score", "size", "sharpness", "frontal")
    for f in found:
        q = f.quality
        table.add_row(str(f.id), str(f.capture), *(f"{v:.0f}" for v in f.box), f"{f.score:.2f}",
                      f"{q.get('size', 0):.0f}", f"{q.get('sharpness', 0):.0f}", f"{q.get('frontalness', 0):.2f}")
    out.print(table)
    out.print(f"{len(found):,} faces")
