"""Item filters (genres to include or exclude, a release-year range) compiled to boolean item masks.

A filter never post-filters a short list: it compiles to an ``allowed`` mask
over the whole catalog, and the exact search (:mod:`movierec.index.topk`)
scans only the allowed items, exclusions applied inside that scan as usual. So
a filtered answer is the brute-force top-K of the catalog minus the excluded
items minus the items that fail the filter, with the usual order and tie rule,
and has ``min(k, allowed)`` items.

:class:`ItemFilter` and :class:`FilterError` live in :mod:`movierec.item_filter`
(pure Python, shared with the client), which also states the semantics. An
unknown genre name is a :class:`FilterError` naming a few of the unknown names
and the valid ones, so a typo is an error rather than a silently empty answer;
checking a filter costs O(number of genres), whatever the caller sent: a list
longer than the catalog's genres is refused by its length alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from movierec.bundle import ItemMetadata
from movierec.item_filter import FilterError, ItemFilter, quote_some

__all__ = ["MASK_CACHE_SIZE", "CatalogFilters", "FilterError", "ItemFilter"]

# Distinct filters whose compiled mask is kept per ServingIndex (a mask is n_items bytes).
MASK_CACHE_SIZE = 256
# Characters of valid genre names an error lists, at most (a catalog may have hundreds; GetInfo lists them all).
LISTING_CHARS = 300


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
        self._check_genres("include_genres", item_filter.include_genres)
        self._check_genres("exclude_genres", item_filter.exclude_genres)
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

    def _check_genres(self, field: str, genres: frozenset[str]) -> None:
        """O(len(self.genres)): a longer set must hold an unknown name, so its length alone refuses it."""
        if len(genres) > len(self.genres):
            raise FilterError(
                f"{field} names {len(genres):,} genres but this catalog has {len(self.genres)}: {_listing(self.genres)}"
            )
        unknown = sorted(genres - self._position.keys())
        if unknown:
            raise FilterError(f"{field}: unknown genre(s) {quote_some(unknown)}; valid: {_listing(self.genres)}")


def _listing(genres: Sequence[str]) -> str:
    if not genres:
        return "none (this catalog has no genre data)"
    listed: list[str] = []
    used = 0
    for name in genres:
        used += len(name) + 2
        if used > LISTING_CHARS:
            return f"{', '.join(listed)} and {len(genres) - len(listed)} more (GetInfo lists them all)"
        listed.append(name)
    return ", ".join(listed)
