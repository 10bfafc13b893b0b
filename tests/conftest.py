"""Shared fixtures: where MovieLens-1M lives (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.paths import default_ml1m_dir


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    """The MovieLens-1M folder; tests marked ``ml1m`` fail loudly in CI if it is absent."""
    path = default_ml1m_dir()
    if path is None or not (path / "ratings.dat").is_file():
        pytest.fail("MovieLens-1M not found: set MOVIEREC_DATA or provide ../shared/data/ml-1m")
    return path
