"""Shared fixtures: where MovieLens-1M lives (never copied into the repo); ``recctl`` for the index commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from movierec.clients.cli import main as cli
from movierec.paths import default_ml1m_dir

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    """The MovieLens-1M folder; tests marked ``ml1m`` fail loudly in CI if it is absent."""
    path = default_ml1m_dir()
    if path is None or not (path / "ratings.dat").is_file():
        pytest.fail("MovieLens-1M not found: set MOVIEREC_DATA or provide ../shared/data/ml-1m")
    return path


@pytest.fixture
def recctl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``recctl`` with only the index commands registered (the others belong to other layers)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("movierec.clients.cli.index_cmd",))

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
