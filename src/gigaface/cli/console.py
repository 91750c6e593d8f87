"""Where the command writes: tables and results on stdout, notes and warnings on stderr."""
from __future__ import annotations

import sys

from rich.console import Console

err = Console(stderr=True)
out = Console()


def say(line: str) -> None:
    """One line on stderr, never wrapped or styled: people and scripts copy the URL from it."""
    print(line, file=sys.stderr, flush=True)


def when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""
