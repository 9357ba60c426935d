"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project checkout (the folder holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder: env UBS_DATA_DIR, default <repo>/../shared/data.

    Tests that need the real files fail (not skip) when it is missing, naming the path,
    so that CI cannot silently pass without reading real data.
    """
    path = Path(os.environ.get("UBS_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not path.is_dir():
        pytest.fail(f"real data folder not found: {path} (set UBS_DATA_DIR)")
    return path
