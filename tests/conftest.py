"""Shared fixtures. Every test that reads ../shared/data goes through `shared_data`."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.data import MissingData, shared_path
from bench.harness import fork_commands, run_cli
from gigaface.demo.scene import build_stadium
from gigaface.process import configure_process

REPO = Path(__file__).resolve().parents[1]

# The test run is an entry point like the CLI: without this, libvips' operation cache would
# hand a test the pixels of a file it read before under the same name.
configure_process()
# The tests' few hundred commands start as forks of a process that has imported what they
# import (bench/harness.py: fork_commands); the benchmarks start them as users do.
fork_commands()


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


# Seconds each of the longest modules takes alone (`time pytest tests/<module>`, 2 cores).
# `make test` runs two processes that take a module at a time, in collection order: the
# longest first, so that neither process is left with a long one at the end.
LONGEST_MODULES = {"test_viewer.py": 39, "test_cluster.py": 39, "test_governance.py": 28,
                   "test_service_security.py": 24, "test_tiling.py": 20, "test_fuzz.py": 18, "test_index.py": 15,
                   "test_end_to_end.py": 15, "test_cli_errors.py": 15, "test_concurrency.py": 14,
                   "test_crash_safety.py": 14, "test_load.py": 11, "test_bench_pipeline.py": 11}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -LONGEST_MODULES.get(item.path.name, 0))  # stable: each module keeps its order
