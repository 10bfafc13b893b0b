"""Diversity re-ranking: maximal marginal relevance (MMR, Carbonell & Goldstein 1998) over the item vectors.

Why: the exact top-K of a dot-product model is often K near-copies of one taste (five sequels, one genre).
The ``diversity`` knob d in [0, 1] trades a little relevance for lists whose items differ from each other:

* the caller asks the exact search for a candidate pool, the best :func:`pool_size` (k) allowed unseen items,
  so every exclusion and filter holds for the pool, and so for any k of it;
* relevance = the pool's scores scaled to [0, 1] (min-max within the pool: the model's score scale is
  arbitrary, the cosine below is not);
* similarity = cosine of the item vectors (the geometry the model ranks by);
* greedily, each place takes the pool item maximising
  ``λ · relevance − (1 − λ) · max cosine to the items already taken − w · popularity``, with λ = 1 − d,
  ties to the better-ranked item. ``popularity`` is log(1 + training interactions) scaled to [0, 1] and
  ``w`` the optional popularity penalty (0: none).

d = 0 is never re-ranked (the caller keeps the plain exact answer); any d keeps the best item first (with no
popularity penalty): nothing is taken yet, so only relevance counts. d = 1 keeps only the first item's place
and then picks the items least like those taken. An answer holds ``min(k, len(pool))`` distinct pool items:
K while K allowed unseen items remain, as the plain search. Scores stay the model's scores (so they need not
descend). Pure numpy: k steps of one pool x dim product each (``benchmarks/diversity.py`` times it).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from movierec.index.topk import Recommendation

POOL_FACTOR = 4
MIN_POOL = 50


def pool_size(k: int) -> int:
    """Candidates re-ranked for a list of ``k``: ``max(4k, 50)``, enough room to swap near-duplicates out while
    every candidate is still one the model ranks highly."""
    return max(POOL_FACTOR * k, MIN_POOL)


def check_diversity(diversity: float) -> float:
    """``diversity`` as a float in [0, 1]; ValueError for anything else (NaN included)."""
    if isinstance(diversity, bool) or not isinstance(diversity, int | float | np.floating | np.integer):
        raise ValueError(f"diversity must be a number in [0, 1], got {diversity!r}")
    value = float(diversity)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"diversity must be between 0 and 1, got {value}")
    return value


class Diversifier:
    """MMR over one catalogue's item vectors (unit-normalised once), optionally penalising popular items."""

    def __init__(
        self, item_vectors: npt.NDArray[np.float32], popularity: npt.NDArray[np.integer] | None = None
    ) -> None:
        """``popularity[i]``: training interactions of item row ``i``; needed only for a popularity penalty."""
        vectors = np.asarray(item_vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self._unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        self._popularity: npt.NDArray[np.float64] | None = None
        if popularity is not None:
            if popularity.shape != (vectors.shape[0],):
                raise ValueError(f"popularity must have one count per item ({vectors.shape[0]})")
            logged = np.log1p(np.maximum(popularity, 0).astype(np.float64))
            top = float(logged.max()) if logged.size else 0.0
            self._popularity = logged / top if top > 0 else logged

    def rerank(self, pool: Recommendation, k: int, diversity: float, popularity_penalty: float = 0.0) -> Recommendation:
        """The MMR order of the first ``k`` places of ``pool`` (an exact answer, best first)."""
        diversity = check_diversity(diversity)
        if popularity_penalty < 0 or not math.isfinite(popularity_penalty):
            raise ValueError(f"popularity_penalty must be a finite number >= 0, got {popularity_penalty}")
        if popularity_penalty and self._popularity is None:
            raise ValueError("a popularity penalty needs the items' popularity")
        rows = pool.item_rows
        take = min(k, rows.shape[0])
        gain = (1.0 - diversity) * _scaled(pool.scores)
        if popularity_penalty and self._popularity is not None:
            gain = gain - popularity_penalty * self._popularity[rows]
        unit = self._unit[rows]
        weighted = unit * np.float32(diversity)  # one product per place gives diversity x cosine
        objective = gain.copy()  # nothing taken yet: relevance (and the popularity penalty) alone
        order = np.empty(take, dtype=np.int64)
        for place in range(take):
            pick = int(np.argmax(objective))  # first maximum: ties go to the better-ranked item
            order[place] = pick
            # gain - d * max(cosine to the taken items) = min over the taken items of (gain - d * cosine): each
            # place folds in one item's row, so the loop costs k products of pool x dim and nothing per pair.
            marginal = gain - weighted @ unit[pick]
            objective = marginal if place == 0 else np.minimum(objective, marginal, out=objective)
            objective[pick] = -np.inf  # taken; min keeps it there
        return Recommendation(rows[order].copy(), pool.scores[order].copy())


def _scaled(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Scores mapped to [0, 1] within the pool (best 1); a score that is not finite counts as the worst."""
    values = scores.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    low, high = float(values[finite].min()), float(values[finite].max())
    scaled = (values - low) / (high - low) if high > low else np.ones_like(values)
    return np.where(finite, scaled, 0.0)
