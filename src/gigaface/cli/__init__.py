"""The `gigaface` command: scan, faces, find, blur, demo."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from gigaface.engine import describe as describing
from gigaface.api import blur_image, references
from gigaface.library.files import files_root
from gigaface.engine.detector import CenterFace
from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from gigaface.process import peak_rss_mb
from gigaface.paths import FULL, NOT_WRITABLE, folder_of, os_reason, sqlite_write_problem
from gigaface.engine.plan import PRESETS, settings_for
from gigaface.ingest import Reporter, frames_of, scan_path
from gigaface.search import DEFAULT_THRESHOLD, KEEP_THRESHOLD, audited_rank, check_threshold, contact_sheet, local_user
from gigaface.engine.source import DEFAULT_MAX_PIXELS

AUDIT_BROKEN_EXIT = 3  # `gigaface audit` found the log's chain broken (2 stays "you gave something wrong")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find every face in a gigapixel crowd image, and find one person among them.")
err = Console(stderr=True)
out = Console()


@app.callback()
def options(key_file: Optional[str] = typer.Option(
        None, "--key-file", help="The key that encrypts the library's embeddings (default: $GIGAFACE_KEY,"
        " $GIGAFACE_KEY_FILE, or LIBRARY.key beside the library, made when the library is created).")) -> None:
    """Find every face in a gigapixel crowd image, and find one person among them."""
    if key_file is not None:
        from gigaface.library.sealing import ENV_KEY, ENV_KEY_FILE, read_key_file

        read_key_file(key_file)  # a bad key file is one clear error now, not a failure mid-scan
        os.environ[ENV_KEY_FILE] = os.path.abspath(key_file)  # job workers inherit it
        os.environ.pop(ENV_KEY, None)


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text(f"{speed:,.1f} {unit}/s" if speed else "", style="progress.data.speed")


class BarReporter(Reporter):
    """Rich progress bars on stderr: one per stage, with rate, faces found and ETA."""

    UNITS = {"detect": "tiles", "describe": "faces"}

    def __init__(self, label: str):
        self.label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} {task.fields[unit]}"),
            RateColumn(), TextColumn("[cyan]{task.fields[faces]:,} faces"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=err, transient=False)
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def stage(self, name: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total)
        self.task = self.progress.add_task(f"{self.label} {name}", total=total, faces=0,
                                           unit=self.UNITS.get(name, ""))

    def advance(self, n: int = 1, faces: int = 0) -> None:
        task = self.progress.tasks[-1]
        self.progress.update(self.task, advance=n, faces=task.fields["faces"] + faces)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[yellow]{message}")


class QuietReporter(Reporter):
    def note(self, message: str) -> None:
        print(f"gigaface: {message}", file=sys.stderr)


def _bars_wanted(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and err.is_terminal


@app.command()
def scan(
    images: list[str] = typer.Argument(..., metavar="IMAGE...", help="Images (any format libvips reads) or camera-array manifests (.json)."),
    db: str = typer.Option(..., "--db", help="Library file (SQLite); created if missing."),
    preset: str = typer.Option("balanced", help=f"Speed/recall trade-off: {', '.join(PRESETS)}."),
    min_face: Optional[float] = typer.Option(None, "--min-face", help="Smallest face in pixels to look for (below 16 adds an upscaled pass)."),
    min_embed: Optional[float] = typer.Option(None, "--min-embed", help="Faces smaller than this (px) are measured and cropped but not embedded (default 20)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan from its last finished band."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images (decompression bombs)."),
    workers: Optional[int] = typer.Option(None, help="Processes computing embeddings (default: one per core)."),
    frames_anywhere: bool = typer.Option(False, "--frames-anywhere", help="Let a manifest name frames outside its own folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Find every face in IMAGE... and store them in the library."""
    settings = settings_for(preset, min_face, min_embed=min_embed)
    _at_least(1, max_pixels=max_pixels, workers=workers)
    for path in images:  # every input is checked before the library is touched
        frames_of(path, max_pixels, frames_anywhere)
    files_folder_was_there = os.path.exists(files_root(db))
    library = Library(db, create=True)
    try:
        library.key()  # a wrong --key-file is said now, not after loading models and detecting
        for path in images:
            if library.is_own_file(path):
                raise GigafaceError(f"{path}: is the library itself, not an image")
        detector = CenterFace(settings.tile)
        with describing.EmbeddingPool(workers) as pool:
            summaries = _scan_all(library, images, settings, detector, pool, resume, max_pixels, frames_anywhere,
                                  quiet, as_json)
    except GigafaceError:
        # A damaged image found mid-decode: a library this command created and left
        # empty (and the key and files folder made for it) would be half-written files.
        if db in library.made and not library.captures.all():
            library.close()
            folder = [] if files_folder_was_there else [files_root(db)]
            _remove_made([db + "-wal", db + "-shm", *library.made, *folder])
        raise
    for s in summaries:
        s["peak_rss_mb"] = {"main": round(peak_rss_mb()), "worker": round(pool.peak_rss_mb())}
    if as_json:
        print(json.dumps(summaries, indent=2))
        return
    for s in summaries:
        if s["skipped"]:
            out.print(f"capture {s['capture']}: {s['source']} already scanned with these settings: {s['faces']:,} faces")
        else:
            out.print(f"capture {s['capture']}: {s['faces']:,} faces in {s['width']}x{s['height']} "
                      f"({s['width'] * s['height'] / 1e6:,.0f} MP) in {s['seconds']:.1f} s; peak memory {peak_rss_mb():,.0f} MB")


def _remove_made(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def _at_least(minimum: float, **values) -> None:
    """Refuse a numeric option under its minimum (None: not given), naming the option."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise GigafaceError(f"--{name.replace('_', '-')} is at least {minimum:g} (got {value:g})")


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise GigafaceError(f"--{name.replace('_', '-')} is more than 0 (got {value:g})")


def _scan_all(library, images, settings, detector, pool, resume, max_pixels, frames_anywhere, quiet,
              as_json) -> list[dict]:
    summaries = []
    for path in images:
        with BarReporter(Path(path).name) if _bars_wanted(quiet, as_json) else QuietReporter() as reporter:
            result = scan_path(library, path, settings, detector=detector, pool=pool, resume=resume,
                               reporter=reporter, max_pixels=max_pixels, frames_anywhere=frames_anywhere)
        cap = result.capture
        megapixels = cap.width * cap.height / 1e6
        summaries.append({
            "capture": cap.id, "source": cap.source, "width": cap.width, "height": cap.height,
            "faces": result.faces, "stored": result.stored, "described": result.described,
            "embedded": library.faces.count(cap.id, embedded=True), "skipped": result.skipped,
            "seconds": round(result.seconds, 2), "detect_seconds": round(result.detect_seconds, 2),
            "describe_seconds": round(result.describe_seconds, 2), "tiles": result.tiles,
            "megapixels_per_second": round(megapixels / result.detect_seconds, 2) if result.detect_seconds else None,
        })
    return summaries


@app.command()
def captures(db: str = typer.Argument(..., help="Library file."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the captures in a library."""
    library = Library(db)
    from gigaface.privacy.retention import describe_expiry

    rows = [{"id": c.id, "source": c.source, "kind": c.kind, "width": c.width, "height": c.height,
             "stage": c.stage, "faces": library.faces.count(c.id), "settings": c.settings,
             "expires_at": c.expires_at, "expires": describe_expiry(c)} for c in library.captures.all()]
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


@app.command()
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


@app.command()
def find(db: str = typer.Argument(..., help="Library file."),
         photo: list[str] = typer.Option(..., "--photo", help="Reference photo of the person (repeat for more)."),
         top: int = typer.Option(20, "--top", help="How many faces to list."),
         capture: Optional[list[int]] = typer.Option(None, "--capture", help="Only these captures."),
         threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Distance at or under which a face is a match."),
         sheet: Optional[str] = typer.Option(None, "--sheet", help="Contact sheet PNG (default: matches.png beside the library)."),
         as_json: bool = typer.Option(False, "--json", help="Print a ranked JSON array.")) -> None:
    """Rank faces by similarity to the person in the reference photos."""
    _at_least(1, top=top)
    check_threshold(threshold)
    sheet_path = _output_file(sheet or os.path.join(os.path.dirname(os.path.abspath(db)), "matches.png"),
                              "contact sheet (.png)")
    library = Library(db)
    for c in capture or []:
        library.captures.get(c)
    library.key()  # without its key a library can be listed, not searched: say so before any work
    refs = references(photo)
    for r in refs:
        if r.faces_in_photo > 1:
            err.print(f"[yellow]warning: {r.path} shows {r.faces_in_photo} faces; using the largest")
    matches = audited_rank(library, refs, capture or None, local_user(), top=top, threshold=threshold)
    contact_sheet(library, matches, sheet_path)
    if as_json:
        print(json.dumps([m.to_dict() for m in matches]))
        return
    table = Table("rank", "face", "capture", "box (x, y, w, h)", "distance", "match")
    for m in matches:
        table.add_row(str(m.rank), str(m.face.id), str(m.face.capture), ", ".join(f"{v:.0f}" for v in m.face.box),
                      f"{m.distance:.3f}", "[green]yes" if m.match else "no")
    out.print(table)
    out.print(f"{sum(m.match for m in matches)} of {len(matches)} under the threshold {threshold}; contact sheet: {sheet_path}")


def _output_file(path: str, what: str) -> str:
    """An output path whose folder exists and that is not a folder itself, or a clear error
    before any work is done."""
    if os.path.isdir(path):
        raise GigafaceError(f"{path}: is a directory; give a file name for the {what}")
    if not os.path.isdir(folder_of(path)):
        raise GigafaceError(f"{path}: the folder {folder_of(path)} does not exist")
    return path


@app.command()
def blur(image: str = typer.Argument(..., help="A scanned image (or one frame of a camera-array capture)."),
         db: str = typer.Option(..., "--db", help="Library file holding the image's faces."),
         out_path: str = typer.Option(..., "--out", help="Where to write the anonymised copy (.jpg, .png, .tif, .webp)."),
         keep: Optional[list[str]] = typer.Option(None, "--keep", help="Photo of a person who stays visible (repeat)."),
         style: str = typer.Option("blur", help="blur or pixelate."),
         threshold: float = typer.Option(KEEP_THRESHOLD, help="Distance under which a face counts as a --keep person (stricter than find's: showing a stranger is the worse mistake).")) -> None:
    """Write a copy of IMAGE with every face blurred, except people in --keep photos."""
    check_threshold(threshold)
    library = Library(db)
    real = os.path.realpath(image)
    for cap in library.captures.all():
        for frame in cap.frames:
            if os.path.realpath(frame.path) == real:
                n = blur_image(library, cap, out_path, keep or [], style, threshold, frame_path=frame.path)
                out.print(f"{out_path}: {n:,} faces {'pixelated' if style == 'pixelate' else 'blurred'}")
                return
    raise GigafaceError(f"{image}: not scanned into {db}; run gigaface scan first")


@app.command()
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


token_app = typer.Typer(no_args_is_help=True, help="API tokens for `gigaface serve` (admin or viewer).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(db: str = typer.Argument(..., help="Library file."),
                 name: str = typer.Option(..., "--name", help="Who or what uses the token."),
                 role: str = typer.Option("viewer", "--role", help="admin (everything) or viewer (look and search)."),
                 create: bool = typer.Option(False, "--create", help="Create the library if it does not exist yet.")) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from gigaface.library.tokens import ROLES, create_token

    if role not in ROLES:  # before a library is made for it
        raise GigafaceError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not os.path.exists(db) and not create:
        raise GigafaceError(f"{db}: no such library (check the name, or add --create to make a new one)")
    token, secret = create_token(Library(db, create=create), name, role)
    err.print(f"token {token.id} ({token.role}, {token.name}); keep it now, it cannot be shown again:")
    print(secret)


@token_app.command("list")
def token_list(db: str = typer.Argument(..., help="Library file."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (never their secrets)."""
    tokens = Library(db).tokens.all()
    if as_json:
        print(json.dumps([t.__dict__ for t in tokens], indent=2))
        return
    table = Table("id", "name", "role", "created", "last used", "revoked")
    for t in tokens:
        table.add_row(str(t.id), t.name, t.role, _when(t.created_at), _when(t.last_used), "yes" if t.revoked else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(db: str = typer.Argument(..., help="Library file."),
                 token_id: int = typer.Argument(..., help="The token's id (gigaface token list).")) -> None:
    """Revoke a token: requests with it are refused from now on."""
    Library(db).tokens.revoke(token_id)
    out.print(f"token {token_id} revoked")


def _when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


# --- consent, erasure, audit, retention -------------------------------------------------
consent_app = typer.Typer(no_args_is_help=True, help="Who is shown unblurred in a capture's exports (opt-in).")
app.add_typer(consent_app, name="consent")


def _one_capture(library: Library, capture: Optional[int]) -> int:
    if capture is not None:
        return library.captures.get(capture).id
    ids = [c.id for c in library.captures.all()]
    if len(ids) != 1:
        raise GigafaceError(f"{library.path} holds {len(ids)} captures; choose one with --capture")
    return ids[0]


def _refresh_files(db: str, capture_ids: list[int], originals_too: bool) -> list[int]:
    """Rebuild the exports and pyramids (made by `gigaface serve`) that show the wrong people
    now; the stale ones are removed first so that none is served meanwhile."""
    from gigaface.service.worker import has_files, run_job, stale

    rebuilt = []
    for capture_id in capture_ids:
        if has_files(db, capture_id):
            stale(db, capture_id, originals_too)
            err.print(f"rebuilding the exports and pyramids of capture {capture_id} ...")
            run_job(db, capture_id)
            rebuilt.append(capture_id)
    return rebuilt


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
        table.add_row(str(r["id"]), str(r["capture"]), r["name"], r["note"], _when(r["created_at"]),
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


@app.command()
def forget(db: str = typer.Argument(..., help="Library file."),
           photo: list[str] = typer.Option(..., "--photo", help="A photo of the person to erase (repeat for more; never stored)."),
           threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Distance at or under which a face is the person's."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be erased and withdrawn; change nothing."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Erase a person on request: their embeddings and crops in every capture, for good."""
    from gigaface.privacy.erasure import check_forget_threshold, forget as erase

    check_forget_threshold(threshold)
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


@app.command()
def audit(db: str = typer.Argument(..., help="Library file."),
          days: Optional[float] = typer.Option(None, "--days", help="Only the last DAYS days."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the audit log: every search, consent and erasure, when, by whom, over which
    captures; and check its chain (exit code 3 when it was tampered with)."""
    import time

    _positive(days=days)
    library = Library(db)
    library.key()  # the chain is keyed: without the key the log cannot be checked
    entries = library.audit.log(since=time.time() - days * 86400 if days is not None else None)
    if as_json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
    else:
        table = Table("id", "time", "who", "purpose", "captures", "reference (SHA-256)", "results", "matches")
        for e in entries:
            table.add_row(str(e.id), _when(e.at), e.who, e.purpose, ",".join(map(str, e.captures)),
                          e.reference_hash[:16], str(e.results), str(e.matches))
        out.print(table)
        out.print(f"{len(entries)} search(es)")
    verdict = entries.verdict
    if not verdict.ok:
        print(f"gigaface: audit log BROKEN: {verdict.problem}", file=sys.stderr)
        raise typer.Exit(AUDIT_BROKEN_EXIT)
    err.print(f"audit log intact: {verdict.rows} entries, chain verified")


@app.command()
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
        out.print(f"capture {p.capture} ({p.source}, expired {_when(p.expired_at)}): {p.faces:,} faces,"
                  f" {p.embeddings:,} embeddings {'would be ' if dry_run else ''}removed")
    out.print(f"{len(purged)} capture(s) {'expired' if dry_run else 'removed'}")


@app.command()
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


@app.command()
def serve(db: str = typer.Argument(..., help="Library file (created if missing)."),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every one)."),
          port: int = typer.Option(8000, help="TCP port (0 picks a free one)."),
          public: bool = typer.Option(False, "--public", help="Also serve the anonymised images to anyone, at /public."),
          max_upload_mb: int = typer.Option(4096, "--max-upload-mb", help="Largest image upload accepted."),
          max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images."),
          data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Admins may add captures by their path "
                                                 "under this folder; without it, by upload only."),
          allow_host: Optional[list[str]] = typer.Option(None, "--allow-host", help="A DNS name the server is reached "
                                                         "by (repeatable); loopback and the --host address always work.")) -> None:
    """Run the REST service and the web viewer; every request needs a token (gigaface token create)."""
    from gigaface.service.app import Config, serve as run_server

    _check_port_number(port)
    if not 1 <= max_upload_mb <= MAX_UPLOAD_MB:
        raise GigafaceError(f"--max-upload-mb {max_upload_mb}: give 1 to {MAX_UPLOAD_MB} (MB)")
    if max_pixels < 1:
        raise GigafaceError(f"--max-pixels {max_pixels}: give a positive number of pixels")
    hosts = tuple(_host_name(name) for name in allow_host or ())
    data = _data_dir(data_dir) if data_dir is not None else None
    sock = _check_port(host, port)
    try:
        library = Library(db, create=True)
    except BaseException:
        sock.close()
        raise
    if not any(not t.revoked for t in library.tokens.all()):
        err.print(f"[yellow]no tokens yet: create one with `gigaface token create {db} --name you --role admin`")
    library.close()
    port = sock.getsockname()[1]
    _say(f"gigaface: serving {db} on http://{_url_host(host)}:{port}/ (API docs at /docs)"
         + (f", public view at http://{_url_host(host)}:{port}/public" if public else ""))
    run_server(Config(db, public=public, max_upload=max_upload_mb << 20, max_pixels=max_pixels, data_dir=data,
                      host=host, allow_hosts=hosts), sock)


@app.command()
def view(db: str = typer.Argument(..., help="Library file."),
         port: int = typer.Option(8000, help="TCP port on 127.0.0.1 (0 picks a free one)."),
         browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the viewer in a web browser."),
         data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Captures may be added by their path "
                                                "under this folder; without it, by upload only.")) -> None:
    """Open the viewer for one library on this computer (127.0.0.1 only), with a key made for this run."""
    import secrets
    import webbrowser

    from gigaface.service.app import Config, serve as run_server

    _check_port_number(port)
    data = _data_dir(data_dir) if data_dir is not None else None
    Library(db)
    sock = _check_port("127.0.0.1", port)
    # The page must prove it was opened from this URL: the key is in its fragment, which a
    # browser sends to no server and in no Referer, so no other page can learn it.
    key = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/#key={key}"
    _say(f"gigaface: viewer for {db} at {url} (Ctrl-C to stop)")
    run_server(Config(db, local=True, local_key=key, data_dir=data), sock,
               on_ready=(lambda: webbrowser.open(url)) if browser else None)


MAX_UPLOAD_MB = 1 << 20   # 1 TB: past any image libvips would be asked to read


def _check_port_number(port: int) -> None:
    if not 0 <= port <= 65535:
        raise GigafaceError(f"--port {port}: a TCP port is 1 to 65535 (0 picks a free one)")


def _host_name(name: str) -> str:
    """An --allow-host name: a DNS name or an address, without scheme, port or path."""
    from gigaface.service.gate import host_form

    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?", name.strip()):
        raise GigafaceError(f"--allow-host {name!r}: give a host name such as faces.example.org (no scheme or port)")
    return host_form(name)


def _data_dir(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise GigafaceError(f"--data-dir {path}: no such folder")
    return real


def _say(line: str) -> None:
    """One line on stderr, never wrapped or styled: people and scripts copy the URL from it."""
    print(line, file=sys.stderr, flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_port(host: str, port: int):
    """A socket bound to host:port for the server, or a clear error saying which of the two
    is wrong. SO_REUSEADDR, as uvicorn sets it: a server stopped a moment ago leaves its
    connections in TIME_WAIT, which must not keep the next one from starting."""
    import errno
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        address = (host, port)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", host):
            raise GigafaceError(f"--host {host}: not a valid IP address") from None
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError):
            raise GigafaceError(f"--host {host}: not an address or a name this machine can resolve") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise GigafaceError(f"--host {host}: not an address of this machine") from None
        if exc.errno == errno.EADDRINUSE:
            raise GigafaceError(f"cannot listen on {host}:{port}: the port is in use; choose another --port") from None
        if exc.errno == errno.EACCES:
            raise GigafaceError(f"cannot listen on port {port}: it needs privileges; choose one above 1023") from None
        raise GigafaceError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gigaface: warning: {message}", file=sys.stderr)


def main() -> None:
    warnings.showwarning = _warn_in_one_line  # e.g. a key file others can read
    try:
        app()  # typer reports usage errors itself, with exit code 2
    except GigafaceError as exc:
        print(f"gigaface: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except sqlite3.DatabaseError as exc:  # found mid-command
        problem = sqlite_write_problem(exc)
        if problem:  # the disk, not the file: what was committed is intact
            print(f"gigaface: error: could not write to the library: {problem}; every finished step is kept:"
                  " make room and run the command again (a scan with --resume)", file=sys.stderr)
        else:
            print(f"gigaface: error: the library file is damaged ({exc}); restore it or scan into a new one",
                  file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in FULL + NOT_WRITABLE:
            raise
        where = exc.filename or "a file"
        print(f"gigaface: error: cannot write {where}: {os_reason(exc, folder_of(str(where)))}", file=sys.stderr)
        sys.exit(2)
