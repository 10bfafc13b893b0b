"""Progress bars are drawn on a terminal only: a log or a pipe gets no carriage returns or escape codes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from bundle_factory import make_model_bundle

from movierec.index import build_index
from movierec.progress import on_terminal, progress_bar


@pytest.fixture
def terminal() -> Iterator[tuple[IO[str], int]]:
    """The writing end of a pseudo-terminal (a real tty) and the fd to read what was drawn."""
    reader, writer = os.openpty()
    stream = os.fdopen(writer, "w")
    try:
        yield stream, reader
    finally:
        stream.close()
        os.close(reader)


def test_a_bar_is_drawn_on_a_terminal(terminal: tuple[IO[str], int]) -> None:
    stream, reader = terminal
    assert on_terminal(stream)
    with progress_bar(total=3, desc="work", file=stream) as bar:
        bar.update(3)
    stream.flush()
    assert "work" in os.read(reader, 4096).decode()


def test_no_bar_in_a_file_or_when_not_asked(terminal: tuple[IO[str], int]) -> None:
    log = io.StringIO()
    assert not on_terminal(log)
    with progress_bar(total=3, desc="work", file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""
    stream, _reader = terminal
    with progress_bar(total=3, desc="work", file=stream, enabled=False) as bar:
        assert bar.disable


def test_index_build_writes_no_bar_to_a_captured_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = make_model_bundle(tmp_path / "model", n_users=4, n_items=20, dim=4, seen_per_user=2)
    build_index(model, tmp_path / "index", progress=True)
    assert capfd.readouterr().err == ""
