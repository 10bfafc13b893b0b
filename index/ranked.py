"""Each user's exact ranking of unseen items, its first ``depth`` places computed once per loaded index.

Why: on a MovieLens-sized catalogue a single-user search is one matrix-vector
product over every item vector plus a partition (~170 us of CPU per request,
``benchmarks/serve_bench.py``), yet a model user's answer only ever changes with
``k`` and with the request's extra exclusions (its own ``exclude_item_ids`` and
live events). Both are applied to a stored prefix in microseconds:

    top-k(catalog − seen − extra) = the first k items of prefix(u) that are not in extra,

whenever at least ``k`` such items remain, because every item outside the
prefix ranks below every item inside it (score descending, ties to the lower
item row: the ranking rule of :mod:`movierec.index.topk`, which also built the
prefix). A prefix shorter than ``depth`` holds *all* of the user's unseen
items, so it answers any request. Otherwise (k beyond what is left of the
prefix) the caller falls back to the full scan: exactness never depends on the
cache, only speed does.

The prefixes are computed at load from the version's own seen sets (compacted
events included) with the exact batch scan, so they can never disagree with
the index they belong to; live events still arrive as per-request exclusions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR
from movierec.index.topk import ExactSearcher, Recommendation

# Bytes one stored place costs: an int32 item row and a float32 score.
BYTES_PER_PLACE = 8
# The prefixes of all users together stay under this (1 GiB: 256 places for 500,000 users); a catalogue
# with more users gets shorter prefixes, and none below MIN_USEFUL_DEPTH, where most requests would scan.
MAX_BYTES = 1 << 30
MIN_USEFUL_DEPTH = 16


def affordable_depth(n_users: int, n_items: int, wanted: int) -> int:
    """The depth to build: ``wanted``, at most the catalogue, cut to fit :data:`MAX_BYTES`; 0 = none."""
    depth = min(wanted, n_items, MAX_BYTES // max(1, n_users * BYTES_PER_PLACE))
    return depth if depth >= min(MIN_USEFUL_DEPTH, wanted, n_items) and depth > 0 else 0


@dataclass(frozen=True)
class RankedPrefixes:
    """``rows[u, :lengths[u]]`` are user ``u``'s best unseen item rows in ranking order; ``scores`` align."""

    rows: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]
    lengths: npt.NDArray[np.int32]
    depth: int
    n_items: int

    @classmethod
    def build(
        cls, searcher: ExactSearcher, user_vectors: npt.NDArray[np.float32], seen: CSR, depth: int
    ) -> RankedPrefixes:
        """Rank every user's unseen items, keeping the first ``depth``.

        One user per product, exactly as a unary request is scanned: a BLAS matrix
        product over a block of users may round scores differently in the last bit
        than the single-row product, and a cached answer must be bit-for-bit the
        answer the scan would give (scores included). ~0.15 ms per user.
        """
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        n_users = int(user_vectors.shape[0])
        rows = np.full((n_users, depth), -1, dtype=np.int32)
        scores = np.full((n_users, depth), -np.inf, dtype=np.float32)
        lengths = np.zeros(n_users, dtype=np.int32)
        queries = np.ascontiguousarray(user_vectors, dtype=np.float32)
        for user in range(n_users):
            (answer,) = searcher.search(queries[user : user + 1], depth, [seen.row(user).astype(np.int64)])
            count = len(answer)
            rows[user, :count] = answer.item_rows
            scores[user, :count] = answer.scores
            lengths[user] = count
        return cls(rows, scores, lengths, depth, searcher.n_items)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.scores.nbytes + self.lengths.nbytes)

    def answer(self, user: int, k: int, extra: npt.NDArray[np.int64] | None = None) -> Recommendation | None:
        """The exact top-``k`` of ``user`` minus ``extra`` (validated item rows), or None when the prefix
        cannot decide it (fewer than ``k`` items of it survive and it does not hold every unseen item)."""
        length = int(self.lengths[user])
        rows = self.rows[user, :length]
        scores = self.scores[user, :length]
        if extra is not None and extra.size:
            blocked = np.zeros(self.n_items, dtype=bool)
            blocked[extra] = True
            kept = ~blocked[rows]
            rows, scores = rows[kept], scores[kept]
        if rows.shape[0] < k and length == self.depth:
            return None
        return Recommendation(rows[:k].copy(), scores[:k].copy())
