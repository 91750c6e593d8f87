"""Shared fixtures. Every test that reads ../shared/data goes through `shared_data`."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.data import MissingData, shared_path
from bench.harness import run_cli
from gigaface.demo.scene import build_stadium
from gigaface.process import configure_process

REPO = Path(__file__).resolve().parents[1]

# The test run is an entry point like the CLI: without this, libvips' operation cache would
# hand a test the pixels of a file it read before under the same name.
configure_process()


def shared_data(*parts: str) -> Path:
    """A path inside the shared real-data folder, or skip the test when it is not there.

    The folder is `<repo>/../shared/data`; set GIGAFACE_SHARED_DATA to use another one.
    Benchmarks reach it through the same helper, `bench.data.shared_path`.
    """
    try:
        return shared_path(*parts)
    except MissingData as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def detector():
    """One CenterFace session for all in-process scans (loading it takes a moment)."""
    from gigaface.engine.detector import CenterFace

    return CenterFace()


@pytest.fixture(scope="session")
def stadium(tmp_path_factory):
    """A 1.5-MP stadium, scanned once for the governance tests of the CLI and the service;
    each test works on its own copy of the library."""
    folder = tmp_path_factory.mktemp("governance")
    built = build_stadium(folder, megapixels=1.5, occupancy=0.4)
    db = folder / "lib.db"
    done = run_cli("scan", built.panorama, "--db", db, "--quiet")
    assert done.returncode == 0, done.stderr
    return built, db
