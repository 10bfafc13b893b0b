"""Exact top-K with per-query exclusions: the brute-force answer promised (README, "The exclusion contract").

The ranking rule, stated once and used by every search path:

* score = the float32 dot product of the query vector with the item vector, summed in dimension order
  (``q0*v0 + q1*v1 + ...``, each product and each sum rounded to float32, no fused multiply-add): see
  "Scores" below;
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

Scores. A BLAS product does not give one item the same float32 score in every
call: OpenBLAS picks a matrix-vector kernel for one query, a blocked kernel or a
small-matrix kernel for several, and each sums the dimension in its own order
(``benchmarks/serving_scale.py`` counts how many of a user's scores differ
between the two), and other machines have other kernels. Answers stored ahead
of time (:mod:`movierec.index.ranked`) must be bit for bit what a later scan
returns, so the score is defined by an order no library chooses:
:func:`exact_scores`. Computing it for every item would take one numpy pass
per dimension over the whole catalogue, so the BLAS product only shortlists: any two
float32 evaluations of one dot product, in any order, with or without FMA, lie
within ``2 * gamma_d * |q| * max|v|`` of each other (``gamma_d = d*u/(1-d*u)``,
``u = 2**-24``; Cauchy-Schwarz bounds the sum of ``|q_i v_i|``), so every item
that can reach the exact top-``k`` scores, by BLAS, at least the k-th best BLAS
score minus twice that (:meth:`ExactSearcher.score_margins`). Only the
shortlisted items (about ``k`` of them) are scored exactly and ranked. The
answer is therefore the same whatever the batch, the BLAS or the machine.
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
# float32's unit roundoff (round to nearest): each rounded operation errs by at most this, relatively.
UNIT_ROUNDOFF = 2.0**-24
# Absolute slack per dimension for products and sums that underflow into subnormals (2**-150 each, x2 for
# the two evaluations, x2 for the two operations, with room to spare).
SUBNORMAL_SLACK = 2.0**-140
# Bytes of products scored exactly at once: small enough to stay in a core's cache through the ``dim`` passes
# that add one dimension each (a larger slice goes back to memory on every pass).
PAIR_SLICE_BYTES = 1 << 19


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


def exact_scores(
    queries: npt.NDArray[np.float32],
    query_index: npt.NDArray[np.int64],
    items: npt.NDArray[np.float32],
    item_index: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """The score of each pair (``queries[query_index[i]]``, ``items[item_index[i]]``) by the ranking rule.

    Float32 products, then their sum one dimension after the other: numpy's multiply and add round each
    element on its own (IEEE 754, no fused multiply-add), so the result depends only on the two vectors,
    never on the batch, the BLAS or the CPU. Overflow gives ±inf or NaN, which the caller ranks.
    """
    count = int(query_index.shape[0])
    out = np.zeros(count, dtype=np.float32)
    if queries.shape[1] == 0:
        return out
    dim = queries.shape[1]
    step = max(1, PAIR_SLICE_BYTES // (4 * dim))
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for start in range(0, count, step):
            stop = min(count, start + step)
            products = queries[query_index[start:stop]] * items[item_index[start:stop]]
            total = out[start:stop]
            total[:] = products[:, 0]
            for d in range(1, dim):
                np.add(total, products[:, d], out=total)
    return out


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
    """Exact top-``k`` of each row of ``scores`` (modified in place) minus that row's excluded items,
    ranked by these very scores (see :func:`shortlists`)."""
    width = min(k, scores.shape[1])
    picks = shortlists(scores, excluded, k, None, finite=finite)
    return [rank_candidates(c, scores[q, c], width) if width else EMPTY for q, c in enumerate(picks)]


def shortlists(
    scores: npt.NDArray[np.float32],
    excluded: Sequence[npt.NDArray[np.int64]],
    k: int,
    margins: npt.NDArray[np.float64] | None,
    *,
    finite: bool = False,
) -> list[npt.NDArray[np.int64]]:
    """For each row of ``scores`` (modified in place): the allowed items scoring at least the row's k-th
    best allowed score minus ``margins[row]`` (None: 0), in ascending order.

    Excluded cells are set to -inf; the k-th largest score of each row is found
    with a partition; every allowed item scoring at least that much (less the
    margin) is a candidate, so all ties at the boundary are seen. A row with
    fewer than ``k`` allowed items gets a -inf threshold and so all of them.

    ``finite=True`` is the caller's promise that no score is NaN or ±inf (see
    :class:`ExactSearcher`): then -inf marks exactly the excluded cells and no
    separate allowed-mask pass over the matrix is needed.
    """
    n_queries, n_items = scores.shape
    width = min(k, n_items)
    if width == 0:
        return [np.empty(0, dtype=np.int64)] * n_queries
    cells = _exclusion_cells(excluded, n_items)
    allowed = None
    if not finite:
        scores[np.isnan(scores)] = -np.inf
        allowed = np.ones(scores.shape, dtype=bool)
        allowed.reshape(-1)[cells] = False
    _flat_view(scores)[cells] = -np.inf
    thresholds = _kth_largest(scores, width)
    if margins is not None:
        thresholds = lowered(thresholds, margins)
    picks = []
    for q in range(n_queries):
        row = scores[q]
        if allowed is not None:
            picked = allowed[q] & (row >= thresholds[q])
        else:
            picked = row >= thresholds[q] if thresholds[q] > -np.inf else row > -np.inf
        picks.append(np.flatnonzero(picked))
    return picks


def _kth_largest(scores: npt.NDArray[np.float32], width: int) -> npt.NDArray[np.float32]:
    """The ``width``-th largest score of each row, partitioning one row at a time in a reused buffer: a copy of
    the whole block would double its memory and, freshly allocated per block, page-fault through it."""
    pivot = scores.shape[1] - width
    buffer = np.empty(scores.shape[1], dtype=np.float32)
    thresholds = np.empty(scores.shape[0], dtype=np.float32)
    for q, row in enumerate(scores):
        np.copyto(buffer, row)
        buffer.partition(pivot)
        thresholds[q] = buffer[pivot]
    return thresholds


def lowered(thresholds: npt.NDArray[np.float32], margins: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """``thresholds - margins`` as float32 rounded down (never above the exact difference); NaN-free."""
    exact = thresholds.astype(np.float64) - margins
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)
    above = rounded > exact
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    rounded[np.isnan(rounded)] = -np.inf
    return rounded


class ExactSearcher:
    """Brute-force inner-product search over all items, exclusions applied inside the selection."""

    def __init__(self, item_vectors: npt.NDArray[np.float32]) -> None:
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._max_abs_item = float(np.abs(self.item_vectors).max()) if self.item_vectors.size else 0.0
        norms = np.linalg.norm(self.item_vectors.astype(np.float64), axis=1)
        self._max_item_norm = float(norms.max()) if norms.size else 0.0

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    def scores_are_finite(self, queries: npt.NDArray[np.float32]) -> bool:
        """True when no score can overflow: |q·v| <= dim * max|q| * max|v|, far below float32's max."""
        if not queries.size:
            return True
        bound = float(np.abs(queries).max()) * self._max_abs_item * queries.shape[1]
        return bool(bound < FINITE_BOUND)  # False for NaN/inf input too

    def score_margins(self, queries: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Per query: how far below the k-th best BLAS score an item may score, by BLAS, and still be in
        the exact top-k: twice the most two float32 evaluations of one dot product can differ (module
        docstring, "Scores"), with slack for float64 rounding and for subnormals."""
        dim = queries.shape[1]
        gamma = dim * UNIT_ROUNDOFF / (1 - dim * UNIT_ROUNDOFF)
        norms: npt.NDArray[np.float64] = np.linalg.norm(queries.astype(np.float64), axis=1)
        spread = 2 * gamma * norms * self._max_item_norm
        margins: npt.NDArray[np.float64] = 2 * spread * (1 + 2.0**-20) + dim * SUBNORMAL_SLACK
        return margins

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
                scores = np.take(scores, columns, axis=1)  # C-contiguous, as shortlists needs
            finite = self.scores_are_finite(chunk)
            margins = self.score_margins(chunk) if finite else np.full(chunk.shape[0], np.inf)
            picks = shortlists(scores, excluded[start:stop], k, margins, finite=finite)
            answers.extend(self._rank_exactly(chunk, picks, item_vectors, columns, k))
        return answers

    def _rank_exactly(
        self,
        queries: npt.NDArray[np.float32],
        picks: list[npt.NDArray[np.int64]],
        item_vectors: npt.NDArray[np.float32],
        columns: npt.NDArray[np.int64] | None,
        k: int,
    ) -> list[Recommendation]:
        """Each query's shortlist scored by :func:`exact_scores` (all queries' pairs at once) and ranked."""
        sizes = [p.size for p in picks]
        positions = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
        owners = np.repeat(np.arange(len(picks), dtype=np.int64), sizes)
        rows = positions if columns is None else columns[positions]
        scores = exact_scores(queries, owners, item_vectors, rows)
        scores[np.isnan(scores)] = -np.inf
        width = min(k, item_vectors.shape[0] if columns is None else columns.size)
        answers = []
        for pick, own in zip(picks, np.split(scores, np.cumsum(sizes)[:-1]), strict=True):
            answers.append(rank_candidates(pick, own, width) if width else EMPTY)
        return answers
