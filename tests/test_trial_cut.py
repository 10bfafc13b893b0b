"""A selection run after the first stops once it falls clearly behind the leading run (``TrainConfig.trial_cut``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_train import tiny_split

from movierec.clients.cli.train_cmd import closing_lines
from movierec.errors import MovierecError
from movierec.trainer.config import TrainConfig, resolve_config
from movierec.trainer.plot import plot_training_curve
from movierec.trainer.train import EpochRecord, SearchTrial, TrainResult, _Pace, train_model


def pace_of(points: list[tuple[int, float | None]]) -> _Pace:
    return _Pace(tuple(EpochRecord(epoch, float(epoch), 1.0, recall) for epoch, recall in points))


def test_the_pace_is_the_leaders_best_by_each_epoch_and_its_best_past_its_end() -> None:
    pace = pace_of([(1, None), (2, 0.2), (3, None), (4, 0.3), (6, 0.25)])
    assert [pace.by(epoch) for epoch in (1, 2, 3, 4, 6, 50)] == [0.0, 0.2, 0.2, 0.3, 0.3, 0.3]


def test_a_run_is_left_behind_only_past_the_grace_epochs_and_by_more_than_the_cut() -> None:
    pace = pace_of([(2, 0.2), (4, 0.3)])
    config = replace(TrainConfig(), trial_cut=0.1, trial_cut_after=4)
    assert not pace.left_behind(config, 2, 0.0)  # too early to judge: slow starters catch up
    assert pace.left_behind(config, 4, 0.26)  # 0.26 < 0.3 x 0.9
    assert not pace.left_behind(config, 4, 0.28)  # behind, but within 10 %
    assert not pace.left_behind(replace(config, trial_cut=0.0), 4, 0.0)  # 0: never cut


@pytest.mark.parametrize(("name", "value"), [("trial_cut", 1.5), ("trial_cut", -0.1), ("trial_cut_after", -1)])
def test_an_impossible_cut_setting_is_refused(name: str, value: float) -> None:
    with pytest.raises(MovierecError, match=name.replace("_", "-")):
        resolve_config("fast", **{name: value})


def with_and_without_cut(epochs: int, **settings: Any) -> tuple[TrainConfig, TrainResult, TrainResult]:
    """Tiny data, the recipe plus one alternative at a learning rate too small to learn, trained with cuts
    (from epoch 3) and without; patience never stops a run before ``epochs``."""
    config = resolve_config(
        "fast",
        dim=8,
        layers=1,
        lr=0.05,
        batch_size=32,
        epochs=epochs,
        eval_every=1,
        patience=epochs,
        trial_cut_after=3,
        search_space=((("lr", 1e-7),),),
        recency_trial=0.0,
        **settings,
    )
    split = tiny_split()
    cut = train_model(split, config, progress=False)
    return config, cut, train_model(split, replace(config, trial_cut=0.0), progress=False)


def test_a_hopeless_trial_is_cut_and_the_choice_is_the_same_as_without_the_cut() -> None:
    """An alternative at a learning rate too small to learn trails from the start: it stops at the grace
    epoch instead of running out its patience, and the kept model is bit-for-bit the one chosen without cuts."""
    config, cut, uncut = with_and_without_cut(epochs=30)
    assert [trial.cut for trial in cut.search] == [False, True]
    assert [trial.cut for trial in uncut.search] == [False, False]
    assert [trial.kept for trial in cut.search] == [True, False] == [trial.kept for trial in uncut.search]
    assert cut.search[1].epochs == 3 < uncut.search[1].epochs == 30
    assert [epoch for epoch, _ in cut.search[1].curve] == [1, 2, 3]  # what validation saw before the cut
    assert cut.search[0].curve == uncut.search[0].curve and len(cut.search[0].curve) == 30
    assert cut.config == config and uncut.config == replace(config, trial_cut=0.0)
    np.testing.assert_array_equal(cut.item_vectors, uncut.item_vectors)
    np.testing.assert_array_equal(cut.user_vectors, uncut.user_vectors)


def test_the_closing_lines_say_which_trial_was_cut() -> None:
    training = {
        "search": [
            {"overrides": {}, "best_valid_recall": 0.3, "epochs": 20, "cut": False},
            {"overrides": {"recency": 6.0}, "best_valid_recall": 0.1, "epochs": 8, "cut": True},
        ],
        "selection_epochs": 20,
        "best_valid_recall@20": 0.3,
        "best_epoch": 12,
        "stop_reason": "no validation gain in 4 evaluations",
        "refitted_on_train": False,
        "epochs_run": 28,
        "seconds": 3.0,
        "wall_seconds": 4.0,
        "peak_rss_mb": 512.0,
    }
    (line,) = [line for line in closing_lines(training) if line.startswith("search on validation")]
    assert "recency 6.0: 0.1000 in 8 epochs (stopped: behind the leading run)" in line
    assert "the recipe's own settings: 0.3000 in 20 epochs;" in line


def test_the_curve_plot_draws_the_runs_not_kept_beside_the_kept_one(tmp_path: Path) -> None:
    trials = [
        SearchTrial({}, 0.30, 10, curve=((2, 0.2), (4, 0.3))),
        SearchTrial({"layers": 2}, 0.31, 10, curve=((2, 0.25), (4, 0.31)), kept=True),
        SearchTrial({"temperature": 0.2}, 0.31, 10, curve=((2, 0.21), (4, 0.31))),
        SearchTrial({"recency": 6.0}, 0.10, 8, cut=True, curve=((2, 0.1), (8, 0.1))),
    ]
    history = [EpochRecord(epoch, float(epoch), 5.0 - epoch / 10, recall) for epoch, recall in trials[1].curve]
    path = tmp_path / "curve.png"
    plot_training_curve(history, 4, path, "with trials", trials=trials)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_refit_does_not_depend_on_how_long_the_runs_not_kept_trained() -> None:
    """NGCF's dropout draws from torch's generator in the refit too: the refit seeds it itself, so a trial
    cut early (fewer draws before the refit) leaves the kept model's refit exactly as without the cut."""
    _, cut, uncut = with_and_without_cut(epochs=12, model="ngcf")
    assert [trial.cut for trial in cut.search] == [False, True] and cut.refitted
    np.testing.assert_array_equal(cut.item_vectors, uncut.item_vectors)
