"""Full-ranking evaluation (design notes §4), numpy only so it runs without torch.

Every user with at least one test item is scored against *all* items; the
user's training items are masked (score -inf) so a model is never rewarded for
recommending what the user already told us. Metrics per user ``u`` with test
set ``T_u`` and top-K list ``L_u`` (ties broken by the lower item row, which
is the lower movie id because item ids are sorted):

* ``recall@K``      = |L_u ∩ T_u| / |T_u|
* ``precision@K``   = |L_u ∩ T_u| / K
* ``ndcg@K``        = Σ_{r: L_u[r] ∈ T_u} 1/log2(r+2)  /  Σ_{r < min(K,|T_u|)} 1/log2(r+2)   (binary relevance)
* ``seed_recall@K`` = |L_u ∩ T_u| / min(K, |T_u|)   — the seed document's "recall", kept only to compare
  with its claims; it is not recall (it cannot drop when |T_u| > K).

Each metric is the plain mean over evaluated users; ``users_evaluated`` says how many.

Beyond accuracy (what the lists look like, not whether they hit the test set), from the same top-K lists.
``n`` = items in the catalogue, ``c_i`` = training interactions of item ``i`` (the ``train`` CSR's column
counts), ``C`` = Σ c_i. Where RecBole (``recbole/evaluator/metrics.py``) defines the measure, ours is its
definition so the numbers compare; the differences are named:

* ``coverage@K``           = |∪_u L_u| / n — RecBole's ItemCoverage (its item count also counts its padding id).
* ``novelty@K``            = mean over users of mean_{i ∈ L_u} -log2(max(c_i, 1) / C): self-information of an
  item's share of the training interactions (RecBole has none); an item with no training interaction counts
  as having one, so the measure stays finite.
* ``average_popularity@K`` = mean over users of mean_{i ∈ L_u} c_i — RecBole's AveragePopularity.
* ``gini_index@K``         = Σ_j (2j - n - 1) r_(j) / (n Σ_j r_j), with r_(1) <= ... <= r_(n) the times each
  catalogue item appears in anyone's top K (items never recommended count 0) — RecBole's GiniIndex.
  0 = every item recommended equally often, towards 1 = a few items fill every list.
* ``tail_percentage@K``    = mean over users of |L_u ∩ T| / K, where the long tail T is the
  ``max(int(n * TAIL_RATIO), 1)`` items with the fewest training interactions (ties to the lower item row) —
  RecBole's TailPercentage with its default ``tail_ratio`` 0.1, except that RecBole ranks only the items that
  occur in training (a catalogue item with no training interaction is in our tail, not outside RecBole's).
* ``intra_list_diversity@K`` (K >= 2, only when item genres are given and some item has one) = mean over users
  of the mean, over the K(K-1)/2 pairs of L_u, of the genre Jaccard distance 1 - |G_i ∩ G_j| / |G_i ∪ G_j|
  (0 for two items without genres). RecBole has no genre measure.

A user with fewer than K unseen items has masked (training) items at the end of L_u, as in the accuracy metrics.

Memory is bounded: users are scored in chunks of :func:`chunk_rows` users, as
many as keep the chunk's working set (scores plus the ranking's temporaries,
about ``WORKING_BYTES_PER_SCORE`` bytes per user x item) within
``memory_budget``, so 100k users x 60k items is never one dense matrix. The
per-user metrics are summed in blocks of ``batch_size`` users whatever the
chunk size, so the result does not depend on the budget, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR

ScoreFn = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]

METRIC_NAMES = ("recall", "ndcg", "precision", "seed_recall")
BEYOND_ACCURACY_NAMES = (
    "coverage",
    "novelty",
    "average_popularity",
    "gini_index",
    "tail_percentage",
    "intra_list_diversity",
)
DEFAULT_MEMORY_BUDGET = 256 * 2**20
WORKING_BYTES_PER_SCORE = 24
"""Bytes per (user, item) score a chunk may hold while it is ranked: tracemalloc measures a peak of 14 (the
scores and their copy, the partition's negated copy, boolean masks, the int32 tie count); the rest is headroom
for the score function's own temporaries. tests/test_evaluate.py checks the peak stays within the budget."""
TAIL_RATIO = 0.1
"""Share of the catalogue, least interacted first, that is the long tail (RecBole's default ``tail_ratio``)."""


def chunk_rows(n_items: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, batch_size: int = 1024) -> int:
    """Users scored at once: as many as fit ``memory_budget``, at most ``batch_size``, at least one."""
    if memory_budget < 1:
        raise ValueError("memory_budget must be positive")
    return max(1, min(batch_size, memory_budget // (max(n_items, 1) * WORKING_BYTES_PER_SCORE)))


def top_k_items(scores: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` best items per row, best first; equal scores go to the lower item index.

    ``argpartition`` finds the k-th best value in linear time; among items tied
    with it only the lowest-indexed ones are kept, so the result does not depend
    on the partition's arbitrary order, and a stable sort orders the survivors.
    """
    n_rows, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be between 1 and the number of items ({n_items})")
    kth_value = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth_value
    tied = scores == kth_value
    tie_slots = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= tie_slots))
    columns = np.nonzero(chosen)[1].reshape(n_rows, k)  # ascending item index within each row
    chosen_scores = np.take_along_axis(scores, columns, axis=1)
    order = np.argsort(-chosen_scores, axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1).astype(np.int64)


def _dense_rows(csr: CSR, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Boolean [len(rows), n_cols] membership matrix of the given CSR rows."""
    starts = csr.indptr[rows]
    lengths = csr.indptr[rows + 1] - starts
    local_rows = np.repeat(np.arange(rows.shape[0]), lengths)
    positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    dense = np.zeros((rows.shape[0], csr.n_cols), dtype=bool)
    dense[local_rows, csr.indices[positions]] = True
    return dense


def _discounts(k: int) -> npt.NDArray[np.float64]:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


@dataclass(frozen=True)
class ItemStatistics:
    """What the beyond-accuracy metrics know of each item, computed once per evaluation (O(items) memory)."""

    popularity: npt.NDArray[np.int64]
    self_information: npt.NDArray[np.float64]
    in_tail: npt.NDArray[np.bool_]
    genres: npt.NDArray[np.float32] | None
    """[n_items, n_genres] 0/1 (float32 so a batched matrix product counts shared genres exactly), or None."""

    @classmethod
    def from_training(cls, train: CSR, item_genres: Sequence[Sequence[str]] | None = None) -> ItemStatistics:
        """Popularity from ``train``'s interactions; ``item_genres[i]`` = item row ``i``'s genre names."""
        n_items = train.n_cols
        popularity = np.bincount(train.indices, minlength=n_items).astype(np.int64)
        total = max(int(popularity.sum()), 1)
        self_information = -np.log2(np.maximum(popularity, 1) / total)
        in_tail = np.zeros(n_items, dtype=bool)
        if n_items:
            in_tail[np.lexsort((np.arange(n_items), popularity))[: max(int(n_items * TAIL_RATIO), 1)]] = True
        return cls(popularity, self_information, in_tail, _genre_matrix(item_genres, n_items))


def _genre_matrix(item_genres: Sequence[Sequence[str]] | None, n_items: int) -> npt.NDArray[np.float32] | None:
    """One 0/1 column per genre name; None when no genres are given or no item has one."""
    if item_genres is None:
        return None
    if len(item_genres) != n_items:
        raise ValueError(f"item_genres has {len(item_genres)} entries for {n_items} items")
    names = sorted({name for genres in item_genres for name in genres})
    if not names:
        return None
    column = {name: position for position, name in enumerate(names)}
    matrix = np.zeros((n_items, len(names)), dtype=np.float32)
    for row, genres in enumerate(item_genres):
        matrix[row, [column[name] for name in genres]] = 1.0
    return matrix


def evaluate_ranking(
    score_users: ScoreFn,
    train: CSR,
    test: CSR,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    item_genres: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Mean Recall/NDCG/Precision/seed-recall@K over users with >= 1 test item, and the beyond-accuracy
    metrics of the module docstring (``intra_list_diversity`` only with ``item_genres``, one list per item row).

    ``score_users(rows)`` returns float scores of shape [len(rows), n_items] for
    at most ``chunk_rows(n_items, memory_budget, batch_size)`` rows at a time;
    NaN scores are rejected because they would make the ranking arbitrary.
    Coverage and Gini need only how often each item is recommended: one count per item and K, summed over
    chunks, so no metric holds more than a chunk of lists at a time.
    """
    if train.n_rows != test.n_rows or train.n_cols != test.n_cols:
        raise ValueError("train and test CSRs differ in shape")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    ks = sorted(set(int(k) for k in ks))
    rows_per_chunk = chunk_rows(train.n_cols, memory_budget, batch_size)
    test_sizes = test.row_lengths()
    users = np.flatnonzero(test_sizes > 0).astype(np.int64)
    items = ItemStatistics.from_training(train, item_genres)
    totals: dict[str, float] = {}
    times_recommended = {k: np.zeros(train.n_cols, dtype=np.int64) for k in ks}
    for start in range(0, users.shape[0], batch_size):
        block = users[start : start + batch_size]
        parts = []
        for first in range(0, block.shape[0], rows_per_chunk):
            ranked = _ranked_lists(score_users, train, block[first : first + rows_per_chunk], ks[-1])
            parts.append(_user_metrics(ranked, test, block[first : first + rows_per_chunk], ks, items))
            for k in ks:
                times_recommended[k] += np.bincount(ranked[:, :k].ravel(), minlength=train.n_cols)
        for name in parts[0] if parts else ():
            totals[name] = totals.get(name, 0.0) + float(np.concatenate([part[name] for part in parts]).sum())
    n_users = users.shape[0]
    means = {name: (total / n_users if n_users else 0.0) for name, total in totals.items()}
    for k in ks:
        counts = times_recommended[k]
        means[f"coverage@{k}"] = float(np.count_nonzero(counts) / train.n_cols) if train.n_cols else 0.0
        means[f"gini_index@{k}"] = gini_index(counts)
    result = {
        key: means[key]
        for name in (*METRIC_NAMES, *BEYOND_ACCURACY_NAMES)
        for k in ks
        if (key := f"{name}@{k}") in means
    }
    result["users_evaluated"] = n_users
    return result


def gini_index(counts: npt.NDArray[np.int64]) -> float:
    """RecBole's GiniIndex of how often each item was recommended (0 when nothing was)."""
    ordered = np.sort(counts)
    n = ordered.shape[0]
    total = int(ordered.sum())
    if total == 0:
        return 0.0
    weights = 2 * np.arange(1, n + 1, dtype=np.int64) - n - 1
    return float(int((weights * ordered).sum()) / (n * total))


def _ranked_lists(score_users: ScoreFn, train: CSR, rows: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """The top-``k`` item rows of each user in ``rows`` (one chunk), training items masked."""
    scores = np.array(score_users(rows), dtype=np.float32, copy=True)
    if scores.shape != (rows.shape[0], train.n_cols):
        raise ValueError(f"score_users returned shape {scores.shape}, expected {(rows.shape[0], train.n_cols)}")
    if np.isnan(scores).any():
        raise ValueError("score_users returned NaN scores")
    scores[_dense_rows(train, rows)] = -np.inf
    return top_k_items(scores, k)


def _user_metrics(
    ranked: npt.NDArray[np.int64], test: CSR, rows: npt.NDArray[np.int64], ks: Sequence[int], items: ItemStatistics
) -> dict[str, npt.NDArray[np.float64]]:
    """Each per-user metric of each user in ``rows`` (one chunk, ``ranked`` their lists), before averaging."""
    discounts = _discounts(ks[-1])
    ideal_cumulative = np.cumsum(discounts)
    hit = np.take_along_axis(_dense_rows(test, rows), ranked, axis=1)
    sizes = (test.indptr[rows + 1] - test.indptr[rows]).astype(np.float64)
    metrics: dict[str, npt.NDArray[np.float64]] = {}
    for k in ks:
        hits = hit[:, :k].sum(axis=1).astype(np.float64)
        dcg = (hit[:, :k] * discounts[:k]).sum(axis=1)
        ideal = ideal_cumulative[np.minimum(k, sizes).astype(np.int64) - 1]
        metrics[f"recall@{k}"] = hits / sizes
        metrics[f"precision@{k}"] = hits / k
        metrics[f"ndcg@{k}"] = dcg / ideal
        metrics[f"seed_recall@{k}"] = hits / np.minimum(k, sizes)
    for k in ks:
        top = ranked[:, :k]
        metrics[f"novelty@{k}"] = items.self_information[top].mean(axis=1)
        metrics[f"average_popularity@{k}"] = items.popularity[top].mean(axis=1)
        metrics[f"tail_percentage@{k}"] = items.in_tail[top].mean(axis=1)
    if items.genres is not None:
        metrics.update(_intra_list_diversity(items.genres, ranked, ks, test.n_cols))
    return metrics


def _intra_list_diversity(
    genres: npt.NDArray[np.float32], ranked: npt.NDArray[np.int64], ks: Sequence[int], n_items: int
) -> dict[str, npt.NDArray[np.float64]]:
    """Mean pairwise genre Jaccard distance within each list, for each K >= 2.

    The [users, K, K] pair matrices (about 25 bytes a cell with their temporaries) are built for as many users
    at a time as keep them within half the cells of the chunk's score matrix (users x n_items, 24 bytes a
    cell, freed by now), so a large K never breaks the evaluator's memory budget.
    """
    wanted = [k for k in ks if k >= 2]
    if not wanted:
        return {}
    k_max = ranked.shape[1]
    step = max(1, ranked.shape[0] * n_items // (2 * k_max * k_max))
    parts: dict[int, list[npt.NDArray[np.float64]]] = {k: [] for k in wanted}
    for start in range(0, ranked.shape[0], step):
        listed = genres[ranked[start : start + step]]  # [users, K, genres]
        shared = listed @ listed.transpose(0, 2, 1)  # genres each pair shares: small integers, exact in float32
        sizes = listed.sum(axis=2)
        union = sizes[:, :, None] + sizes[:, None, :] - shared
        similarity = np.ones(shared.shape, dtype=np.float64)  # two items without genres: not told apart
        np.divide(shared, union, out=similarity, where=union > 0, dtype=np.float64)
        del shared, union
        for k in wanted:
            # Distance 1 - J is 0 on the diagonal, so the k(k-1) off-diagonal cells sum to k^2 - sum(J); summed
            # as contiguous rows so a user's value never depends on how many users share the block.
            cells = np.ascontiguousarray(similarity[:, :k, :k]).reshape(len(similarity), k * k)
            parts[k].append((k * k - cells.sum(axis=1)) / (k * (k - 1)))
    return {f"intra_list_diversity@{k}": np.concatenate(parts[k]) for k in wanted}


def evaluate_vectors(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    train: CSR,
    test: CSR,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    item_genres: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Evaluate a dot-product model (score = user_vector · item_vector), as served by the index.

    Scores are computed chunk by chunk (see :func:`evaluate_ranking`), never for all users at once.
    """
    users = np.asarray(user_vectors, dtype=np.float32)
    items_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)

    def score(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return users[rows] @ items_t

    return evaluate_ranking(
        score, train, test, ks=ks, batch_size=batch_size, memory_budget=memory_budget, item_genres=item_genres
    )
