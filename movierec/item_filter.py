"""Which items a request allows: one :class:`ItemFilter` for the client, the server and the index.

Pure Python (no numpy, no protobuf), so the wire-only client can build and
check a filter with the very class the index compiles to a mask
(:mod:`movierec.index.filters`), and a filter the client accepts means the
same thing on the server.

Semantics, all conditions combined with AND:

* ``include_genres``: the item has ANY of them (empty = no condition);
* ``exclude_genres``: the item has NONE of them;
* ``min_year`` / ``max_year``: inclusive bounds on the release year; an item
  whose year is unknown fails a filter with either bound (it cannot be shown
  to be in range).

Genre names are matched exactly (case-sensitive, as the dataset spells them).
Errors name at most a few offending values (:func:`quote_some`), so a request
carrying thousands of bad names gets an error of bounded size.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from movierec.errors import MovierecError

# An error quotes at most this many offending values, each cut to QUOTED_CHARS characters.
QUOTED_VALUES = 3
QUOTED_CHARS = 40


class FilterError(MovierecError, ValueError):
    """A filter the catalog cannot answer: an unknown genre, an empty year range, a non-integer year.

    A ValueError too, so callers that map bad arguments by ValueError (the server's INVALID_ARGUMENT) need
    no special case. Messages start with the field at fault.
    """


@dataclass(frozen=True, init=False)
class ItemFilter:
    """Which items a request allows; hashable, so compiled masks are cached per distinct filter.

    Genres may be given as any collection of names (normalised to ``frozenset``); years must be integers
    (numpy integers included) with ``min_year <= max_year``; the default allows every item.
    """

    include_genres: frozenset[str]
    exclude_genres: frozenset[str]
    min_year: int | None
    max_year: int | None

    def __init__(
        self,
        include_genres: Iterable[str] = (),
        exclude_genres: Iterable[str] = (),
        min_year: int | None = None,
        max_year: int | None = None,
    ) -> None:
        for name, value in (("include_genres", include_genres), ("exclude_genres", exclude_genres)):
            if isinstance(value, str):  # frozenset("Drama") would be a set of letters
                raise FilterError(f"{name} must be a collection of genre names, not the string {quote_some([value])}")
            object.__setattr__(self, name, frozenset(value))
        for name, year in (("min_year", min_year), ("max_year", max_year)):
            if year is not None and (isinstance(year, bool) or not isinstance(year, numbers.Integral)):
                raise FilterError(f"{name} must be an integer year, got {cut(repr(year))}")
            object.__setattr__(self, name, year)
        if min_year is not None and max_year is not None and min_year > max_year:
            raise FilterError(f"min_year {min_year} is after max_year {max_year}: no item can match")

    @property
    def is_empty(self) -> bool:
        """True when the filter allows every item (the unfiltered search path is then used)."""
        return not (self.include_genres or self.exclude_genres) and self.min_year is None and self.max_year is None


def quote_some(values: Sequence[str], total: int | None = None) -> str:
    """``'a', 'b', 'c' and 299,997 more``: at most :data:`QUOTED_VALUES` values, each cut short, so an
    error message stays small whatever a caller sent; ``total`` is the count when ``values`` is a sample."""
    count = len(values) if total is None else total
    shown = [repr(cut(value)) for value in values[:QUOTED_VALUES]]
    more = count - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def cut(value: str) -> str:
    """``value``, or its first :data:`QUOTED_CHARS` characters ending in "..." when longer."""
    return value if len(value) <= QUOTED_CHARS else value[: QUOTED_CHARS - 3] + "..."
