"""The `gigaface` command: scan, faces, find, blur, demo."""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import describe as describing
from .api import blur_image, references
from .detector import CenterFace
from .errors import GigafaceError
from .index import Library
from .memory import peak_rss_mb
from .plan import PRESETS, settings_for
from .scan_job import Reporter, frames_of, scan_path
from .sealing import key_file_beside
from .search import DEFAULT_THRESHOLD, KEEP_THRESHOLD, audited_rank, contact_sheet, local_user
from .source import DEFAULT_MAX_PIXELS

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
        from .sealing import ENV_KEY, ENV_KEY_FILE, read_key_file

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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Find every face in IMAGE... and store them in the library."""
    settings = settings_for(preset, min_face, min_embed=min_embed)
    for path in images:  # every input is checked before the library is touched
        frames_of(path, max_pixels)
    new_library = not os.path.exists(db)
    new_key = not os.path.exists(key_file_beside(db))
    library = Library(db, create=True)
    try:
        for path in images:
            if library.is_own_file(path):
                raise GigafaceError(f"{path}: is the library itself, not an image")
        detector = CenterFace(settings.tile)
        with describing.EmbeddingPool(workers) as pool:
            summaries = _scan_all(library, images, settings, detector, pool, resume, max_pixels, quiet, as_json)
    except GigafaceError:
        # A damaged image found mid-decode: a library this command created and left
        # empty (and the key made for it) would be half-written files.
        if new_library and not library.captures():
            library.close()
            for path in [db + suffix for suffix in ("", "-wal", "-shm")] + ([key_file_beside(db)] if new_key else []):
                if os.path.exists(path):
                    os.remove(path)
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


def _scan_all(library, images, settings, detector, pool, resume, max_pixels, quiet, as_json) -> list[dict]:
    summaries = []
    for path in images:
        with BarReporter(Path(path).name) if _bars_wanted(quiet, as_json) else QuietReporter() as reporter:
            result = scan_path(library, path, settings, detector=detector, pool=pool, resume=resume,
                               reporter=reporter, max_pixels=max_pixels)
        cap = result.capture
        megapixels = cap.width * cap.height / 1e6
        summaries.append({
            "capture": cap.id, "source": cap.source, "width": cap.width, "height": cap.height,
            "faces": result.faces, "stored": result.stored, "described": result.described,
            "embedded": library.face_count(cap.id, embedded=True), "skipped": result.skipped,
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
    from .retention import describe_expiry

    rows = [{"id": c.id, "source": c.source, "kind": c.kind, "width": c.width, "height": c.height,
             "stage": c.stage, "faces": library.face_count(c.id), "settings": c.settings,
             "expires_at": c.expires_at, "expires": describe_expiry(c)} for c in library.captures()]
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
        library.capture(capture)
    found = library.faces(capture)
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
    library = Library(db)
    for c in capture or []:
        library.capture(c)
    library.key()  # without its key a library can be listed, not searched: say so before any work
    refs = references(photo)
    for r in refs:
        if r.faces_in_photo > 1:
            err.print(f"[yellow]warning: {r.path} shows {r.faces_in_photo} faces; using the largest")
    matches = audited_rank(library, refs, capture or None, local_user(), top=top, threshold=threshold)
    sheet_path = sheet or os.path.join(os.path.dirname(os.path.abspath(db)), "matches.png")
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


@app.command()
def blur(image: str = typer.Argument(..., help="A scanned image (or one frame of a camera-array capture)."),
         db: str = typer.Option(..., "--db", help="Library file holding the image's faces."),
         out_path: str = typer.Option(..., "--out", help="Where to write the anonymised copy (.jpg, .png, .tif, .webp)."),
         keep: Optional[list[str]] = typer.Option(None, "--keep", help="Photo of a person who stays visible (repeat)."),
         style: str = typer.Option("blur", help="blur or pixelate."),
         threshold: float = typer.Option(KEEP_THRESHOLD, help="Distance under which a face counts as a --keep person (stricter than find's: showing a stranger is the worse mistake).")) -> None:
    """Write a copy of IMAGE with every face blurred, except people in --keep photos."""
    library = Library(db)
    real = os.path.realpath(image)
    for cap in library.captures():
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
    from .demo import run_demo

    run_demo(out_dir, size, preset, err if err.is_terminal else None, out)


token_app = typer.Typer(no_args_is_help=True, help="API tokens for `gigaface serve` (admin or viewer).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(db: str = typer.Argument(..., help="Library file."),
                 name: str = typer.Option(..., "--name", help="Who or what uses the token."),
                 role: str = typer.Option("viewer", "--role", help="admin (everything) or viewer (look and search).")) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from .tokens import create_token

    token, secret = create_token(Library(db, create=True), name, role)
    err.print(f"token {token.id} ({token.role}, {token.name}); keep it now, it cannot be shown again:")
    print(secret)


@token_app.command("list")
def token_list(db: str = typer.Argument(..., help="Library file."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (never their secrets)."""
    tokens = Library(db).tokens()
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
    Library(db).revoke_token(token_id)
    out.print(f"token {token_id} revoked")


def _when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


# --- consent, erasure, audit, retention -------------------------------------------------
consent_app = typer.Typer(no_args_is_help=True, help="Who is shown unblurred in a capture's exports (opt-in).")
app.add_typer(consent_app, name="consent")


def _one_capture(library: Library, capture: Optional[int]) -> int:
    if capture is not None:
        return library.capture(capture).id
    ids = [c.id for c in library.captures()]
    if len(ids) != 1:
        raise GigafaceError(f"{library.path} holds {len(ids)} captures; choose one with --capture")
    return ids[0]


def _refresh_files(db: str, capture_ids: list[int], originals_too: bool) -> list[int]:
    """Rebuild the exports and pyramids (made by `gigaface serve`) that show the wrong people
    now; the stale ones are removed first so that none is served meanwhile."""
    from .job_worker import has_files, run_job, stale

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
    from . import consent
    from .consent import revealed

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
    from .consent import revealed

    library = Library(db)
    if capture is not None:
        library.capture(capture)
    consents = library.consents(capture)
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
    library = Library(db)
    removed = library.remove_consent(consent_id)
    out.print(f"consent {removed.id} ({removed.name}) removed from capture {removed.capture}")
    _refresh_files(db, [removed.capture], originals_too=False)


@app.command()
def forget(db: str = typer.Argument(..., help="Library file."),
           photo: list[str] = typer.Option(..., "--photo", help="A photo of the person to erase (repeat for more; never stored)."),
           threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Distance at or under which a face is the person's."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Erase a person on request: their embeddings and crops in every capture, for good."""
    from .erasure import forget as erase

    library = Library(db)
    library.key()
    report = erase(library, references(photo), local_user(), threshold)
    rebuilt = _refresh_files(db, [c.capture for c in report.captures], originals_too=True)
    result = {**report.to_dict(), "rebuilt": rebuilt}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("capture", "faces erased", "boxes (x, y, w, h)", "consents withdrawn", "files rebuilt")
    for c in report.captures:
        table.add_row(str(c.capture), str(len(c.faces)), "; ".join(", ".join(f"{v:.0f}" for v in b) for b in c.boxes[:5])
                      + (" ..." if len(c.boxes) > 5 else ""), str(len(c.consents)), "yes" if c.capture in rebuilt else "")
    out.print(table)
    out.print(f"{report.faces} face(s) erased at threshold {threshold}: embeddings and crops deleted, "
              "always blurred from now on")


@app.command()
def audit(db: str = typer.Argument(..., help="Library file."),
          days: Optional[float] = typer.Option(None, "--days", help="Only the last DAYS days."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the audit log: every search, when, by whom, over which captures."""
    import time

    entries = Library(db).audit(since=time.time() - days * 86400 if days is not None else None)
    if as_json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return
    table = Table("id", "time", "who", "purpose", "captures", "reference (SHA-256)", "results", "matches")
    for e in entries:
        table.add_row(str(e.id), _when(e.at), e.who, e.purpose, ",".join(map(str, e.captures)),
                      e.reference_hash[:16], str(e.results), str(e.matches))
    out.print(table)
    out.print(f"{len(entries)} search(es)")


@app.command()
def purge(db: str = typer.Argument(..., help="Library file."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Only list what has expired."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Remove the captures whose retention has passed: embeddings first, then faces and files."""
    from .retention import purge as remove_expired

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
        library.set_retention(None if forever else days, existing)
    current = library.retention_days()
    out.print(f"{db}: captures are kept " + ("until removed by hand" if current is None else f"{current:g} days")
              + (" (captures already here re-dated)" if existing else ""))


@app.command()
def serve(db: str = typer.Argument(..., help="Library file (created if missing)."),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every one)."),
          port: int = typer.Option(8000, help="TCP port."),
          public: bool = typer.Option(False, "--public", help="Also serve the anonymised images to anyone, at /public."),
          max_upload_mb: int = typer.Option(4096, "--max-upload-mb", help="Largest image upload accepted."),
          max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images.")) -> None:
    """Run the REST service and the web viewer; every request needs a token (gigaface token create)."""
    from .service import Config, serve as run_server

    library = Library(db, create=True)
    if not any(not t.revoked for t in library.tokens()):
        err.print(f"[yellow]no tokens yet: create one with `gigaface token create {db} --name you --role admin`")
    library.close()
    _check_port(host, port)
    err.print(f"gigaface: serving {db} on http://{host}:{port}/ (API docs at /docs)"
              + (f", public view at http://{host}:{port}/public" if public else ""))
    run_server(Config(db, public=public, max_upload=max_upload_mb << 20, max_pixels=max_pixels), host, port)


@app.command()
def view(db: str = typer.Argument(..., help="Library file."),
         port: int = typer.Option(8000, help="TCP port on 127.0.0.1 (0 picks a free one)."),
         browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the viewer in a web browser.")) -> None:
    """Open the viewer for one library on this computer, without tokens (127.0.0.1 only)."""
    import socket
    import webbrowser

    from .service import Config, serve as run_server

    Library(db)
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    _check_port("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/"
    err.print(f"gigaface: viewer for {db} at {url} (Ctrl-C to stop)")
    run_server(Config(db, local=True), "127.0.0.1", port, on_ready=(lambda: webbrowser.open(url)) if browser else None)


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise GigafaceError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def main() -> None:
    try:
        app()  # typer reports usage errors itself, with exit code 2
    except GigafaceError as exc:
        print(f"gigaface: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except sqlite3.DatabaseError as exc:  # found mid-command: pages of the library are damaged
        print(f"gigaface: error: the library file is damaged ({exc}); restore it or scan into a new one",
              file=sys.stderr)
        sys.exit(2)
