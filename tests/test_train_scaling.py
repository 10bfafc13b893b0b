"""Scale rules (issue 13): an epoch's propagations are bounded, large catalogues get a sampled softmax."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import N_ITEMS, N_USERS, TINY_TRAIN, tiny_split, write_ratings

from movierec.bundle import read_model_bundle
from movierec.bundle.csr import CSR
from movierec.clients.cli.main import main
from movierec.errors import MovierecError
from movierec.trainer.config import TrainConfig, plan_for, resolve_config
from movierec.trainer.data.split import Split
from movierec.trainer.losses import softmax_loss
from movierec.trainer.models.graph import normalized_adjacency
from movierec.trainer.models.lightgcn import LightGCN
from movierec.trainer.train import _Stepper, candidate_configs, sampled_softmax_loss, train_model, validation_sample


def test_ml1m_sized_data_keeps_the_recipe() -> None:
    """ML-1M's counts (6,040 users, 3,706 items, ~414k fit positives) fall under every rule's threshold."""
    plan = plan_for(TrainConfig(), 6040, 3706, 414_000)
    assert (plan.dim, plan.batch_users, plan.steps_per_epoch, plan.negatives) == (256, 1024, 6, 0)
    assert plan.users_per_epoch == 6040
    assert plan.cosine and plan.lr == TrainConfig().lr and "cosine scores" in plan.describe()


@pytest.mark.parametrize("users", [100_000, 138_000, 1_000_000])
def test_large_data_steps_are_bounded_and_the_softmax_sampled(users: int) -> None:
    config = TrainConfig()
    plan = plan_for(config, users, 27_000, 8_000_000)
    assert plan.steps_per_epoch == config.max_steps_per_epoch
    assert plan.batch_users <= config.max_batch_users
    assert plan.users_per_epoch == min(users, plan.batch_users * plan.steps_per_epoch)
    assert plan.negatives == config.sampled_negatives
    assert plan.dim == config.large_dim
    assert not plan.cosine and plan.lr == config.dot_lr  # past dot_min_users: dot products at dot_lr
    assert "sampled softmax" in plan.describe() and "dot-product scores" in plan.describe()


def test_the_score_rule_follows_the_user_count_and_never_turns_cosine_on() -> None:
    config = TrainConfig()
    assert plan_for(config, config.dot_min_users, 100_000, 400_000).cosine
    assert not plan_for(config, config.dot_min_users + 1, 3_000, 400_000).cosine
    dot = plan_for(replace(config, cosine=False), 6040, 100, 400_000)
    assert not dot.cosine and dot.lr == config.lr  # a dot-product recipe of one's own keeps its rate
    assert plan_for(replace(config, lr=0.001), 6040, 100_000, 400_000).lr == 0.001  # dot_lr is a ceiling


def test_few_users_with_a_wide_catalogue_keep_the_full_softmax_and_the_cosine() -> None:
    """ml-latest-small's shape (610 users, 9,742 movies): a step's logits are cheap, and the cosine ranked better."""
    config = TrainConfig()
    wide = plan_for(config, 610, 9_742, 40_000)
    assert wide.negatives == 0 and wide.cosine and wide.lr == config.lr
    assert plan_for(config, 5_000, 9_742, 400_000).negatives == config.sampled_negatives  # 1,024 x 9,742 per step


def test_between_the_score_thresholds_validation_chooses_the_score() -> None:
    split = tiny_split()
    users = int(np.count_nonzero(split.fit.row_lengths()))
    config = resolve_config("fast", search_max_positives=0, recency_trial=0.0)
    banded = replace(config, cosine_max_users=users - 1, dot_min_users=users)
    scores = [(candidate.cosine, candidate.lr) for candidate in candidate_configs(banded, split)]
    assert scores == [(True, config.lr), (False, config.dot_lr)]
    for outside in (replace(config, cosine_max_users=users), replace(config, cosine=False)):
        assert len(candidate_configs(outside, split)) == 1
    banded_plan = plan_for(config, config.cosine_max_users + 1, 3_000, 400_000)
    assert banded_plan.cosine and banded_plan.dot_trial and "dot products also tried" in banded_plan.describe()
    for users_outside in (config.cosine_max_users, config.dot_min_users + 1):
        assert not plan_for(config, users_outside, 3_000, 400_000).dot_trial


def test_sampled_negatives_mix_uniform_draws_so_every_item_is_drawn() -> None:
    """With half the draws uniform, the rarest item's probability is at least half of 1/items."""
    split = tiny_split()
    config = resolve_config("fast", dim=8, layers=1, search_max_positives=0)
    model = LightGCN(split.n_users, split.n_items, 8, 1)
    stepper = _Stepper(config, split.fit, model, normalized_adjacency(split.fit))
    assert stepper.sampling_p.sum() == pytest.approx(1.0)
    assert stepper.sampling_p.min() >= 0.5 / split.n_items
    popular = np.argmax(np.bincount(split.fit.indices, minlength=split.n_items))
    assert stepper.sampling_p[popular] == stepper.sampling_p.max()
    alone = _Stepper(replace(config, uniform_negatives_share=0.0), split.fit, model, normalized_adjacency(split.fit))
    assert alone.sampling_p.min() < stepper.sampling_p.min()


def _grown_split(copies: int) -> Split:
    """The tiny split with its users repeated ``copies`` times (same catalogue, copies x the edges)."""
    base = tiny_split()

    def grow(csr: CSR) -> CSR:
        rows, items = csr.to_pairs()
        shifted = np.concatenate([rows + k * N_USERS for k in range(copies)])
        return CSR.from_pairs(shifted, np.tile(items, copies), N_USERS * copies, N_ITEMS)

    return Split(
        user_ids=np.arange(1, N_USERS * copies + 1, dtype=np.int64),
        item_ids=base.item_ids,
        seen=grow(base.seen),
        train=grow(base.train),
        fit=grow(base.fit),
        valid=grow(base.valid),
        test=grow(base.test),
        protocol=base.protocol,
    )


class _CountingLightGCN(LightGCN):
    propagations = 0

    def propagate(self, graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.propagations += 1
        return super().propagate(graph)


@pytest.mark.parametrize("copies", [1, 4])
def test_an_epoch_propagates_at_most_max_steps_times(copies: int) -> None:
    """4x the users and edges: the same number of whole-graph propagations per epoch (cost ~ edges)."""
    split = _grown_split(copies)
    config = resolve_config("fast", dim=8, layers=1, batch_size=16, max_steps_per_epoch=3, search_max_positives=0)
    model = _CountingLightGCN(split.n_users, split.n_items, 8, 1)
    stepper = _Stepper(config, split.fit, model, normalized_adjacency(split.fit))
    batches = stepper._batches()
    stepper.epoch(lambda: False)
    assert model.propagations == len(batches) == 3
    covered = np.concatenate(batches)
    assert np.unique(covered).shape[0] == covered.shape[0] == stepper.plan.users_per_epoch
    assert stepper.plan.batch_users == max(16, -(-split.n_users // 3))


def test_a_large_user_count_makes_each_epoch_a_sample() -> None:
    split = _grown_split(4)  # 320 users
    config = resolve_config("fast", dim=8, layers=1, batch_size=16, max_steps_per_epoch=2, max_batch_users=50)
    stepper = _Stepper(config, split.fit, LightGCN(split.n_users, split.n_items, 8, 1), normalized_adjacency(split.fit))
    batches = stepper._batches()
    assert [b.shape[0] for b in batches] == [50, 50]
    assert stepper.plan.users_per_epoch == 100


def test_sampled_softmax_estimates_the_full_softmax() -> None:
    """With many draws from a skewed Q, the logQ-corrected normaliser approaches the full one."""
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 4, generator=generator), torch.randn(30, 4, generator=generator)
    rows, positives = torch.tensor([0, 1, 2, 3, 4, 5, 5]), torch.tensor([3, 7, 1, 29, 11, 0, 2])
    q = torch.linspace(1.0, 10.0, 30)
    q = q / q.sum()
    negatives = torch.multinomial(q, 200_000, replacement=True, generator=generator)
    full = softmax_loss(users, items, rows, positives, 0.5)
    sampled = sampled_softmax_loss(users, items, rows, positives, negatives, q.log(), 0.5)
    assert sampled.item() == pytest.approx(full.item(), rel=0.01)
    uncorrected = sampled_softmax_loss(users, items, rows, positives, negatives, torch.zeros(30), 0.5)
    assert abs(uncorrected.item() - full.item()) > 0.5  # without logQ the estimate is far off


def test_validation_sample_bounds_the_users_ranked() -> None:
    valid = tiny_split().valid
    assert validation_sample(valid, 10_000, 0) is valid
    sample = validation_sample(valid, 7, 0)
    assert np.count_nonzero(sample.row_lengths()) == 7
    kept = np.flatnonzero(sample.row_lengths())
    for row in kept:
        assert np.array_equal(sample.row(int(row)), valid.row(int(row)))
    assert np.array_equal(validation_sample(valid, 7, 0).indptr, sample.indptr)  # fixed by the seed


def test_training_under_the_large_data_rules_learns_and_records_them() -> None:
    """Rules forced by low thresholds on tiny data: dim lowered, softmax sampled, still far above chance."""
    split = tiny_split()
    config = resolve_config(
        "fast",
        dim=32,
        layers=2,
        lr=0.02,
        batch_size=16,
        epochs=30,
        eval_every=5,
        patience=10,
        search_max_positives=0,
        full_softmax_max_items=10,
        sampled_negatives=64,
        large_positives=100,
        large_dim=16,
        max_steps_per_epoch=2,
        max_valid_users=40,
    )
    result = train_model(split, config, progress=False)
    assert result.scale is not None
    assert (result.scale.negatives, result.scale.dim, result.scale.steps_per_epoch) == (64, 16, 2)
    assert result.config == replace(config, dim=16)
    assert result.user_vectors.shape[1] == 16
    chance = 20 / N_ITEMS  # a random top 20 of 40 items
    assert result.best_valid_recall > chance + 0.25


def test_recctl_train_prints_the_rules_and_the_bundle_records_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN]) == 0
    rules = [line for line in capsys.readouterr().out.splitlines() if line.startswith("scale rules:")]
    scale = read_model_bundle(out).config["scale"]
    assert scale["steps_per_epoch"] == 3 and scale["batch_users"] == 32 and scale["negatives"] == 0
    assert rules == [f"scale rules: {scale['rules']}"] and "3 steps of 32 per epoch, full softmax" in rules[0]


def test_a_bundle_config_naming_a_retired_setting_still_resolves() -> None:
    """Bundles trained before the score rule went by users recorded ``cosine_max_items``; retraining ignores it."""
    assert resolve_config("fast", cosine_max_items=8_192) == resolve_config("fast")
    with pytest.raises(MovierecError, match="unknown training setting"):
        resolve_config("fast", cosine_max_itemz=8_192)
