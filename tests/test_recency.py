"""Recency weights (movierec.trainer.recency) and the trainer's validation trial of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from movierec.bundle import CSR, read_model_bundle
from movierec.clients.cli.main import main
from movierec.trainer.config import TrainConfig, resolve_config
from movierec.trainer.data import Dataset, Ratings, make_split
from movierec.trainer.data.loaders import load_dataset
from movierec.trainer.evaluate import evaluate_vectors
from movierec.trainer.losses import softmax_loss
from movierec.trainer.recency import history_ranks, part_times, recency_weights
from movierec.trainer.train import candidate_configs, train_model

TASTES, PER_TASTE, N_USERS, PER_ERA = 4, 30, 200, 10


def drifting_dataset(*, with_times: bool = True) -> Dataset:
    """Tastes that stay while the catalogue moves on: only the recent past says which movies come next.

    Movies come in two eras (earlier and later releases) of four tastes each. User u rates 7 movies of taste
    u % 4 from the first era (times 1..7), then 7 of the same taste from the second era (times 8..14), all 5 stars:
    a user's latest ratings (the temporal split's test) are second-era movies.
    """
    rng = np.random.default_rng(5)
    users, items, times = [], [], []
    for user in range(N_USERS):
        for era in range(2):
            first = (era * TASTES + user % TASTES) * PER_TASTE
            users += [user] * PER_ERA
            items += (rng.choice(PER_TASTE, size=PER_ERA, replace=False) + first).tolist()
            times += list(range(1 + era * PER_ERA, 1 + (era + 1) * PER_ERA))
    n = len(users)
    stamps = np.asarray(times, dtype=np.int64) if with_times else np.zeros(n, dtype=np.int64)
    ratings = Ratings(
        users=np.asarray(users, dtype=np.int64) + 1,
        items=np.asarray(items, dtype=np.int64) + 1,
        ratings=np.full(n, 5.0, dtype=np.float32),
        timestamps=stamps,
    )
    return Dataset("drift", "generated", Path("drift"), ratings, None, "0" * 64, has_timestamps=with_times)


TINY: dict[str, Any] = {
    "dim": 16,
    "layers": 1,
    "epochs": 40,
    "eval_every": 2,
    "patience": 6,
    "batch_size": 32,
    "lr": 0.05,
}


def test_ranks_run_from_the_oldest_to_the_latest_and_ties_share_the_later_rank() -> None:
    # user 0: items 0..3 at times 30, 10, 20, 20; user 1: one positive; user 2: two at one time
    positives = CSR.from_pairs([0, 0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 0, 1, 2], n_rows=3, n_cols=4)
    times = np.array([30, 10, 20, 20, 5, 7, 7], dtype=np.int64)
    ranks = history_ranks(positives, times)
    assert ranks.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 2 / 3, 1.0, 1.0, 1.0])
    # the same history stored in another item order ranks each positive the same (no item-id tie-break)
    swapped = history_ranks(positives, np.array([30, 20, 20, 10, 5, 7, 7], dtype=np.int64))
    assert swapped.tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0, 1.0, 1.0, 1.0])


def test_the_split_keeps_each_train_positive_time_aligned_with_train() -> None:
    dataset = drifting_dataset()
    split = make_split(dataset, method="temporal")
    assert split.train_times is not None and split.train_times.shape == (split.train.nnz,)
    rows, items = split.train.to_pairs()
    original = {
        (int(u), int(i)): int(t)
        for u, i, t in zip(dataset.ratings.users, dataset.ratings.items, dataset.ratings.timestamps, strict=True)
    }
    looked_up = [original[(int(split.user_ids[u]), int(split.item_ids[i]))] for u, i in zip(rows, items, strict=True)]
    assert split.train_times.tolist() == looked_up
    fit_times = part_times(split, split.fit)
    assert fit_times is not None and fit_times.shape == (split.fit.nnz,)
    assert make_split(drifting_dataset(with_times=False)).train_times is None


def test_weights_are_one_for_the_latest_and_exp_minus_strength_for_the_oldest() -> None:
    split = make_split(drifting_dataset(), method="temporal")
    weights = recency_weights(split, split.fit, 6.0)
    assert weights is not None
    first_user = slice(int(split.fit.indptr[0]), int(split.fit.indptr[1]))
    assert weights[first_user].max() == pytest.approx(1.0)
    assert weights[first_user].min() == pytest.approx(np.exp(-6.0), rel=1e-5)
    assert recency_weights(split, split.fit, 0.0) is None


def test_weighted_softmax_loss_is_the_weighted_mean_of_the_positives_terms() -> None:
    torch.manual_seed(0)
    users, items = torch.randn(2, 4), torch.randn(5, 4)
    rows, pairs = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])
    plain = softmax_loss(users, items, rows, pairs, 0.5)
    assert softmax_loss(users, items, rows, pairs, 0.5, torch.full((3,), 0.3)) == pytest.approx(float(plain))
    only_last = softmax_loss(users, items, rows, pairs, 0.5, torch.tensor([0.0, 0.0, 2.0]))
    assert only_last == pytest.approx(float(softmax_loss(users, items, rows[2:], pairs[2:], 0.5)))


def test_the_trial_runs_only_where_it_can_matter() -> None:
    config = resolve_config("fast", search_max_positives=0)
    timed = make_split(drifting_dataset(), method="temporal")
    assert [c.recency for c in candidate_configs(config, timed)] == [0.0, config.recency_trial]
    untimed = make_split(drifting_dataset(with_times=False))
    assert [c.recency for c in candidate_configs(config, untimed)] == [0.0]
    for other in (
        replace(config, recency_trial=0.0),
        replace(config, recency=2.0),  # the user chose a strength: nothing to try
        replace(config, recency_max_positives=timed.fit.nnz - 1),  # too large for a second selection
        resolve_config("fast", loss="bpr", search_max_positives=0),
        resolve_config("paper"),
    ):
        assert len(candidate_configs(other, timed)) == 1


def test_on_drifting_tastes_validation_keeps_the_recency_weights_and_test_agrees() -> None:
    split = make_split(drifting_dataset(), method="temporal")
    config = replace(TrainConfig(), search_max_positives=0, **TINY)
    chosen = train_model(split, config, progress=False)
    assert [trial.overrides for trial in chosen.search] == [{}, {"recency": config.recency_trial}]
    assert chosen.config is not None and chosen.config.recency == config.recency_trial
    plain = train_model(split, replace(config, recency_trial=0.0), progress=False)
    assert plain.search == () and plain.config is not None and plain.config.recency == 0.0
    recall = {
        name: evaluate_vectors(result.user_vectors, result.item_vectors, split.train, split.test, ks=(20,))["recall@20"]
        for name, result in (("recency", chosen), ("plain", plain))
    }
    assert recall["recency"] > recall["plain"] + 0.1


def test_recctl_refuses_recency_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5,1\n1,2,5,2\n2,1,5,3\n2,2,4,4\n")
    assert load_dataset(data).has_timestamps
    for flags, message in (
        (["--recency", "-1"], "must not be negative"),
        (["--loss", "bpr", "--recency", "2"], "the bpr loss takes none"),
    ):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "bundle"), *flags]) != 0
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bundle").exists()


def _write_csv(dataset: Dataset, folder: Path, *, with_times: bool = True) -> Path:
    folder.mkdir(parents=True)
    r = dataset.ratings
    header = "userId,movieId,rating,timestamp" if with_times else "userId,movieId,rating"
    rows = [
        f"{u},{i},{rating:g}" + (f",{t}" if with_times else "")
        for u, i, rating, t in zip(r.users, r.items, r.ratings, r.timestamps, strict=True)
    ]
    (folder / "ratings.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def test_recctl_train_split_temporal_holds_out_the_latest_and_keeps_recency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _write_csv(drifting_dataset(), tmp_path / "data"), tmp_path / "bundle"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    command = ["train", "--data", str(data), "--out", str(out), "--split", "temporal", *flags]
    assert main([*command, "--search-max-positives", "0", "--json"]) == 0
    capsys.readouterr()
    bundle = read_model_bundle(out)
    assert bundle.config["protocol"]["split"] == "temporal"
    assert bundle.config["train"]["recency"] == TrainConfig().recency_trial
    # every held-out positive is at least as late as every training positive of its user
    r = drifting_dataset().ratings
    times = {(int(u), int(i)): int(t) for u, i, t in zip(r.users, r.items, r.timestamps, strict=True)}
    for row in range(bundle.test.n_rows):
        user = int(bundle.user_ids[row])
        train_latest = max(times[(user, int(bundle.item_ids[i]))] for i in bundle.train.row(row))
        assert all(times[(user, int(bundle.item_ids[i]))] >= train_latest for i in bundle.test.row(row))


def test_recctl_train_refuses_a_temporal_split_without_timestamps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_csv(drifting_dataset(), tmp_path / "data", with_times=False)
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--split", "temporal"]) == 1
    assert "a temporal split needs timestamps" in capsys.readouterr().err
    assert not out.exists()
