"""Generic ratings tables: which delimiter, which column is which.

A table from another system rarely says ``userId``; common spellings are
accepted (``user_id``, ``movie``, ``score``, ``time``...) and an explicit mapping
wins over guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from movierec.errors import DataError
from movierec.trainer.data.table import RawTable

DELIMITERS = (",", "\t", ";", "|")
ROLES = ("user", "item", "rating", "timestamp")
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "customer", "customerid"),
    "item": ("item", "itemid", "iid", "movie", "movieid", "mid", "product", "productid"),
    "rating": ("rating", "score", "stars", "rate", "value"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "unixtime", "unixreviewtime"),
}
"""Header spellings per role, compared after lower-casing and dropping ``_``, ``-`` and spaces."""


class TableColumns(NamedTuple):
    """Which column holds each field (a header name, or a position for header-less files)."""

    user: str | int
    item: str | int
    rating: str | int
    timestamp: str | int | None


def sniff_delimiter(raw: bytes, path: Path) -> str:
    """The candidate delimiter that splits the header line into the most fields."""
    header = raw.lstrip().split(b"\n", 1)[0].decode("utf-8", errors="replace")
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    if counts[best] == 0:
        raise DataError(
            "cannot tell the delimiter: the header line has no ',', tab, ';' or '|' (wrong separator?)",
            path=path,
            line=1,
        )
    return best


def _normalised(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def resolve_columns(table: RawTable, mapping: Mapping[str, str] | None) -> TableColumns:
    """Map each role to a header; explicit ``mapping`` entries first, then the aliases."""
    header = [str(c) for c in table.frame.columns]
    mapping = dict(mapping or {})
    unknown_roles = set(mapping) - set(ROLES)
    if unknown_roles:
        raise DataError(f"unknown column role(s) {sorted(unknown_roles)}; use {', '.join(ROLES)}", path=table.path)
    found: dict[str, str] = {}
    for role in ROLES:
        if role in mapping:
            if mapping[role] not in header:
                raise DataError(
                    f"column {mapping[role]!r} (for {role}) is not in the header {header}", path=table.path, line=1
                )
            found[role] = mapping[role]
            continue
        matches = [h for h in header if _normalised(h) in ALIASES[role]]
        if matches:
            found[role] = matches[0]
    missing = [role for role in ("user", "item", "rating") if role not in found]
    if missing:
        raise DataError(
            f"no {'/'.join(missing)} column in the header {header}; name them (e.g. user_id, item_id, rating) "
            "or pass a column mapping",
            path=table.path,
            line=1,
        )
    return TableColumns(found["user"], found["item"], found["rating"], found.get("timestamp"))
