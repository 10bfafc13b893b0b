"""Dataset id -> model row, as a dense table where the ids allow it, else by binary search.

A table lookup is one gather per id, where a binary search (``searchsorted``)
costs a dozen unpredictable branches per id: it keeps a request with thousands
of exclusions cheap, and finds the user of every request in one indexing step
(~10 us per request through a one-element ``searchsorted``, well under 1 us
through the table). MovieLens user and movie ids are small, dense integers, so
the tables stay small (4 bytes per possible id); sparse or huge ids (hashes,
64-bit keys) fall back to the binary search, with the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from movierec.index.events import rows_of

# Largest id served through a dense id -> row table (64 MiB of int32); beyond it, binary search.
MAX_LOOKUP_IDS = 1 << 24
_NO_ROWS: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)
_NO_ROWS.setflags(write=False)


class IdLookup:
    """Rows of one sorted, unique id array (a model's user ids or item ids)."""

    def __init__(self, sorted_ids: npt.NDArray[np.int64]) -> None:
        self.ids = sorted_ids
        self.table = _dense_table(sorted_ids)

    def row(self, wanted: int) -> int | None:
        """The row of id ``wanted``, or None when no row has it."""
        table = self.table
        if table is None:
            found = int(rows_of(self.ids, np.array([wanted], dtype=np.int64))[0])
            return found if found >= 0 else None
        if not 0 <= wanted < table.shape[0]:
            return None
        found = int(table[wanted])
        return found if found >= 0 else None

    def rows(self, wanted: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The row of each wanted id, in order; -1 where no row has it."""
        ids = np.asarray(wanted, dtype=np.int64).reshape(-1)
        table = self.table
        if table is None:
            return rows_of(self.ids, ids)
        rows = np.full(ids.shape, -1, dtype=np.int64)
        inside = (ids >= 0) & (ids < table.shape[0])
        rows[inside] = table[ids[inside]]
        return rows

    def known_rows(self, wanted: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        """Rows of the known ids, in the given order (duplicates kept); unknown ids are dropped.

        ``np.array`` reads a protobuf repeated field directly, far cheaper than going through a list.
        """
        if len(wanted) == 0:  # the common case for exclusions: skip the conversion and the lookup
            return _NO_ROWS
        ids = np.array(wanted, dtype=np.int64).reshape(-1)
        table = self.table
        if table is None:
            rows = rows_of(self.ids, ids)
            return rows[rows >= 0].astype(np.int32)
        gathered: npt.NDArray[np.int32] = table[ids[(ids >= 0) & (ids < table.shape[0])]]
        known: npt.NDArray[np.int32] = gathered[gathered >= 0]
        return known


def _dense_table(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int32] | None:
    """``table[id] = row`` (-1 where no row has that id), or None when ids are too sparse for a table."""
    if ids.size == 0 or ids.min() < 0 or ids.max() >= MAX_LOOKUP_IDS:
        return None
    table = np.full(int(ids.max()) + 1, -1, dtype=np.int32)
    table[ids] = np.arange(ids.size, dtype=np.int32)
    return table
