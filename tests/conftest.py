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


# -- trained bundles ------------------------------------------------------------

# A short real training run: small enough for CI (well under a minute on two cores),
# long enough to beat the popularity baseline on ml-100k.
SHORT_TRAINING = (
    "--epochs",
    "9",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.005",
    "--ema-decay",
    "0.9",
    # A safety net only: the epochs, not the machine's load, decide how far this run trains.
    "--time-budget-s",
    "600",
)


@pytest.fixture(scope="session")
def ml100k_bundle(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained briefly on real ml-100k through `ubs-embed train`; returns its directory.

    The directory also holds the training checkpoint (checkpoint.pt) and metrics.json.
    """
    from model.cli import main

    out = tmp_path_factory.mktemp("ml100k_bundle")
    argv = ["train", "--data", str(data_dir / "ml-100k"), "--format", "movielens", "--out", str(out)]
    if main([*argv, *SHORT_TRAINING, "--no-progress"]) != 0:
        pytest.fail("ubs-embed train failed on ml-100k")
    return out
