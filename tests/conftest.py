"""Shared fixtures. Every test that reads ../shared/data goes through `shared_data`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data(*parts: str) -> Path:
    """A path inside the shared real-data folder, or skip the test when it is not there.

    The folder is `<repo>/../shared/data`; set GIGAFACE_SHARED_DATA to use another one.
    """
    override = os.environ.get("GIGAFACE_SHARED_DATA")
    base = Path(override) if override else REPO.parent / "shared" / "data"
    if not base.is_dir():
        how = "GIGAFACE_SHARED_DATA" if override else "the default location <repo>/../shared/data"
        pytest.skip(f"real test data not available: {base} (from {how}) is not a folder; "
                    "set GIGAFACE_SHARED_DATA to the shared data folder to run this test")
    path = base.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is missing from the shared data folder")
    return path


@pytest.fixture(scope="session")
def detector():
    """One CenterFace session for all in-process scans (loading it takes a moment)."""
    from gigaface.detector import CenterFace

    return CenterFace()
