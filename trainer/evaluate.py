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

Memory is bounded: users are scored in chunks of :func:`chunk_rows` users, as
many as keep the chunk's working set (scores plus the ranking's temporaries,
about ``WORKING_BYTES_PER_SCORE`` bytes per user x item) within
``memory_budget``, so 100k users x 60k items is never one dense matrix. The
per-user metrics are summed in blocks of ``batch_size`` users whatever the
chunk size, so the result does not depend on the budget, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR

ScoreFn = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]

METRIC_NAMES = ("recall", "ndcg", "precision", "seed_recall")
DEFAULT_MEMORY_BUDGET = 256 * 2**20
WORKING_BYTES_PER_SCORE = 24
"""Bytes per (user, item) score a chunk may hold while it is ranked: tracemalloc measures a peak of 14 (the
scores and their copy, the partition's negated copy, boolean masks, the int32 tie count); the rest is headroom
for the score function's own temporaries. tests/test_evaluate.py checks the peak stays within the budget."""


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


def evaluate_ranking(
    score_users: ScoreFn,
    train: CSR,
    test: CSR,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, float]:
    """Mean Recall/NDCG/Precision/seed-recall@K over users with >= 1 test item.

    ``score_users(rows)`` returns float scores of shape [len(rows), n_items] for
    at most ``chunk_rows(n_items, memory_budget, batch_size)`` rows at a time;
    NaN scores are rejected because they would make the ranking arbitrary.
    """
    if train.n_rows != test.n_rows or train.n_cols != test.n_cols:
        raise ValueError("train and test CSRs differ in shape")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    ks = sorted(set(int(k) for k in ks))
    rows_per_chunk = chunk_rows(train.n_cols, memory_budget, batch_size)
    test_sizes = test.row_lengths()
    users = np.flatnonzero(test_sizes > 0).astype(np.int64)
    totals = {f"{name}@{k}": 0.0 for name in METRIC_NAMES for k in ks}
    for start in range(0, users.shape[0], batch_size):
        block = users[start : start + batch_size]
        parts = [
            _user_metrics(score_users, train, test, block[first : first + rows_per_chunk], ks)
            for first in range(0, block.shape[0], rows_per_chunk)
        ]
        for name in totals:
            totals[name] += float(np.concatenate([part[name] for part in parts]).sum())
    n_users = users.shape[0]
    result: dict[str, float] = {name: (total / n_users if n_users else 0.0) for name, total in totals.items()}
    result["users_evaluated"] = n_users
    return result


def _user_metrics(
    score_users: ScoreFn, train: CSR, test: CSR, rows: npt.NDArray[np.int64], ks: Sequence[int]
) -> dict[str, npt.NDArray[np.float64]]:
    """Each metric of each user in ``rows`` (one chunk), before averaging."""
    k_max = ks[-1]
    discounts = _discounts(k_max)
    ideal_cumulative = np.cumsum(discounts)
    scores = np.array(score_users(rows), dtype=np.float32, copy=True)
    if scores.shape != (rows.shape[0], train.n_cols):
        raise ValueError(f"score_users returned shape {scores.shape}, expected {(rows.shape[0], train.n_cols)}")
    if np.isnan(scores).any():
        raise ValueError("score_users returned NaN scores")
    scores[_dense_rows(train, rows)] = -np.inf
    ranked = top_k_items(scores, k_max)
    del scores
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
    return metrics


def evaluate_vectors(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    train: CSR,
    test: CSR,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, float]:
    """Evaluate a dot-product model (score = user_vector · item_vector), as served by the index.

    Scores are computed chunk by chunk (see :func:`evaluate_ranking`), never for all users at once.
    """
    users = np.asarray(user_vectors, dtype=np.float32)
    items_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)

    def score(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return users[rows] @ items_t

    return evaluate_ranking(score, train, test, ks=ks, batch_size=batch_size, memory_budget=memory_budget)
