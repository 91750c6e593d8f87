"""The command is a front end: nothing else in gigaface loads it (the import contracts in
pyproject.toml forbid importing it; tests/test_layout.py runs them), and its entry point
still starts it. (The demo used to import the CLI for its progress bars.)"""
from __future__ import annotations

import importlib.metadata
import io
import subprocess
import sys

from rich.console import Console

from gigaface.progress import BarReporter

def test_importing_the_other_front_ends_leaves_the_cli_unloaded():
    code = ("import sys, gigaface.demo.run, gigaface.api, gigaface.service.app, gigaface.progress;"
            "print(sorted(m for m in sys.modules if m == 'gigaface.cli' or m.startswith('gigaface.cli.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_console_script_is_the_cli_main():
    from gigaface.cli import main

    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "gigaface"]
    assert script.load() is main
    proc = subprocess.run([sys.executable, "-c", f"from {script.module} import {script.attr}; {script.attr}()",
                           "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("scan", "find", "blur", "demo", "forget", "audit", "serve", "view", "token", "consent"):
        assert f" {command} " in proc.stdout, command


def test_bars_draw_on_the_console_they_are_given():
    """The demo hands its own console to the bars; they must not fall back to another."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    with BarReporter("stadium.jpg", console) as bars:
        bars.stage("detect", 4)
        bars.advance(4, faces=7)
        bars.note("one tile unreadable")
    text = buffer.getvalue()
    assert "stadium.jpg detect" in text
    assert "7 faces" in text
    assert "one tile unreadable" in text
