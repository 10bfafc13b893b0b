"""The one exception type every layer raises for bad input or bad files.

The CLI turns a :class:`MovierecError` into a one-line message and a non-zero
exit; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MovierecError(Exception):
    """A problem the user can fix: bad input, a missing or corrupt file."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class DataError(MovierecError):
    """A ratings or metadata file that cannot be read as asked."""


class BundleError(MovierecError):
    """A model or index bundle that is missing, incomplete, tampered with or of another format."""
