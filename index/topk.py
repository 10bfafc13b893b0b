"""Exact top-K with per-query exclusions: the brute-force answer the product promises (design §2).

The ranking rule, stated once and used by every search path:

* score = float32 dot product of the query vector with the item vector;
* a NaN score (only possible when a product overflows to ``inf - inf``) ranks
  below every real score, as if it were ``-inf``;
* order is score descending, ties broken by the lower item row (item rows are
  sorted by dataset id, so that is the lower movie id);
* an excluded item is never returned, whatever its score, and the answer has
  ``min(k, number of allowed items)`` items, never a duplicate.

Why numpy rather than FAISS selectors for the exact path: a FAISS
``SearchParameters`` selector applies to a whole ``search`` call, so per-user
exclusions would force one call per user, and FAISS does not order equal
scores by id. Scoring the batch with one BLAS matrix product (what
``IndexFlatIP`` does internally), blanking the excluded cells and selecting
with ``argpartition`` is one pass for the whole batch and exact by
construction; ``benchmarks/index_bench.py`` measures the alternatives.

An item filter (a boolean mask shared by the whole batch, see
:mod:`movierec.index.filters`) restricts the search to the allowed item rows:
the same search over that sub-catalog, its answers mapped back to item rows.
The rows stay in ascending order, so the tie rule is unchanged, and the answer
is the brute-force top-K of the catalog minus the excluded and the filtered-out
items. The sub-catalog's scores come from its own gathered vectors, or, when
copying those would cost more than the products it saves (one query, a wide
filter), from the full product with the allowed columns kept. Blanking the
filtered-out cells to -inf in the full score matrix instead gives the same
answer but leaves the partition thousands of equal -inf values, which it
handles slowly; ``benchmarks/index_bench.py`` (filters section) times both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Cells per scores block: bounds the memory of a batch against a large catalog (64 MiB of float32).
MAX_BLOCK_CELLS = 1 << 24
# Score magnitudes below this cannot reach float32's max (3.4e38), even with accumulated rounding.
FINITE_BOUND = 1e38


@dataclass(frozen=True)
class Recommendation:
    """One query's answer: internal item rows, best first, and their float32 scores."""

    item_rows: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.item_rows.shape[0])


EMPTY = Recommendation(np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32))


def check_k(k: int) -> None:
    """``k`` must be a positive int; the server maps this ValueError to INVALID_ARGUMENT before it gets here."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def as_exclusion(rows: npt.ArrayLike, n_items: int) -> npt.NDArray[np.int64]:
    """Validate one exclusion list (duplicates allowed) as item rows in ``[0, n_items)``."""
    array = np.asarray(rows)
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError("an exclusion list must be a 1-d array of integer item rows")
    array = array.astype(np.int64, copy=False)
    if array.min() < 0 or array.max() >= n_items:
        raise ValueError(f"excluded item row outside [0, {n_items})")
    return array


def rank_candidates(candidates: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], limit: int) -> Recommendation:
    """The best ``limit`` of ``candidates`` (distinct rows) by the ranking rule; ``scores`` aligned with them."""
    order = np.lexsort((candidates, -scores))[:limit]
    return Recommendation(candidates[order].astype(np.int32), scores[order].astype(np.float32))


def _exclusion_cells(excluded: Sequence[npt.NDArray[np.int64]], n_items: int) -> npt.NDArray[np.int64]:
    """Flat (C-order) indices of every excluded cell: assigning through a flat view is ~3x faster than
    2-d fancy indexing or ``np.put`` (measured on a 64 x 3,706 batch with 2,179 exclusions per row)."""
    if not excluded:
        return np.empty(0, dtype=np.int64)
    offsets = np.arange(len(excluded), dtype=np.int64) * n_items
    return np.concatenate(excluded) + np.repeat(offsets, [e.size for e in excluded])


def _flat_view(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A 1-d view (never a copy, so writes land in ``array``); scores from a matmul are C-contiguous."""
    if not array.flags.c_contiguous:
        raise ValueError("scores must be C-contiguous")
    return array.reshape(-1)


def top_k_from_scores(
    scores: npt.NDArray[np.float32], excluded: Sequence[npt.NDArray[np.int64]], k: int, *, finite: bool = False
) -> list[Recommendation]:
    """Exact top-``k`` of each row of ``scores`` (modified in place) minus that row's excluded items.

    Excluded cells are set to -inf; the k-th largest score of each row is found
    with a partition; every allowed item scoring at least that much is a
    candidate (so all ties at the boundary are seen) and the candidates are
    ordered by the ranking rule and cut to ``k``. A row with fewer than ``k``
    allowed items gets a -inf threshold and so all of them.

    ``finite=True`` is the caller's promise that no score is NaN or ±inf (see
    :class:`ExactSearcher`): then -inf marks exactly the excluded cells and no
    separate allowed-mask pass over the matrix is needed.
    """
    n_queries, n_items = scores.shape
    width = min(k, n_items)
    if width == 0:
        return [EMPTY] * n_queries
    cells = _exclusion_cells(excluded, n_items)
    allowed = None
    if not finite:
        scores[np.isnan(scores)] = -np.inf
        allowed = np.ones(scores.shape, dtype=bool)
        allowed.reshape(-1)[cells] = False
    _flat_view(scores)[cells] = -np.inf
    pivot = n_items - width
    thresholds = np.partition(scores, pivot, axis=1)[:, pivot]
    answers = []
    for q in range(n_queries):
        row = scores[q]
        if allowed is not None:
            picked = allowed[q] & (row >= thresholds[q])
        else:
            picked = row >= thresholds[q] if thresholds[q] > -np.inf else row > -np.inf
        candidates = np.flatnonzero(picked)
        answers.append(rank_candidates(candidates, row[candidates], width))
    return answers


class ExactSearcher:
    """Brute-force inner-product search over all items, exclusions applied inside the selection."""

    def __init__(self, item_vectors: npt.NDArray[np.float32]) -> None:
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._max_abs_item = float(np.abs(self.item_vectors).max()) if self.item_vectors.size else 0.0

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    def scores_are_finite(self, queries: npt.NDArray[np.float32]) -> bool:
        """True when no score can overflow: |q·v| <= dim * max|q| * max|v|, far below float32's max."""
        if not queries.size:
            return True
        bound = float(np.abs(queries).max()) * self._max_abs_item * queries.shape[1]
        return bool(bound < FINITE_BOUND)  # False for NaN/inf input too

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        excluded: Sequence[npt.NDArray[np.int64]],
        allowed_items: npt.NDArray[np.bool_] | None = None,
    ) -> list[Recommendation]:
        """One matrix product per block of queries; ``excluded[i]`` are validated item rows for query ``i``;
        ``allowed_items`` (one bool per item, for every query) limits the search to the items marked True."""
        if allowed_items is None:
            return self._scan(self.item_vectors, queries, k, excluded)
        if allowed_items.shape != (self.n_items,) or allowed_items.dtype != np.bool_:
            raise ValueError(f"allowed_items must be a bool mask of shape ({self.n_items},)")
        rows = np.flatnonzero(allowed_items)
        # Exclusions as positions among the allowed rows (rows is sorted; filtered-out exclusions drop out).
        positions = [np.searchsorted(rows, e[allowed_items[e]]) for e in excluded]
        # Gathering the allowed vectors reads and writes each of them (~2 passes over the rows kept) to save
        # scoring the others once per query; with one query and a wide filter the full product is cheaper.
        if queries.shape[0] * (self.n_items - rows.size) > 2 * rows.size:
            answers = self._scan(self.item_vectors[rows], queries, k, positions)
        else:
            answers = self._scan(self.item_vectors, queries, k, positions, columns=rows)
        return [Recommendation(rows[a.item_rows].astype(np.int32), a.scores) for a in answers]

    def _scan(
        self,
        item_vectors: npt.NDArray[np.float32],
        queries: npt.NDArray[np.float32],
        k: int,
        excluded: Sequence[npt.NDArray[np.int64]],
        columns: npt.NDArray[np.int64] | None = None,
    ) -> list[Recommendation]:
        """Exact top-``k`` over ``item_vectors`` (all items, or the allowed ones), or over the ``columns`` of
        their scores (the allowed ones); ``excluded`` and the answers index those items."""
        block = max(1, MAX_BLOCK_CELLS // max(1, item_vectors.shape[0]))  # the full width bounds the memory
        answers: list[Recommendation] = []
        for start in range(0, queries.shape[0], block):
            stop = start + block
            chunk = queries[start:stop]
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is ranked, not an error
                scores = chunk @ item_vectors.T
            if columns is not None:
                scores = np.take(scores, columns, axis=1)  # C-contiguous, as top_k_from_scores needs
            answers.extend(top_k_from_scores(scores, excluded[start:stop], k, finite=self.scores_are_finite(chunk)))
        return answers
