"""Exact item filters (genres to include or exclude, a release-year range) as boolean item masks.

A filter never post-filters a short list: it compiles to an ``allowed`` mask
over the whole catalog, and the exact search (:mod:`movierec.index.topk`)
scans only the allowed items, exclusions applied inside that scan as usual. So
a filtered answer is the brute-force top-K of the catalog minus the excluded
items minus the items that fail the filter, with the usual order and tie rule,
and has ``min(k, allowed)`` items.

Semantics of :class:`ItemFilter`, all conditions combined with AND:

* ``include_genres``: the item has ANY of them (empty = no condition);
* ``exclude_genres``: the item has NONE of them;
* ``min_year`` / ``max_year``: inclusive bounds on the release year; an item
  whose year is unknown fails a filter with either bound (it cannot be shown
  to be in range).

Genre names are matched exactly (case-sensitive, as the dataset spells them);
an unknown name is a :class:`FilterError` listing the valid ones, so a typo is
an error rather than a silently empty answer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from movierec.bundle import ItemMetadata
from movierec.errors import MovierecError

# Distinct filters whose compiled mask is kept per ServingIndex (a mask is n_items bytes).
MASK_CACHE_SIZE = 256


class FilterError(MovierecError, ValueError):
    """A filter the catalog cannot answer: an unknown genre, an empty year range, a non-integer year.

    A ValueError too, so callers that map bad arguments by ValueError (the server's INVALID_ARGUMENT) need
    no special case.
    """


@dataclass(frozen=True)
class ItemFilter:
    """Which items a request allows; hashable, so compiled masks are cached per distinct filter.

    Genre collections are normalised to ``frozenset`` (any iterable of str is accepted).
    """

    include_genres: frozenset[str] = field(default_factory=frozenset)
    exclude_genres: frozenset[str] = field(default_factory=frozenset)
    min_year: int | None = None
    max_year: int | None = None

    def __post_init__(self) -> None:
        for name in ("include_genres", "exclude_genres"):
            value: Iterable[str] = getattr(self, name)
            if isinstance(value, str):  # frozenset("Drama") would be a set of letters
                raise FilterError(f"{name} must be a collection of genre names, not the string {value!r}")
            object.__setattr__(self, name, frozenset(value))
        for name in ("min_year", "max_year"):
            year = getattr(self, name)
            if year is not None and (isinstance(year, bool) or not isinstance(year, int | np.integer)):
                raise FilterError(f"{name} must be an integer year, got {year!r}")
        if self.min_year is not None and self.max_year is not None and self.min_year > self.max_year:
            raise FilterError(f"min_year {self.min_year} is after max_year {self.max_year}: no item can match")

    @property
    def is_empty(self) -> bool:
        """True when the filter allows every item (the unfiltered search path is then used)."""
        return not (self.include_genres or self.exclude_genres) and self.min_year is None and self.max_year is None


class CatalogFilters:
    """Per-genre bitmaps and release years of one catalog, precomputed at load; compiles filters to masks.

    Thread-safe: the bitmaps are read-only and the mask cache is a ``functools.lru_cache`` (which locks).
    Compiled masks are shared between requests, so they are returned read-only.
    """

    def __init__(self, items: ItemMetadata) -> None:
        self.n_items = len(items)
        self.genres: list[str] = sorted({genre for genres in items.genres for genre in genres})
        position = {genre: g for g, genre in enumerate(self.genres)}
        self._bitmaps = np.zeros((len(self.genres), self.n_items), dtype=bool)
        for row, genres in enumerate(items.genres):
            self._bitmaps[[position[genre] for genre in genres], row] = True
        self._position = position
        self._year_known = np.array([year is not None for year in items.years], dtype=bool)
        self._years = np.array([year if year is not None else 0 for year in items.years], dtype=np.int64)
        self._cached_mask = functools.lru_cache(maxsize=MASK_CACHE_SIZE)(self._compile)

    def allowed(self, item_filter: ItemFilter | None) -> npt.NDArray[np.bool_] | None:
        """The read-only mask of items ``item_filter`` allows, or None when it allows every item."""
        if item_filter is None or item_filter.is_empty:
            return None
        self._check_genres(item_filter.include_genres | item_filter.exclude_genres)
        return self._cached_mask(item_filter)

    def _compile(self, item_filter: ItemFilter) -> npt.NDArray[np.bool_]:
        allowed = np.ones(self.n_items, dtype=bool)
        if item_filter.include_genres:
            allowed &= self._any_of(item_filter.include_genres)
        if item_filter.exclude_genres:
            allowed &= ~self._any_of(item_filter.exclude_genres)
        if item_filter.min_year is not None or item_filter.max_year is not None:
            allowed &= self._year_known
            if item_filter.min_year is not None:
                allowed &= self._years >= item_filter.min_year
            if item_filter.max_year is not None:
                allowed &= self._years <= item_filter.max_year
        allowed.setflags(write=False)
        return allowed

    def _any_of(self, genres: Iterable[str]) -> npt.NDArray[np.bool_]:
        rows = [self._position[genre] for genre in sorted(genres)]
        result: npt.NDArray[np.bool_] = np.logical_or.reduce(self._bitmaps[rows], axis=0)
        return result

    def _check_genres(self, genres: Iterable[str]) -> None:
        unknown = sorted(set(genres) - self._position.keys())
        if unknown:
            raise FilterError(f"unknown genre(s) {', '.join(map(repr, unknown))}; valid: {_listing(self.genres)}")


def _listing(genres: Sequence[str]) -> str:
    return ", ".join(genres) if genres else "none (this catalog has no genre data)"
