"""Shared fixtures: real worker processes, service URLs, the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def services_required() -> bool:
    return os.environ.get("ROBUSTAL_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The optional read-only data folder (``ROBUSTAL_SHARED_DIR``); skips when absent."""
    path = Path(os.environ.get("ROBUSTAL_SHARED_DIR", REPO_ROOT.parent / "shared"))
    if not (path / "data").is_dir():
        pytest.skip(f"shared data folder not found at {path}")
    return path
