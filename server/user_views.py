"""Per-user views of live events, shared by every live event store (SQLite log, Redis).

A store keeps, per user, an immutable :class:`UserView`: the item ids the user
interacted with live, sorted, with each item's latest rating and offset. The
request path reads it with one dict lookup and no lock; writers replace it
whole. Every function here builds a new view and never mutates one, so a reader
holding the old view keeps a consistent answer.

The rule every store follows: an item keeps its highest-offset event. So
applying an event twice, or after a newer one (a follower racing the writer),
changes nothing, and all stores answer alike for the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

ItemIds: TypeAlias = Sequence[int] | npt.NDArray[np.integer]
"""One call's item ids, as every store's ``record`` takes them (a list from gRPC, an array from a rebuild)."""
EventRatings: TypeAlias = Sequence[float | None]
"""One rating per item id, None for an event without one."""
EventTimes: TypeAlias = Sequence[int] | npt.NDArray[np.integer]
"""One unix time (seconds) per item id."""


@dataclass(frozen=True)
class UserView:
    """One user's live interactions, sorted by item id; replaced whole on every write, never mutated.

    ``ratings`` (NaN: none) and ``offsets`` belong to each item's latest event.
    """

    seen: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float64]
    offsets: npt.NDArray[np.int64]
    liked: npt.NDArray[np.int64]


def user_view(
    seen: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    like_threshold: float,
) -> UserView:
    """A read-only view from sorted unique ``seen`` and its parallel arrays (liked: no rating or >= threshold)."""
    liked = seen[np.isnan(ratings) | (ratings >= like_threshold)]
    for array in (seen, ratings, offsets, liked):
        array.setflags(write=False)
    return UserView(seen, ratings, offsets, liked)


def merged_view(
    view: UserView | None,
    items: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    like_threshold: float,
) -> UserView:
    """``view`` with one call's events folded in: a binary search and one copy, never a sort of the history."""
    if items.shape[0] > 1:  # within a call the last event of an item wins (unique over the reversed call)
        items, last = np.unique(items[::-1], return_index=True)
        ratings, offsets = ratings[::-1][last], offsets[::-1][last]
    if view is None:
        return user_view(items, ratings, offsets, like_threshold)
    seen, held = view.seen, view.seen.shape[0]
    positions = seen.searchsorted(items)
    present = positions < held
    present[present] = seen[positions[present]] == items[present]
    merged_ratings, merged_offsets = view.ratings, view.offsets
    newer = present.copy()  # an event applied twice, or after a newer one, changes nothing
    newer[present] = offsets[present] > merged_offsets[positions[present]]
    if newer.any():  # re-recorded items: their latest rating and offset change in place (in a copy)
        merged_ratings, merged_offsets = merged_ratings.copy(), merged_offsets.copy()
        merged_ratings[positions[newer]] = ratings[newer]
        merged_offsets[positions[newer]] = offsets[newer]
    fresh = ~present
    n_fresh = int(np.count_nonzero(fresh))
    if not n_fresh:
        if not newer.any():
            return view
        return user_view(seen, merged_ratings, merged_offsets, like_threshold)
    slots = positions[fresh] + np.arange(n_fresh)  # where each new item lands in the merged arrays
    old = np.ones(held + n_fresh, dtype=bool)
    old[slots] = False
    columns = []
    for current, new in ((seen, items), (merged_ratings, ratings), (merged_offsets, offsets)):
        column = np.empty(held + n_fresh, dtype=current.dtype)
        column[old] = current
        column[slots] = new[fresh]
        columns.append(column)
    return user_view(columns[0], columns[1], columns[2], like_threshold)


def views_of(
    offsets: npt.NDArray[np.int64],
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
    like_threshold: float,
) -> dict[int, UserView]:
    """Every user's view from events in offset order (one stable sort): the latest event of each (user, item)."""
    if not offsets.size:
        return {}
    order = np.lexsort((items, users))  # by user, then item; stable, so offset order within a pair
    users, items, ratings, offsets = users[order], items[order], ratings[order], offsets[order]
    last_of_pair = np.ones(users.shape, dtype=bool)
    last_of_pair[:-1] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items, ratings, offsets = (
        users[last_of_pair],
        items[last_of_pair],
        ratings[last_of_pair],
        offsets[last_of_pair],
    )
    liked_mask = np.isnan(ratings) | (ratings >= like_threshold)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], users.shape[0]]
    for array in (items, ratings, offsets):
        array.setflags(write=False)
    views: dict[int, UserView] = {}
    for user, start, end in zip(users[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
        seen = items[start:end]
        liked = seen[liked_mask[start:end]]
        liked.setflags(write=False)
        views[user] = UserView(seen, ratings[start:end], offsets[start:end], liked)
    return views


def folded_views(
    views: dict[int, UserView],
    offsets: npt.NDArray[np.int64],
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
    like_threshold: float,
) -> dict[int, UserView]:
    """The new views of the users these events (offset order, any users) touch, merged into ``views``.

    One sort groups the batch, then each touched user's view is merged once:
    a follower applying a page of other writers' events pays per user, not per event.
    """
    return {
        user: merged_view(views.get(user), fresh.seen, fresh.ratings, fresh.offsets, like_threshold)
        for user, fresh in views_of(offsets, users, items, ratings, like_threshold).items()
    }


def forgotten_through(views: dict[int, UserView], offset: int, like_threshold: float) -> dict[int, UserView]:
    """``views`` without the items whose latest event is at or below ``offset`` (compacted into the index).

    A new dict: the caller swaps it in with one assignment, so a reader never
    sees a compaction half done (a live event never briefly disappears).
    """
    kept: dict[int, UserView] = {}
    for user, view in views.items():
        keep = view.offsets > offset
        if keep.all():
            kept[user] = view
        elif keep.any():
            kept[user] = user_view(view.seen[keep], view.ratings[keep], view.offsets[keep], like_threshold)
    return kept
