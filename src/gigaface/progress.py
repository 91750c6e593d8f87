"""Progress reporters for a scan: rich bars on a terminal, one plain line per note otherwise.

Here rather than in the CLI so that every front end (the command, the demo) shows a scan
the same way without one importing the other."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from gigaface.engine.reporter import Reporter


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text(f"{speed:,.1f} {unit}/s" if speed else "", style="progress.data.speed")


def bars(console: Console | None = None) -> Progress:
    """The bars' display (on stderr unless given a console), for one scan or several at once."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} {task.fields[unit]}"),
        RateColumn(), TextColumn("[cyan]{task.fields[faces]:,} faces"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console or Console(stderr=True), transient=False)


class BarReporter(Reporter):
    """Rich progress bars: one per stage, with rate, faces found and ETA. With `progress`,
    its bars join that display (scans running at once, from several threads: rich's
    Progress is thread-safe), which the caller starts and stops."""

    UNITS = {"detect": "tiles", "describe": "faces"}

    def __init__(self, label: str, console: Console | None = None, progress: Progress | None = None):
        self.label = label
        self.own = progress is None
        self.progress = progress or bars(console)
        self.task = None
        self.total = self.faces = 0

    def __enter__(self):
        if self.own:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.own:
            self.progress.stop()

    def stage(self, name: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.total)
        self.total, self.faces = total, 0
        self.task = self.progress.add_task(f"{self.label} {name}", total=total, faces=0,
                                           unit=self.UNITS.get(name, ""))

    def advance(self, n: int = 1, faces: int = 0) -> None:
        self.faces += faces
        self.progress.update(self.task, advance=n, faces=self.faces)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[yellow]{message}")


class QuietReporter(Reporter):
    def note(self, message: str) -> None:
        print(f"gigaface: {message}", file=sys.stderr)
