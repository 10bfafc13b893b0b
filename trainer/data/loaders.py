"""Load any MovieLens release (or a plain ratings table) into a :class:`Dataset`.

Formats, by the files that give them away:

==========  ===================================================================
``ml-dat``  ML-1M / ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``),
            optional ``movies.dat`` (latin-1 or UTF-8) and ``users.dat`` (not needed)
``ml-100k`` ``u.data`` (tab-separated, no header), optional ``u.item`` and ``u.genre``
``ml-csv``  MovieLens CSV releases: ``ratings.csv`` (``userId,movieId,rating,timestamp``),
            optional ``movies.csv``
``table``   any CSV/TSV with a header naming user, item and rating columns
            (timestamp optional); the delimiter is sniffed
==========  ===================================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from movierec.errors import DataError
from movierec.trainer.data.metadata import (
    ML100K_GENRES,
    read_100k_genres,
    read_100k_items,
    read_csv_movies,
    read_dat_movies,
)
from movierec.trainer.data.table import RawTable, ratings_from_table, read_table
from movierec.trainer.data.tabular import TableColumns, resolve_columns, sniff_delimiter
from movierec.trainer.data.types import Dataset, Movies

FORMATS = ("ml-dat", "ml-100k", "ml-csv", "table")
ML_CSV_HEADER = ("userId", "movieId", "rating", "timestamp")
_DAT_SEPARATOR = b"\x1f"
"""``::`` is replaced by this one byte so the pandas C engine can split the file (it cannot take a
two-character separator); it is a control character no ratings file contains."""
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")


def load_dataset(path: Path | str, fmt: str | None = None, *, columns: Mapping[str, str] | None = None) -> Dataset:
    """Load ratings (and movie metadata when present) from a folder or a ratings file.

    ``fmt`` forces one of :data:`FORMATS`; otherwise it is detected from the
    files present. ``columns`` maps ``user``/``item``/``rating``/``timestamp`` to
    header names of a generic table (and implies ``fmt="table"``).
    Raises :class:`DataError` naming the file (and line) for anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", path=path)
    if fmt is None:
        fmt = "table" if columns else detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", path=path)
    if columns and fmt != "table":
        raise DataError(f"a column mapping only applies to --format table, not {fmt}", path=path)
    if fmt == "table":
        return _load_table(path, columns)
    return _MOVIELENS_LOADERS[fmt](path)


def detect_format(path: Path) -> str:
    """The format a folder (or ratings file) is in, judged by file names and the CSV header."""
    folder = path.parent if path.is_file() else path
    name = path.name if path.is_file() else None
    if name in (None, "ratings.dat") and (folder / "ratings.dat").is_file():
        return "ml-dat"
    if name in (None, "u.data") and (folder / "u.data").is_file():
        return "ml-100k"
    if name in (None, "ratings.csv") and (folder / "ratings.csv").is_file():
        return "ml-csv" if _header_of(folder / "ratings.csv")[: len(ML_CSV_HEADER)] == ML_CSV_HEADER else "table"
    if path.is_file() or _table_candidates(folder):
        return "table"
    raise DataError(
        "no ratings file found: expected ratings.dat (ML-1M/10M), u.data (ML-100K), ratings.csv "
        "(MovieLens CSV) or one .csv/.tsv table",
        path=path,
    )


def _header_of(path: Path) -> tuple[str, ...]:
    with path.open("rb") as handle:
        first = handle.readline().decode("utf-8-sig", errors="replace").strip()
    return tuple(field.strip().strip('"') for field in first.split(","))


def _table_candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _TABLE_SUFFIXES)


def _ratings_file(path: Path, file_name: str) -> Path:
    target = path if path.is_file() else path / file_name
    if not target.is_file():
        raise DataError(f"{file_name} not found", path=path)
    return target


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None


def _optional(folder: Path, name: str) -> Path | None:
    candidate = folder / name
    return candidate if candidate.is_file() else None


def _dataset(
    name: str, fmt: str, ratings_file: Path, raw: bytes, table: RawTable, cols: TableColumns, movies: Movies | None
) -> Dataset:
    ratings = ratings_from_table(table, cols.user, cols.item, cols.rating, cols.timestamp, allow_dates=fmt == "table")
    return Dataset(
        name=name,
        format=fmt,
        path=ratings_file.parent,
        ratings=ratings,
        movies=movies,
        checksum=hashlib.sha256(raw).hexdigest(),
        ratings_file=ratings_file,
        has_timestamps=cols.timestamp is not None,
    )


def _release_name(folder: Path, fallback: str) -> str:
    """A folder called ``ml-...`` names its release (``ml-1m``, ``ml-10M100K``, ``ml-latest-small``)."""
    return folder.name if folder.name.lower().startswith("ml-") else fallback


_POSITIONAL = TableColumns(user=0, item=1, rating=2, timestamp=3)


def _require_fields(table: RawTable, expected: int, separator: str) -> None:
    found = table.frame.shape[1]
    if found != expected:
        hint = " (wrong separator?)" if found == 1 else ""
        raise DataError(
            f"expected {expected} fields separated by {separator!r}, found {found}{hint}",
            path=table.path,
            line=int(table.lines[0]),
        )


def _load_dat(path: Path) -> Dataset:
    ratings_file = _ratings_file(path, "ratings.dat")
    raw = _read_bytes(ratings_file)
    table = read_table(raw.replace(b"::", _DAT_SEPARATOR), ratings_file, sep="\x1f", header=False, separator_label="::")
    _require_fields(table, 4, "::")
    folder = ratings_file.parent
    movies_file = _optional(folder, "movies.dat")
    movies = read_dat_movies(movies_file) if movies_file else None
    return _dataset(_release_name(folder, "movielens-dat"), "ml-dat", ratings_file, raw, table, _POSITIONAL, movies)


def _load_100k(path: Path) -> Dataset:
    ratings_file = _ratings_file(path, "u.data")
    raw = _read_bytes(ratings_file)
    table = read_table(raw, ratings_file, sep="\t", header=False)
    _require_fields(table, 4, "\t")
    folder = ratings_file.parent
    genre_file = _optional(folder, "u.genre")
    genres = read_100k_genres(genre_file) if genre_file else ML100K_GENRES
    item_file = _optional(folder, "u.item")
    movies = read_100k_items(item_file, genres) if item_file else None
    return _dataset("ml-100k", "ml-100k", ratings_file, raw, table, _POSITIONAL, movies)


def _load_ml_csv(path: Path) -> Dataset:
    ratings_file = _ratings_file(path, "ratings.csv")
    raw = _read_bytes(ratings_file)
    table = read_table(raw, ratings_file, sep=",", header=True)
    header = tuple(str(c) for c in table.frame.columns)
    if header[: len(ML_CSV_HEADER)] != ML_CSV_HEADER:
        raise DataError(
            f"expected the header {','.join(ML_CSV_HEADER)}, found {','.join(header)} "
            "(use --format table for other column names)",
            path=ratings_file,
            line=1,
        )
    folder = ratings_file.parent
    movies_file = _optional(folder, "movies.csv")
    movies = read_csv_movies(movies_file) if movies_file else None
    cols = TableColumns(*ML_CSV_HEADER)
    return _dataset(_release_name(folder, "movielens-csv"), "ml-csv", ratings_file, raw, table, cols, movies)


_MOVIELENS_LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "ml-dat": _load_dat,
    "ml-100k": _load_100k,
    "ml-csv": _load_ml_csv,
}


def _load_table(path: Path, columns: Mapping[str, str] | None) -> Dataset:
    if path.is_file():
        ratings_file = path
    else:
        candidates = _table_candidates(path)
        preferred = [p for p in candidates if p.stem.lower() == "ratings"]
        if len(preferred) == 1:
            candidates = preferred
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise DataError(f"expected one .csv/.tsv ratings table in the folder, found {found}", path=path)
        ratings_file = candidates[0]
    raw = _read_bytes(ratings_file)
    table = read_table(raw, ratings_file, sep=sniff_delimiter(raw, ratings_file), header=True)
    cols = resolve_columns(table, columns)
    return _dataset("table", "table", ratings_file, raw, table, cols, None)
