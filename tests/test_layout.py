"""The layout's rules, checked by tools rather than by reading: imports flow one way (the
import-linter contracts in pyproject.toml), and importing gigaface changes nothing in the
process until an entry point calls configure_process()."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_imports_keep_the_contracts():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([lint, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("modules", [
    "gigaface, gigaface.engine.source, gigaface.engine.detect, gigaface.ingest, gigaface.search",
    "gigaface.service.app, gigaface.service.uploads, gigaface.service.worker, gigaface.demo.run",
    "gigaface.cli.app",
])
def test_importing_changes_nothing_in_the_process(modules):
    """libvips' cache and starlette's spool size are as their libraries left them after the
    imports, and set once configure_process() (or making an app) has run."""
    code = f"""
import pyvips, starlette.formparsers as fp
cache, spool = pyvips.cache_get_max(), fp.MultiPartParser.spool_max_size
import {modules}
assert (pyvips.cache_get_max(), fp.MultiPartParser.spool_max_size) == (cache, spool), "changed on import"
from gigaface.process import configure_process
configure_process()
assert pyvips.cache_get_max() == 0
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_making_an_app_keeps_uploaded_photos_in_memory(tmp_path):
    """In a process of its own: the in-process API tests make apps too."""
    code = f"""
import starlette.formparsers as fp
from gigaface.library.store import Library
from gigaface.service.app import Config, create_app
from gigaface.service.uploads import MAX_BODY_BYTES
Library({str(tmp_path / "lib.db")!r}, create=True)
assert fp.MultiPartParser.spool_max_size < MAX_BODY_BYTES
create_app(Config(db={str(tmp_path / "lib.db")!r}, run_jobs=False))
assert fp.MultiPartParser.spool_max_size >= MAX_BODY_BYTES
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
