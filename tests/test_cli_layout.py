"""The command is a front end: nothing else in gigaface loads it (the import contracts in
pyproject.toml forbid importing it; tests/test_layout.py runs them), and its entry point
still starts it. (The demo used to import the CLI for its progress bars.)"""
from __future__ import annotations

import importlib.metadata
import io
import re
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


def test_a_forked_command_answers_as_a_new_interpreter_does(tmp_path, monkeypatch):
    """The tests start commands as forks of a preloaded process (bench.harness.fork_commands):
    the same exit codes, output, working folder and environment as a new interpreter, and the
    library left as an interpreter's exit leaves it (connections closed: no -wal or -shm file)."""
    import numpy as np

    from bench import harness
    from tests.helpers import write_image

    photo = write_image(tmp_path / "plain.png", np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "lib").mkdir()
    db = tmp_path / "lib" / "lib.db"
    monkeypatch.setenv("GIGAFACE_RUNTIME", "onnxruntime")  # the command's environment is the caller's
    cases = [("--version",), ("scan", "plain.png", "--db", db, "--quiet"), ("faces", "lib/lib.db", "--json"),
             ("scan", "missing.jpg", "--db", db), ("find", db, "--photo", photo)]
    assert harness._forked is not None
    forked = [harness.run_cli(*case, cwd=tmp_path) for case in cases]
    monkeypatch.setattr(harness, "_forked", None)
    fresh_db = tmp_path / "lib" / "fresh.db"
    fresh = [harness.run_cli(*(fresh_db if a == db else "lib/fresh.db" if a == "lib/lib.db" else a for a in case),
                             cwd=tmp_path) for case in cases]

    def alike(text: str) -> str:  # the other library's name; times and memory vary
        return re.sub(r"\d+(\.\d+)?", "#", text.replace("fresh.db", "lib.db"))

    for case, a, b in zip(cases, forked, fresh):
        assert a.returncode == b.returncode, (case, a, b)
        assert alike(a.stdout) == alike(b.stdout) and alike(a.stderr) == alike(b.stderr), (case, a, b)
    assert [p.returncode for p in forked] == [0, 0, 0, 2, 2]
    assert "onnxruntime" in forked[0].stdout and "missing.jpg" in forked[3].stderr
    left = sorted(p.name for p in (tmp_path / "lib").iterdir() if p.name.startswith("lib.db"))
    assert left == ["lib.db", "lib.db.files", "lib.db.key"]
