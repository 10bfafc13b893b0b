"""Negative sampling in the item space, never returning a positive of the user.

A negative is an item row ``0 <= j < n_items`` (never a user row: users
and items share one node numbering in the graph) with ``(u, j)`` not among
the user's training positives. Sampling is vectorised rejection: draw uniformly,
look every draw up at once in the sorted ``u·n_items + i`` keys of the CSR,
redraw only the rejected ones. A user with every item positive has no valid
negative and is refused up front rather than looping forever.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR


class NegativeSampler:
    """Uniform negatives for (user, positive) pairs from one positives CSR."""

    def __init__(self, positives: CSR) -> None:
        users, items = positives.to_pairs()
        self._keys = users * positives.n_cols + items.astype(np.int64)  # sorted: CSR rows are sorted
        self._n_items = positives.n_cols
        self._row_lengths = positives.row_lengths()

    def is_positive(self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Element-wise membership of (user, item) in the positives."""
        keys = users * self._n_items + items
        where = np.searchsorted(self._keys, keys)
        found = np.zeros(keys.shape, dtype=bool)
        inside = where < self._keys.shape[0]
        found[inside] = self._keys[where[inside]] == keys[inside]
        return found

    def sample(self, users: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """One negative item row per entry of ``users``."""
        if users.size and int(self._row_lengths[users].max()) >= self._n_items:
            raise ValueError("a user has every item as a positive: no negative exists")
        negatives = np.asarray(rng.integers(0, self._n_items, size=users.shape[0]), dtype=np.int64)
        pending = np.flatnonzero(self.is_positive(users, negatives))
        while pending.size:
            negatives[pending] = rng.integers(0, self._n_items, size=pending.size, dtype=np.int64)
            pending = pending[self.is_positive(users[pending], negatives[pending])]
        return negatives


def row_entries(csr: CSR, rows: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(position of the row within ``rows``, index into ``csr.indices``) for every stored entry of the given rows."""
    starts = csr.indptr[rows]
    lengths = csr.indptr[rows + 1] - starts
    local_rows = np.repeat(np.arange(rows.shape[0], dtype=np.int64), lengths)
    positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    return local_rows, positions
