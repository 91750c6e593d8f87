"""The command is a front end: nothing else in gigaface depends on it, and its entry point
still starts it. (The demo used to import the CLI for its progress bars.)"""
from __future__ import annotations

import ast
import importlib.metadata
import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

import gigaface
from gigaface.progress import BarReporter

SRC = Path(gigaface.__file__).parent


def _imports_cli(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "gigaface.cli" or a.name.startswith("gigaface.cli.") for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "gigaface":
            return any(a.name == "cli" for a in node.names)
        return node.module == "gigaface.cli" or node.module.startswith("gigaface.cli.")
    return False


def test_no_module_outside_the_cli_imports_it():
    """Every import, also those inside functions: a lazy one is still a dependency."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if (SRC / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if _imports_cli(node):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


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
