"""Recency weights: a user's latest positives say the most about what they will choose next.

Where the held-out positives are each user's latest (a time-ordered split, or
simply a service predicting tomorrow from today), a loss that counts every
positive alike spends most of its weight on tastes the user has moved on
from. ``TrainConfig.recency`` = β weights the loss term of a positive by

    w = exp(β · (r − 1)),    r = its rank in the user's positives, 0 (oldest) .. 1 (latest),

so the latest positive weighs 1 and the oldest exp(−β). Positives sharing a
timestamp share the later rank: ties carry no order, and the temporal split
breaks them by item id, which must not leak into the weights. A user with a
single positive (or all at one time) weighs 1 throughout. Ranks rather than
times make β mean the same on data spanning days or decades.

Whether it helps is the data's question, so the trainer asks validation
(``TrainConfig.recency_trial``; benchmarks/results/sweeps.md, section 8).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR
from movierec.trainer.data.split import Split


def history_ranks(positives: CSR, times: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Each stored positive's rank r in its user's history (see the module docstring), aligned with ``positives``."""
    rows, items = positives.to_pairs()
    order = np.lexsort((items, times, rows))
    sorted_rows, sorted_times = rows[order], times[order]
    counts = positives.row_lengths()
    offsets = np.arange(rows.shape[0]) - np.repeat(positives.indptr[:-1], counts)  # 0 = the oldest
    # Ties share the later rank: each (user, time) run takes the offset of its last member.
    changes = (sorted_rows[1:] != sorted_rows[:-1]) | (sorted_times[1:] != sorted_times[:-1])
    run_starts = np.concatenate(([True], changes))
    run = np.cumsum(run_starts) - 1
    run_last = np.flatnonzero(np.concatenate((run_starts[1:], [True])))
    tied = offsets[run_last][run].astype(np.float64)
    length = np.repeat(counts, counts).astype(np.float64)
    ranks = np.empty(rows.shape[0], dtype=np.float64)
    ranks[order] = np.where(length > 1, tied / np.maximum(length - 1, 1.0), 1.0)
    return ranks


def part_times(split: Split, part: CSR) -> npt.NDArray[np.int64] | None:
    """Timestamps of ``part``'s positives (fit or train, both subsets of train), aligned with it; None without times."""
    if split.train_times is None:
        return None
    train_rows, train_items = split.train.to_pairs()
    train_keys = train_rows * split.n_items + train_items
    rows, items = part.to_pairs()
    where = np.searchsorted(train_keys, rows * split.n_items + items)
    times: npt.NDArray[np.int64] = split.train_times[where]
    return times


def has_time_order(split: Split) -> bool:
    """Whether the train positives carry more than one timestamp (else every rank is the latest)."""
    return split.train_times is not None and split.train_times.size > 0 and bool(np.ptp(split.train_times) > 0)


def recency_weights(split: Split, part: CSR, strength: float) -> npt.NDArray[np.float32] | None:
    """Loss weights of ``part``'s positives for ``strength`` = β; None (all equal) for β = 0 or no timestamps."""
    times = part_times(split, part) if strength > 0 else None
    if times is None:
        return None
    weights: npt.NDArray[np.float32] = np.exp(strength * (history_ranks(part, times) - 1.0)).astype(np.float32)
    return weights
