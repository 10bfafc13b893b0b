"""Movie metadata parsers: ``movies.dat``, ``movies.csv`` and ML-100K's ``u.item``.

Metadata files are small (thousands of lines), so they are parsed line by line
in Python, which lets every broken line be reported precisely. Titles carry
their year as a trailing ``(1995)``; it is split off into its own field so the
serving layer can filter on it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from movierec.errors import DataError
from movierec.trainer.data.table import check_text, shown_value
from movierec.trainer.data.types import Movies

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
"""The 19 genre flags of ``u.item``, in column order (used when ``u.genre`` is absent)."""

NO_GENRES = "(no genres listed)"
# ASCII digits only: ``\d`` would also take Arabic-Indic, fullwidth and other scripts' digits (see split_title_year).
_YEAR = re.compile(r"\(([0-9]{4})\)")
_RELEASE_YEAR = re.compile(r"([0-9]{4})\s*$")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_INT64 = np.iinfo(np.int64)


def split_title_year(raw_title: str) -> tuple[str, int | None]:
    """``"Heat (1995)"`` -> ``("Heat", 1995)``; the year is the LAST ``(dddd)`` in the title.

    Titles may hold other parentheses (``"City of Lost Children, The (Cité des enfants perdus, La) (1995)"``),
    so the last four-digit group wins. It is cut from the title only when it ends the title.

    Only ASCII digits make a year: ``"Heat (١٩٩٥)"`` or fullwidth ``"Heat (１９９５)"`` keep that text in
    the title and get an unknown year (None), as does any title without one. A number in another script may
    count in another calendar, and one odd title is no reason to refuse a whole metadata file.
    """
    title = raw_title.strip()
    matches = list(_YEAR.finditer(title))
    if not matches:
        return title, None
    last = matches[-1]
    if last.end() == len(title):
        title = title[: last.start()].rstrip()
    return title, int(last.group(1))


def whole_number(text: str) -> int | None:
    """``text`` as an int when it is an optionally signed run of ASCII digits (surrounding blanks allowed).

    Stricter than ``int()``, which also takes other scripts' digits and ``1_000``: the ratings parser
    reads neither, so a metadata id written that way could never match a rating. More than 20 digits
    come back as a number out of int64 range without converting them (``int()`` refuses over 4300).
    """
    stripped = text.strip()
    if not _WHOLE_NUMBER.fullmatch(stripped):
        return None
    digits = stripped.lstrip("+-").lstrip("0")
    if len(digits) > len(str(_INT64.max)):
        return _INT64.max + 1
    return int(stripped)


def _genre_list(field: str) -> list[str]:
    return [g for g in field.strip().split("|") if g and g != NO_GENRES]


def _decode_metadata(path: Path) -> str:
    """Text of a metadata file: UTF-8 when it decodes, else latin-1 (ML-1M's ``movies.dat`` is latin-1)."""
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, split at ``\n`` only (a ``\r`` before it is dropped).

    ``str.splitlines`` would also split at U+0085, U+2028, ``\x1c``...: latin-1's decoding of byte 0x85
    (cp1252's ellipsis) inside a title would cut the line in two and shift every later line number.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


class _MoviesBuilder:
    """Collects rows and refuses a movie id given twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: list[int] = []
        self.titles: list[str] = []
        self.years: list[int | None] = []
        self.genres: list[list[str]] = []
        self._line_of: dict[int, int] = {}

    def add(self, line: int, id_field: str, raw_title: str, genres: list[str], year: int | None = None) -> None:
        movie_id = whole_number(id_field)
        if movie_id is None:
            raise DataError(f"movie id is not a whole number: {shown_value(id_field)}", path=self.path, line=line)
        if not _INT64.min <= movie_id <= _INT64.max:
            raise DataError(
                f"movie id is beyond the 64-bit integer range: {shown_value(id_field)}", path=self.path, line=line
            )
        if movie_id in self._line_of:
            raise DataError(
                f"movie id {movie_id} already given on line {self._line_of[movie_id]}", path=self.path, line=line
            )
        self._line_of[movie_id] = line
        title, title_year = split_title_year(raw_title)
        self.ids.append(movie_id)
        self.titles.append(title)
        self.years.append(title_year if title_year is not None else year)
        self.genres.append(genres)

    def build(self) -> Movies:
        if not self.ids:
            raise DataError("metadata file has no rows", path=self.path)
        return Movies(np.asarray(self.ids, dtype=np.int64), self.titles, self.years, self.genres)


def read_dat_movies(path: Path) -> Movies:
    """``MovieID::Title (Year)::Genre|Genre``; split at the first and last ``::`` so a title may contain one."""
    movies = _MoviesBuilder(path)
    for number, line in _numbered_lines(_decode_metadata(path)):
        movie_id, sep1, rest = line.partition("::")
        title, sep2, genres = rest.rpartition("::")
        if not (sep1 and sep2):
            raise DataError("expected 'MovieID::Title::Genres'", path=path, line=number)
        movies.add(number, movie_id, title, _genre_list(genres))
    return movies.build()


def read_csv_movies(path: Path) -> Movies:
    """MovieLens ``movies.csv`` (``movieId,title,genres``; titles with commas are quoted), UTF-8."""
    raw = _read_bytes(path)
    text = (check_text(raw, path) or raw.decode("ascii")).removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    movies = _MoviesBuilder(path)
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise DataError("expected the header 'movieId,title,genres'", path=path, line=1)
        for row in reader:
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"expected 3 fields, found {len(row)}", path=path, line=reader.line_num)
            movies.add(reader.line_num, row[0], row[1], _genre_list(row[2]))
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
    return movies.build()


def read_100k_genres(path: Path) -> tuple[str, ...]:
    """``u.genre``: ``name|index`` lines, returned in index order."""
    by_index: dict[int, str] = {}
    for number, line in _numbered_lines(_decode_metadata(path)):
        name, sep, index_field = line.rpartition("|")
        index = whole_number(index_field) if sep else None
        if index is None or index < 0:
            raise DataError("expected 'Genre|index'", path=path, line=number)
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError("genre indices are not 0..n-1", path=path)
    return tuple(by_index[i] for i in range(len(by_index)))


def read_100k_items(path: Path, genre_names: tuple[str, ...] = ML100K_GENRES) -> Movies:
    """``u.item``: ``id|title|release date|video date|IMDb URL|`` then one 0/1 flag per genre (latin-1)."""
    movies = _MoviesBuilder(path)
    n_fields = 5 + len(genre_names)
    for number, line in _numbered_lines(_decode_metadata(path)):
        fields = line.split("|")
        if len(fields) != n_fields:
            raise DataError(f"expected {n_fields} '|'-separated fields, found {len(fields)}", path=path, line=number)
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError("genre flags must be 0 or 1", path=path, line=number)
        genres = [name for name, flag in zip(genre_names, flags, strict=True) if flag == "1" and name != "unknown"]
        release = _RELEASE_YEAR.search(fields[2])
        movies.add(number, fields[0], fields[1], genres, int(release.group(1)) if release else None)
    return movies.build()
