"""Hyper-parameter search on the validation slice only: the test split is never looked at."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from movierec.bundle.csr import CSR
from movierec.trainer.evaluate import evaluate_ranking
from peers.base import Peer, TrainingData

Params = Mapping[str, float | int]


@dataclass(frozen=True)
class Trial:
    """One grid point: its parameters, validation metrics and fit wall time."""

    params: Params
    valid_metrics: dict[str, float]
    fit_seconds: float


@dataclass(frozen=True)
class SearchResult:
    """The winning parameters and every trial, so the report can show how flat the optimum was."""

    best: Params
    trials: list[Trial]
    metric: str


def grid_search(
    make_peer: Callable[..., Peer],
    grid: Sequence[Params],
    fit_data: TrainingData,
    valid: CSR,
    metric: str = "recall@20",
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Fit ``make_peer(**params)`` on ``fit_data`` for each grid point and keep the best ``metric`` on ``valid``.

    Validation items are ranked with the fit positives masked, exactly as the
    test is ranked later with the train positives masked. Ties keep the
    earlier grid point, so list cheaper settings first.
    """
    if not grid:
        raise ValueError("the grid is empty")
    trials: list[Trial] = []
    for params in grid:
        peer = make_peer(**params)
        started = time.perf_counter()
        peer.fit(fit_data)
        seconds = time.perf_counter() - started
        metrics = evaluate_ranking(peer.score, fit_data.positives, valid)
        trial = Trial(params=dict(params), valid_metrics=metrics, fit_seconds=seconds)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    best = max(trials, key=lambda trial: trial.valid_metrics[metric])
    return SearchResult(best=best.params, trials=trials, metric=metric)
