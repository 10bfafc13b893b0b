"""The training loop in two phases: select on validation, then refit on all of train.

1. *Selection*: train on ``split.fit`` and validate every ``eval_every``
   epochs (all items ranked for every user with validation positives, the
   user's fit items masked). It stops once ``patience`` evaluations pass
   without a gain of more than ``min_gain`` (relative) in Recall@20, or at the
   epoch ceiling or the time budget. The best validated parameters are kept.
   On small data (``search_max_positives``) the selection is repeated for
   each alternative of ``search_space``; between the score rules' user
   counts once more with dot-product scores (``cosine_max_users``,
   ``dot_min_users``); and when the positives have timestamps once more with
   recency weights (``recency_trial``, ``movierec.trainer.recency``). The best
   validation Recall@20 decides which settings go on to the refit. A run
   after the first stops early once it falls clearly behind the leading run's
   pace (``trial_cut``): such a run is not going to be kept.
2. *Refit* (``TrainConfig.refit``): the same model and optimiser keep
   training, now on all of train (fit + valid edges), for ``refit_fraction``
   of the selection's epochs while the learning rate is annealed to zero.
   Early stopping needs the validation positives held out, so the selected
   model never learned from them; the refit does, and the annealing lets it
   settle where a constant learning rate keeps it wandering.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from movierec.bundle.csr import CSR
from movierec.trainer.config import ScalePlan, TrainConfig, check_config, describe_overrides, plan_for
from movierec.trainer.data.split import Split
from movierec.trainer.evaluate import evaluate_vectors
from movierec.trainer.losses import bpr_loss, softmax_loss, weighted_mean
from movierec.trainer.models.base import GraphRecommender
from movierec.trainer.models.graph import bipartite_edge_index, normalized_adjacency
from movierec.trainer.models.lightgcn import LightGCN, StockLightGCN
from movierec.trainer.models.ngcf import NGCF
from movierec.trainer.recency import has_time_order, recency_weights
from movierec.trainer.sampling import NegativeSampler, row_entries

VALID_METRIC = "recall@20"
SELECT, REFIT = "select", "refit"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # counted across both phases: the refit's epochs follow the selection's
    seconds: float  # wall time since training started, including earlier validations
    loss: float
    valid_recall: float | None  # None for epochs without validation (every refit epoch)
    phase: str = SELECT  # SELECT: trained on fit; REFIT: trained on all of train


@dataclass(frozen=True)
class SearchTrial:
    """One selection run of the small-data search: what it changed, and how validation scored it."""

    overrides: dict[str, Any]  # the fields that differ from the requested recipe ({} for the recipe itself)
    best_valid_recall: float
    epochs: int
    cut: bool = False  # stopped early for falling behind the leading run (``TrainConfig.trial_cut``)
    curve: tuple[tuple[int, float], ...] = ()  # (epoch, validation Recall@20) at each validation of the run
    kept: bool = False  # the run whose settings went on to the refit


@dataclass(frozen=True)
class TrainResult:
    user_vectors: npt.NDArray[np.float32]
    item_vectors: npt.NDArray[np.float32]
    best_epoch: int  # the selection epoch with the best validation Recall@20 (0: never validated)
    best_valid_recall: float
    history: tuple[EpochRecord, ...]
    stop_reason: str
    seconds: float  # wall time of both phases
    model: GraphRecommender  # holding the kept parameters (the refit's, else the best validated)
    selection_epochs: int
    refit_epochs: int = 0  # 0: the vectors are the best validated ones
    config: TrainConfig | None = None  # the settings of the kept model (the search's choice)
    search: tuple[SearchTrial, ...] = ()  # every selection run when the search ran, else empty
    scale: ScalePlan | None = None  # what the scale rules chose for this data

    @property
    def refitted(self) -> bool:
        return self.refit_epochs > 0


def build_model(config: TrainConfig, n_users: int, n_items: int) -> GraphRecommender:
    if config.model == "ngcf":
        return NGCF(n_users, n_items, config.dim, config.layers, init_std=config.init_std)
    if config.propagation == "edge_index":
        return StockLightGCN(n_users, n_items, config.dim, config.layers)
    return LightGCN(n_users, n_items, config.dim, config.layers, init_std=config.init_std)


def build_graph(config: TrainConfig, positives: CSR) -> Tensor:
    """The graph to propagate over, in the form the configured back end takes."""
    if config.propagation == "edge_index":
        return bipartite_edge_index(positives)
    return normalized_adjacency(positives)


class Coordinator:
    """How the processes training one model work together; this one trains alone.

    ``movierec.trainer.distributed`` subclasses it: each of ``world`` processes
    takes the ``rank``-th shard of every step's users, gradients are summed
    across them after each backward pass, and the leader's decisions (stop,
    which search trial won) are the ones every process follows.
    """

    rank = 0
    world = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def adopt(self, model: GraphRecommender) -> None:
        """Give every process the leader's initial parameters (alone: they already are)."""

    def step_started(self) -> None:
        """Called as each optimiser step begins (the distributed coordinator times compute against communication)."""

    def reduce_gradients(self, model: GraphRecommender) -> None:
        """Make every process's gradients the global batch's (nothing to do alone)."""

    def agree(self, value: Any) -> Any:
        """The leader's ``value``, on every process."""
        return value


SOLO = Coordinator()


class _Stepper:
    """Runs one epoch of optimiser steps for the configured loss; returns the mean batch loss."""

    def __init__(
        self,
        config: TrainConfig,
        positives: CSR,
        model: GraphRecommender,
        graph: Tensor,
        plan: ScalePlan | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        seed: int | None = None,
        coordinator: Coordinator = SOLO,
        weights: npt.NDArray[np.float32] | None = None,
    ) -> None:
        self.config = config
        # Per-positive loss weights aligned with positives.indices (recency); None: every positive counts alike.
        self.weights = weights
        self.coordinator = coordinator
        self.positives = positives
        self.model = model
        self.graph = graph
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
        self.rng = np.random.default_rng(config.seed if seed is None else seed)
        self.sampler = NegativeSampler(positives)
        self.users_with_positives = np.flatnonzero(positives.row_lengths() > 0).astype(np.int64)
        self.plan = plan or plan_for(config, self.users_with_positives.shape[0], positives.n_cols, positives.nnz)
        self.pair_users, pair_items = positives.to_pairs()
        self.pair_items = pair_items.astype(np.int64)
        # Sampled-softmax negatives: a mixture of fit popularity and uniform over the catalogue (see
        # TrainConfig.uniform_negatives_share); log Q corrects for it.
        counts = np.bincount(positives.indices, minlength=positives.n_cols).astype(np.float64) + 1.0
        uniform = config.uniform_negatives_share
        self.sampling_p = (1.0 - uniform) * counts / counts.sum() + uniform / positives.n_cols
        self.log_q = torch.from_numpy(np.log(self.sampling_p).astype(np.float32))

    def epoch(self, should_stop: Callable[[], bool]) -> float:
        """Mean batch loss of one pass; NaN when ``should_stop`` ended it before its first step."""
        losses: list[float] = []
        for batch in self._batches():
            if should_stop():
                break
            self.coordinator.step_started()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._batch_loss(batch)
            loss.backward()  # type: ignore[no-untyped-call]
            self.coordinator.reduce_gradients(self.model)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def _batches(self) -> list[npt.NDArray[np.int64]]:
        if self.config.loss == "softmax":
            # At most plan.steps_per_epoch steps: past that many batches the epoch is a random sample of users.
            order = self.rng.permutation(self.users_with_positives)
            size = self.plan.batch_users
            end = min(order.shape[0], size * self.plan.steps_per_epoch)
        else:
            order = self.rng.permutation(self.pair_users.shape[0]).astype(np.int64)
            size, end = self.config.batch_size, order.shape[0]
        return [order[start : min(start + size, end)] for start in range(0, end, size)]

    def _batch_loss(self, batch: npt.NDArray[np.int64]) -> Tensor:
        """The loss whose gradient, summed over the processes' shards of ``batch``, is the batch's gradient.

        Alone, the plain batch loss. With ``world`` processes each takes rows
        ``rank::world`` and scales its mean by its share of the batch times
        ``world`` (gradients are averaged across processes), so one step of
        ``world`` processes equals one step of one process on the whole batch.
        """
        world = self.coordinator.world
        negatives = self._shared_negatives()  # drawn before sharding: every process draws the same ones
        users_final, items_final = scoring_vectors(*self.model.propagate(self.graph), cosine=self.config.cosine)
        if self.config.loss == "softmax":
            shard = batch[self.coordinator.rank :: world]
            local_rows, entries = row_entries(self.positives, shard)
            items = self.positives.indices[entries].astype(np.int64)
            weights = None if self.weights is None else torch.from_numpy(self.weights[entries])
            share = self._mass(shard) * world / max(self._mass(batch), 1e-12)
            users = torch.from_numpy(shard)
            if negatives is None:
                loss = softmax_loss(
                    users_final[users],
                    items_final,
                    torch.from_numpy(local_rows),
                    torch.from_numpy(items),
                    self.config.temperature,
                    weights,
                )
            else:
                loss = sampled_softmax_loss(
                    users_final[users],
                    items_final,
                    torch.from_numpy(local_rows),
                    torch.from_numpy(items),
                    negatives,
                    self.log_q,
                    self.config.temperature,
                    weights,
                )
            loss = loss * share if local_rows.shape[0] else users_final.sum() * 0.0
            user_ego, item_ego = self.model.ego(users, torch.arange(self.positives.n_cols))
        else:
            shard = batch[self.coordinator.rank :: world]
            user_rows = self.pair_users[shard]
            positives = self.pair_items[shard]
            negatives_bpr = self.sampler.sample(user_rows, self.rng)
            users, pos, neg = (torch.from_numpy(a) for a in (user_rows, positives, negatives_bpr))
            loss = bpr_loss(users_final[users], items_final[pos], items_final[neg]) * (
                shard.shape[0] * world / batch.shape[0]
            )
            user_ego, item_ego = self.model.ego(users, torch.cat([pos, neg]))
        # ½(‖E⁰_users‖² + ‖E⁰_items‖²)/B (losses.ego_l2), each process's users counted world times (averaged).
        l2 = 0.5 * (world * user_ego.pow(2).sum() + item_ego.pow(2).sum()) / batch.shape[0]
        total: Tensor = loss + self.config.weight_decay * l2
        return total

    def _mass(self, rows: npt.NDArray[np.int64]) -> float:
        """What the softmax loss averages over for these users: their positives' count, or their total weight."""
        if self.weights is None:
            return float(self.positives.row_lengths()[rows].sum())
        return float(self.weights[row_entries(self.positives, rows)[1]].sum())

    def _shared_negatives(self) -> Tensor | None:
        """The step's sampled-softmax negatives (None: full softmax), by fit popularity."""
        if self.config.loss != "softmax" or not self.plan.negatives:
            return None
        drawn = self.rng.choice(self.sampling_p.shape[0], size=self.plan.negatives, p=self.sampling_p)
        return torch.from_numpy(drawn.astype(np.int64))


def sampled_softmax_loss(
    users: Tensor,
    items: Tensor,
    pair_rows: Tensor,
    pair_items: Tensor,
    negatives: Tensor,
    log_q: Tensor,
    temperature: float,
    weights: Tensor | None = None,
) -> Tensor:
    """The full softmax loss (losses.softmax_loss) with its normaliser estimated from shared negatives.

    ``negatives`` are M item rows drawn with replacement from ``Q`` (``log_q``
    per item); ``Σ_j exp(s_uj) ≈ (1/M) Σ_m exp(s_u,n_m) / Q(n_m)`` is unbiased,
    so the log-normaliser is ``logsumexp_m(s_u,n_m − log Q(n_m)) − log M`` (the
    logQ correction). Memory and time are users × M, not users × catalogue.
    ``weights`` weigh the positives' terms as in losses.softmax_loss.
    """
    logits = users @ items[negatives].T / temperature - log_q[negatives]
    log_normaliser = torch.logsumexp(logits, dim=1) - math.log(negatives.shape[0])
    positive_logits = (users[pair_rows] * items[pair_items]).sum(dim=1) / temperature
    return weighted_mean(log_normaliser[pair_rows] - positive_logits, weights)


def scoring_vectors(users: Tensor, items: Tensor, *, cosine: bool) -> tuple[Tensor, Tensor]:
    """The vectors whose inner product is the score: the final embeddings, unit-normalised for ``cosine``."""
    if not cosine:
        return users, items
    return F.normalize(users, dim=1), F.normalize(items, dim=1)


def final_vectors(
    model: GraphRecommender, graph: Tensor, *, cosine: bool = False
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scoring vectors in evaluation mode, as float32 numpy arrays (the served vectors)."""
    model.eval()
    with torch.no_grad():
        users, items = scoring_vectors(*model.propagate(graph), cosine=cosine)
    model.train()
    return users.numpy().astype(np.float32, copy=True), items.numpy().astype(np.float32, copy=True)


def progress_bar(total: int, description: str, *, enabled: bool) -> Any:
    """A tqdm bar drawn only when asked for and stderr is a terminal (no escape codes in logs)."""
    return tqdm(total=total, desc=description, unit="epoch", disable=None if enabled else True)


class _Clock:
    """Wall time since training started, against the optional time budget."""

    def __init__(self, budget: float) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + budget if budget > 0 else math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return time.perf_counter() >= self.deadline


class _BestSoFar:
    """The best validated parameters so far, and how long validation has gone without a real gain.

    Any improvement replaces the kept parameters; only one by more than
    ``min_gain`` (relative) restarts the patience count, so a noisy plateau
    does not keep training alive.
    """

    def __init__(self, model: GraphRecommender, min_gain: float) -> None:
        self.min_gain = min_gain
        self.epoch = 0
        self.recall: float | None = None
        self.state = copy.deepcopy(model.state_dict())
        self.evaluations_without_gain = 0
        self._reference = -math.inf  # the recall of the last real gain

    def record(self, epoch: int, recall: float, model: GraphRecommender) -> None:
        if self.recall is None or recall > self.recall:
            self.epoch, self.recall = epoch, recall
            self.state = copy.deepcopy(model.state_dict())
        if recall > self._reference * (1 + self.min_gain) or self._reference == -math.inf:
            self._reference = recall
            self.evaluations_without_gain = 0
        else:
            self.evaluations_without_gain += 1


@dataclass(frozen=True)
class _Pace:
    """The leading selection run's best validation Recall@20 by each epoch: what a later run is measured against."""

    history: tuple[EpochRecord, ...]

    def by(self, epoch: int) -> float:
        reached = [r.valid_recall for r in self.history if r.epoch <= epoch and r.valid_recall is not None]
        return max(reached, default=0.0)

    def left_behind(self, config: TrainConfig, epoch: int, best: float) -> bool:
        """Whether a run whose best by ``epoch`` is ``best`` trails this pace by more than ``config.trial_cut``."""
        if config.trial_cut <= 0 or epoch < config.trial_cut_after:
            return False
        return best < self.by(epoch) * (1 - config.trial_cut)


@dataclass(frozen=True)
class _Selection:
    best: _BestSoFar
    history: tuple[EpochRecord, ...]
    stop_reason: str
    optimizer: torch.optim.Optimizer
    cut: bool = False  # stopped for trailing the leading run's pace

    @property
    def epochs(self) -> int:
        return self.history[-1].epoch if self.history else 0

    def overfitted(self, drop: float) -> bool:
        """Whether the last validation fell more than ``drop`` (a fraction) below the best one."""
        validated = [record.valid_recall for record in self.history if record.valid_recall is not None]
        best = self.best.recall
        return bool(validated) and best is not None and validated[-1] < best * (1.0 - drop)


def select_on_validation(
    split: Split,
    config: TrainConfig,
    model: GraphRecommender,
    graph: Tensor,
    clock: _Clock,
    plan: ScalePlan,
    *,
    progress: bool,
    label: str = "",
    coordinator: Coordinator = SOLO,
    pace: _Pace | None = None,
) -> _Selection:
    """Phase 1: train on fit, validate every ``eval_every`` epochs, stop at the plateau (module docstring).

    With a ``pace`` (a run after the first), also stop once validation falls behind it (``TrainConfig.trial_cut``).
    With several processes only the leader validates; every stop decision is the leader's.
    """
    weights = recency_weights(split, split.fit, config.recency)
    stepper = _Stepper(config, split.fit, model, graph, plan, coordinator=coordinator, weights=weights)
    best = _BestSoFar(model, config.min_gain)
    history: list[EpochRecord] = []
    valid = validation_sample(split.valid, plan.valid_users, config.seed)

    def validate(epoch: int) -> float | None:
        if not coordinator.leader:
            return None
        users, items = final_vectors(model, graph, cosine=config.cosine)
        recall = evaluate_vectors(users, items, split.fit, valid, ks=(20,))[VALID_METRIC]
        best.record(epoch, recall, model)
        return recall

    stop_reason = "epoch limit"
    cut = False
    # A mid-epoch stop needs every process to stop at the same step: alone, the budget may cut an epoch.
    mid_epoch_stop = clock.out_of_time if coordinator.world == 1 else lambda: False
    with progress_bar(config.epochs, f"train {config.model}{label}", enabled=progress) as bar:
        for epoch in range(1, config.epochs + 1):
            loss = stepper.epoch(mid_epoch_stop)
            if not coordinator.agree(np.isfinite(loss)):
                stop_reason = "time budget" if clock.out_of_time() else "loss is not finite"
                # A budget that ran out before this epoch's first step left the parameters of the last
                # recorded epoch: make sure that epoch was validated before training ends.
                if stop_reason == "time budget" and history and history[-1].valid_recall is None:
                    history[-1] = replace(history[-1], valid_recall=validate(history[-1].epoch))
                break
            # Decided once per epoch: a budget running out between two checks would otherwise end
            # training on an epoch that was never evaluated.
            time_up = coordinator.agree(clock.out_of_time())
            due = epoch % config.eval_every == 0 or epoch == config.epochs or time_up
            recall = validate(epoch) if due else None
            history.append(EpochRecord(epoch, clock.elapsed(), loss, recall))
            bar.update(1)
            bar.set_postfix(_postfix(loss, best.recall))
            behind = pace is not None and recall is not None and pace.left_behind(config, epoch, best.recall or 0.0)
            if coordinator.agree(behind):
                stop_reason, cut = f"fell behind the leading run at epoch {epoch}", True
                break
            if coordinator.agree(best.evaluations_without_gain >= config.patience):
                stop_reason = f"no validation gain in {config.patience} evaluations"
                break
            if time_up:
                stop_reason = "time budget"
                break
    return _Selection(best, tuple(history), stop_reason, stepper.optimizer, cut)


def validation_sample(valid: CSR, max_users: int, seed: int) -> CSR:
    """``valid`` itself when at most ``max_users`` users have validation items, else a fixed random sample of them.

    Ranking every item for every validation user costs users x items per
    evaluation; past ``max_users`` the other users' rows are emptied (the
    evaluator skips users without items), so the cost stays bounded.
    """
    lengths = valid.row_lengths()
    holders = np.flatnonzero(lengths > 0)
    if holders.shape[0] <= max_users:
        return valid
    kept = np.zeros(valid.n_rows, dtype=bool)
    kept[np.random.default_rng(seed).choice(holders, size=max_users, replace=False)] = True
    rows, items = valid.to_pairs()
    keep = kept[rows]
    return CSR.from_pairs(rows[keep], items[keep], valid.n_rows, valid.n_cols)


def _postfix(loss: float, best_recall: float | None) -> dict[str, str]:
    """The bar's figures: the loss, and the best validation Recall@20 once there is one."""
    shown = {"loss": f"{loss:.4f}"}
    if best_recall is not None:
        shown["best_valid_r20"] = f"{best_recall:.4f}"
    return shown


def refit_epochs_for(config: TrainConfig, selection_epochs: int) -> int:
    """How long the refit runs: ``refit_fraction`` of the selection's epochs, at least one."""
    return max(1, math.ceil(config.refit_fraction * selection_epochs))


def refit_on_train(
    split: Split,
    config: TrainConfig,
    model: GraphRecommender,
    selection: _Selection,
    clock: _Clock,
    plan: ScalePlan,
    *,
    progress: bool,
    coordinator: Coordinator = SOLO,
) -> tuple[EpochRecord, ...] | None:
    """Phase 2: keep training ``model`` on all of train with the learning rate annealed to zero.

    Continues from the selection's last parameters and optimiser state (the
    model is changed in place). Returns the refit epochs' records, or None when
    the time budget ran out or the loss stopped being finite: an unfinished
    anneal is not the schedule validation chose, so the caller keeps the
    validated parameters instead.
    """
    epochs = refit_epochs_for(config, selection.epochs)
    # The refit's own draws (NGCF's dropout) start from its settings' seed, not from wherever the selection
    # runs after the kept one left torch's generator: a trial cut early must not change the kept model.
    torch.manual_seed(config.seed + 1)
    stepper = _Stepper(
        config,
        split.train,
        model,
        build_graph(config, split.train),
        plan,
        optimizer=selection.optimizer,
        seed=config.seed + 1,
        coordinator=coordinator,
        weights=recency_weights(split, split.train, config.recency),
    )
    for group in stepper.optimizer.param_groups:
        group["lr"] = config.lr
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(stepper.optimizer, T_max=epochs)
    records: list[EpochRecord] = []
    with progress_bar(epochs, "refit on all of train", enabled=progress) as bar:
        for offset in range(1, epochs + 1):
            # Checked between epochs only, so the budget may be overrun by up to one epoch.
            if coordinator.agree(clock.out_of_time()):
                return None
            loss = stepper.epoch(lambda: False)
            if not coordinator.agree(np.isfinite(loss)):
                return None
            schedule.step()
            records.append(EpochRecord(selection.epochs + offset, clock.elapsed(), loss, None, REFIT))
            bar.update(1)
            bar.set_postfix(_postfix(loss, None))
    return tuple(records)


def _overrides(config: TrainConfig, base: TrainConfig) -> dict[str, Any]:
    return {
        f.name: getattr(config, f.name) for f in fields(TrainConfig) if getattr(config, f.name) != getattr(base, f.name)
    }


def candidate_configs(config: TrainConfig, split: Split) -> list[TrainConfig]:
    """The recipe itself, then each ``search_space`` alternative when the fit slice is small enough to search,
    then dot-product scores when the scale rules leave the score to validation (``ScalePlan.dot_trial``),
    then the recipe with recency weights when the positives have times (``recency_trial``)."""
    if not split.valid.nnz:
        return [config]
    candidates = [config]
    if 0 < split.fit.nnz <= config.search_max_positives:
        candidates += [replace(config, **dict(alternative)) for alternative in config.search_space]
    if scale_plan(config, split).dot_trial:
        candidates.append(replace(config, cosine=False, lr=min(config.lr, config.dot_lr)))
    if recency_trial_applies(config, split):
        candidates.append(replace(config, recency=config.recency_trial))
    return candidates


def recency_trial_applies(config: TrainConfig, split: Split) -> bool:
    """Whether the selection also runs with recency weights: a recipe without them whose data has a time order."""
    return (
        config.recency == 0
        and config.recency_trial > 0
        and config.loss == "softmax"
        and 0 < split.fit.nnz <= config.recency_max_positives
        and has_time_order(split)
    )


def scale_plan(config: TrainConfig, split: Split) -> ScalePlan:
    """The scale rules of ``config`` applied to the fit slice's counts."""
    users = int(np.count_nonzero(split.fit.row_lengths()))
    return plan_for(config, users, split.n_items, split.fit.nnz)


def train_model(
    split: Split, config: TrainConfig, *, progress: bool = True, coordinator: Coordinator = SOLO
) -> TrainResult:
    """Select on ``split.valid``, refit on ``split.train`` (see the module docstring); return the served vectors.

    Validation propagates over the fit graph only (the validation edges must
    stay unseen). The returned vectors propagate the kept parameters over the
    graph ``config.inference_graph`` names: ``train`` adds the validation
    edges, so each user's vector also aggregates the items held out for early
    stopping — they are known positives at serving time and are masked in the
    test evaluation like every other training item.

    The scale rules (:func:`scale_plan`) may lower ``dim`` and, for many
    users, switch to dot-product scores at a lower learning rate; the
    returned config holds what was trained with. With a ``coordinator`` of several
    processes, each runs this same function on the same data and seed.
    """
    check_config(config)
    plan = scale_plan(config, split)
    config = plan.applied_to(config)
    clock = _Clock(config.time_budget)
    trials: list[SearchTrial] = []
    chosen: tuple[TrainConfig, GraphRecommender, Tensor, _Selection] | None = None
    kept_trial = 0
    for candidate in candidate_configs(config, split):
        if chosen is not None and coordinator.agree(clock.out_of_time()):
            break
        torch.manual_seed(candidate.seed)
        model = build_model(candidate, split.n_users, split.n_items)
        coordinator.adopt(model)
        fit_graph = build_graph(candidate, split.fit)
        overrides = _overrides(candidate, config)
        label = f", {describe_overrides(overrides)}" if overrides else ""
        selection = select_on_validation(
            split,
            candidate,
            model,
            fit_graph,
            clock,
            plan,
            progress=progress,
            label=label,
            coordinator=coordinator,
            pace=None if chosen is None else _Pace(chosen[3].history),
        )
        curve = tuple((r.epoch, r.valid_recall) for r in selection.history if r.valid_recall is not None)
        trials.append(SearchTrial(overrides, selection.best.recall or 0.0, selection.epochs, selection.cut, curve))
        if chosen is None or coordinator.agree((selection.best.recall or 0.0) > (chosen[3].best.recall or 0.0)):
            chosen, kept_trial = (candidate, model, fit_graph, selection), len(trials) - 1
    assert chosen is not None  # candidate_configs always yields the recipe itself
    trials[kept_trial] = replace(trials[kept_trial], kept=True)
    kept_config, model, fit_graph, selection = chosen
    refit: tuple[EpochRecord, ...] | None = None
    stop_reason = selection.stop_reason
    overfitted = coordinator.agree(selection.overfitted(kept_config.overfit_drop))
    if overfitted:
        stop_reason += f"; no refit: validation fell more than {kept_config.overfit_drop:.0%} below its best"
    elif kept_config.refit and coordinator.agree(selection.best.recall is not None) and split.valid.nnz:
        refit = refit_on_train(
            split, kept_config, model, selection, clock, plan, progress=progress, coordinator=coordinator
        )
        if refit is None:
            why = "cut by the time budget" if clock.out_of_time() else "stopped by a non-finite loss"
            stop_reason += f"; refit on train {why} (validated vectors kept)"
    if refit is None:
        model.load_state_dict(selection.best.state)
    inference_graph = fit_graph if kept_config.inference_graph == "fit" else build_graph(kept_config, split.train)
    users, items = final_vectors(model, inference_graph, cosine=kept_config.cosine)
    return TrainResult(
        user_vectors=users,
        item_vectors=items,
        best_epoch=selection.best.epoch,
        best_valid_recall=selection.best.recall or 0.0,
        history=selection.history + (refit or ()),
        stop_reason=stop_reason,
        seconds=clock.elapsed(),
        model=model,
        selection_epochs=selection.epochs,
        refit_epochs=len(refit or ()),
        config=kept_config,
        search=tuple(trials) if len(trials) > 1 else (),
        scale=plan,
    )
