"""Governance commands: consent (who is shown), forget (erasure on request), audit (who
searched), purge and retention (how long captures are kept)."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table

from gigaface.api import references
from gigaface.cli.console import err, out, when
from gigaface.cli.options import positive
from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.search import DEFAULT_MATCH_THRESHOLD
from gigaface.library.audit_chain import local_user

AUDIT_BROKEN_EXIT = 3  # `gigaface audit` found the log's chain broken (2 stays "you gave something wrong")

consent_app = typer.Typer(no_args_is_help=True, help="Who is shown unblurred in a capture's exports (opt-in).")


def _one_capture(library: Library, capture: Optional[int]) -> int:
    if capture is not None:
        return library.captures.get(capture).id
    ids = [c.id for c in library.captures.all()]
    if len(ids) != 1:
        raise GigafaceError(f"{library.path} holds {len(ids)} captures; choose one with --capture")
    return ids[0]


def _refresh_files(db: str, capture_ids: list[int], originals_too: bool) -> list[int]:
    """Rebuild the exports and pyramids (made by `gigaface serve`) that show the wrong people
    now; the outdated ones are removed first so that none is served meanwhile."""
    from gigaface.privacy.refresh import refresh_outputs
    from gigaface.service.worker import run_job

    def remake(capture_id: int) -> None:
        err.print(f"rebuilding the exports and pyramids of capture {capture_id} ...")
        run_job(db, capture_id)

    return refresh_outputs(db, capture_ids, originals_too, remake, made_only=True)


@consent_app.command("add")
def consent_add(db: str = typer.Argument(..., help="Library file."),
                photo: str = typer.Option(..., "--photo", help="The person's own photo (read, never stored)."),
                name: str = typer.Option(..., "--name", help="Who asked to be visible."),
                note: str = typer.Option("", "--note", help="Where the consent is recorded (form, email...)."),
                capture: Optional[int] = typer.Option(None, "--capture", help="The capture (needed when the library has several).")) -> None:
    """Add a person who asked to be shown unblurred in a capture's exports and public view."""
    from gigaface.privacy import consent
    from gigaface.privacy.consent import revealed

    library = Library(db)
    capture_id = _one_capture(library, capture)
    library.key()
    ref = references([photo])[0]
    if ref.faces_in_photo > 1:
        err.print(f"[yellow]warning: {photo} shows {ref.faces_in_photo} faces; using the largest")
    added = consent.add(library, capture_id, ref, name, note)
    shown = [f for f, c in revealed(library, capture_id).items() if c == added.id]
    out.print(f"consent {added.id}: {added.name} in capture {capture_id}; "
              + (f"shown unblurred: face {shown[0]}" if shown else "no face of this capture is close enough to show"))
    _refresh_files(db, [capture_id], originals_too=False)


@consent_app.command("list")
def consent_list(db: str = typer.Argument(..., help="Library file."),
                 capture: Optional[int] = typer.Option(None, "--capture", help="Only this capture."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List consents (the embeddings stay sealed in the library)."""
    from gigaface.privacy.consent import revealed

    library = Library(db)
    if capture is not None:
        library.captures.get(capture)
    consents = library.consents.all(capture)
    shown: dict[int, list[int]] = {}
    if library.has_key():
        for capture_id in {c.capture for c in consents}:
            for face, consent_id in revealed(library, capture_id).items():
                shown.setdefault(consent_id, []).append(face)
    rows = [{**c.__dict__, "faces_shown": shown.get(c.id, [])} for c in consents]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "capture", "name", "note", "date", "face shown")
    for r in rows:
        table.add_row(str(r["id"]), str(r["capture"]), r["name"], r["note"], when(r["created_at"]),
                      ", ".join(map(str, r["faces_shown"])) or "none")
    out.print(table)


@consent_app.command("remove")
def consent_remove(db: str = typer.Argument(..., help="Library file."),
                   consent_id: int = typer.Argument(..., help="The consent's id (gigaface consent list).")) -> None:
    """Withdraw a consent: the person is blurred again in the capture's exports."""
    from gigaface.privacy import consent

    library = Library(db)
    removed = consent.remove(library, consent_id)
    out.print(f"consent {removed.id} ({removed.name}) removed from capture {removed.capture}")
    _refresh_files(db, [removed.capture], originals_too=False)


def forget(db: str = typer.Argument(..., help="Library file."),
           photo: list[str] = typer.Option(..., "--photo", help="A photo of the person to erase (repeat for more; never stored)."),
           threshold: float = typer.Option(DEFAULT_MATCH_THRESHOLD, help="Distance at or under which a face is the person's."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be erased and withdrawn; change nothing."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Erase a person on request: their embeddings and crops in every capture, for good."""
    from gigaface.privacy.erasure import check_forget_match_threshold, forget as erase

    check_forget_match_threshold(threshold)
    library = Library(db)
    library.key()
    report = erase(library, references(photo), local_user(), threshold, dry_run=dry_run)
    rebuilt = [] if dry_run else _refresh_files(db, [c.capture for c in report.captures], originals_too=True)
    result = {**report.to_dict(), "rebuilt": rebuilt, "dry_run": dry_run}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    heads = ("faces to erase", "consents to withdraw") if dry_run else ("faces erased", "consents withdrawn")
    table = Table("capture", heads[0], "boxes (x, y, w, h)", heads[1], "files rebuilt")
    for c in report.captures:
        table.add_row(str(c.capture), str(len(c.faces)), "; ".join(", ".join(f"{v:.0f}" for v in b) for b in c.boxes[:5])
                      + (" ..." if len(c.boxes) > 5 else ""), str(len(c.consents)), "yes" if c.capture in rebuilt else "")
    out.print(table)
    if dry_run:
        out.print(f"dry run: {report.faces} face(s) would be erased and "
                  f"{sum(len(c.consents) for c in report.captures)} consent(s) withdrawn at threshold {threshold};"
                  " nothing was changed")
    else:
        out.print(f"{report.faces} face(s) erased at threshold {threshold}: embeddings and crops deleted, "
                  "always blurred from now on")


def audit(db: str = typer.Argument(..., help="Library file."),
          days: Optional[float] = typer.Option(None, "--days", help="Only the last DAYS days."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the audit log: every search, consent and erasure, when, by whom, over which
    captures; and check its chain (exit code 3 when it was tampered with)."""
    import time

    positive(days=days)
    library = Library(db)
    library.key()  # the chain is keyed: without the key the log cannot be checked
    entries = library.audit.log(since=time.time() - days * 86400 if days is not None else None)
    if as_json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
    else:
        table = Table("id", "time", "who", "purpose", "captures", "reference (SHA-256)", "results", "matches")
        for e in entries:
            table.add_row(str(e.id), when(e.at), e.who, e.purpose, ",".join(map(str, e.captures)),
                          e.reference_hash[:16], str(e.results), str(e.matches))
        out.print(table)
        out.print(f"{len(entries)} search(es)")
    verdict = entries.verdict
    if not verdict.ok:
        print(f"gigaface: audit log BROKEN: {verdict.problem}", file=sys.stderr)
        raise typer.Exit(AUDIT_BROKEN_EXIT)
    err.print(f"audit log intact: {verdict.rows} entries, chain verified")


def purge(db: str = typer.Argument(..., help="Library file."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Only list what has expired."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Remove the captures whose retention has passed: embeddings first, then faces and files."""
    from gigaface.privacy.retention import purge as remove_expired

    library = Library(db)
    purged = remove_expired(library, db, dry_run=dry_run)
    if as_json:
        print(json.dumps([p.__dict__ for p in purged], indent=2))
        return
    for p in purged:
        out.print(f"capture {p.capture} ({p.source}, expired {when(p.expired_at)}): {p.faces:,} faces,"
                  f" {p.embeddings:,} embeddings {'would be ' if dry_run else ''}removed")
    out.print(f"{len(purged)} capture(s) {'expired' if dry_run else 'removed'}")


def retention(db: str = typer.Argument(..., help="Library file."),
              days: Optional[float] = typer.Option(None, "--days", help="Keep new captures this many days."),
              forever: bool = typer.Option(False, "--forever", help="Keep new captures until removed by hand."),
              existing: bool = typer.Option(False, "--existing", help="Also re-date the captures already here, from when each was added.")) -> None:
    """Show or set how long the library keeps captures (default 30 days)."""
    library = Library(db)
    if days is not None and forever:
        raise GigafaceError("give --days or --forever, not both")
    if days is not None or forever:
        library.captures.set_retention(None if forever else days, existing)
    current = library.captures.retention_days()
    out.print(f"{db}: captures are kept " + ("until removed by hand" if current is None else f"{current:g} days")
              + (" (captures already here re-dated)" if existing else ""))
