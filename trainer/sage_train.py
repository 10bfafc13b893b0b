"""Training GraphSAGE (``recctl train --model graphsage``) on neighbourhood-sampled mini-batches.

Each step takes a batch of (user, movie) training positives, adds uniformly drawn movies as negatives,
samples the 2-hop neighbourhood of those users and movies (:mod:`movierec.trainer.neighbours`), and
minimises a sampled softmax: each user's positive against every movie of the step, on cosines over a
temperature. ``hidden_share`` of the step's movies get their neighbourhood hidden, so the feature-only
path a new movie takes (:meth:`GraphSAGE.item_tower`) is trained as well.

Validation is the LightGCN path's: full-graph vectors over the fit edges, Recall@20 on the validation
slice every ``eval_every`` epochs, stopping after ``patience`` evaluations without a relative gain of
``min_gain``, or at the epoch ceiling or the time budget; the best validated parameters are kept. There
is no refit: the model is inductive, so the served vectors are simply computed over all training edges
(fit + validation), which brings the validation positives in without retraining.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from movierec.bundle import write_model_bundle
from movierec.bundle.csr import CSR
from movierec.errors import BundleError
from movierec.item_features import ItemFeatureModel
from movierec.trainer.data import item_metadata, load_dataset
from movierec.trainer.data.split import Split, make_split
from movierec.trainer.evaluate import evaluate_vectors
from movierec.trainer.features import NodeFeatures, node_features
from movierec.trainer.models.graph import bipartite_edge_index
from movierec.trainer.models.graphsage import GraphSAGE
from movierec.trainer.neighbours import NeighbourSampler
from movierec.trainer.pipeline import CURVE_NAME, SPLIT_SEED, peak_rss_mb, protocol_summary, trained_bundle
from movierec.trainer.plot import plot_training_curve
from movierec.trainer.sage_config import SageConfig
from movierec.trainer.train import EpochRecord, progress_bar


@dataclass(frozen=True)
class SageResult:
    model: GraphSAGE
    user_vectors: npt.NDArray[np.float32]
    item_vectors: npt.NDArray[np.float32]
    best_epoch: int
    best_valid_recall: float
    history: tuple[EpochRecord, ...]
    stop_reason: str
    seconds: float


def full_graph_vectors(model: GraphSAGE, positives: CSR) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Every user's and movie's vector over all of ``positives`` (no sampling), as float32 numpy arrays."""
    model.eval()
    with torch.no_grad():
        out = model(torch.arange(model.n_users + model.n_items), bipartite_edge_index(positives))
    model.train()
    vectors = out.numpy().astype(np.float32)
    return np.ascontiguousarray(vectors[: model.n_users]), np.ascontiguousarray(vectors[model.n_users :])


class _Steps:
    """One epoch of sampled-softmax steps over the fit positives (module docstring)."""

    def __init__(self, model: GraphSAGE, fit: CSR, config: SageConfig) -> None:
        self.model, self.config = model, config
        self.sampler = NeighbourSampler(fit, config.fanouts)
        users, items = fit.to_pairs()
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items.astype(np.int64))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def epoch(self, out_of_time: Any) -> float:
        losses = []
        order = torch.randperm(self.users.shape[0], generator=self.generator)
        for start in range(0, order.shape[0], self.config.batch_size):
            if out_of_time():
                break
            batch = order[start : start + self.config.batch_size]
            loss = self._loss(self.users[batch], self.items[batch])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def _loss(self, users: Tensor, items: Tensor) -> Tensor:
        n_users, n_items = self.model.n_users, self.model.n_items
        drawn = torch.randint(0, n_items, (self.config.negatives,), generator=self.generator)
        batch_users = torch.unique(users)
        candidates = torch.unique(torch.cat([items, drawn]))
        hidden = torch.zeros(n_users + n_items, dtype=torch.bool)
        hidden_items = candidates[torch.rand(candidates.shape[0], generator=self.generator) < self.config.hidden_share]
        hidden[hidden_items + n_users] = True
        seeds = torch.cat([batch_users, candidates + n_users])
        n_id, edge_index = self.sampler.sample(seeds, self.generator, hidden)
        out = self.model(n_id, edge_index)
        user_rows = out[torch.searchsorted(batch_users, users)]
        item_rows = out[batch_users.shape[0] : seeds.shape[0]]
        logits = user_rows @ item_rows.T / self.config.temperature
        return F.cross_entropy(logits, torch.searchsorted(candidates, items))


def train_sage(split: Split, features: NodeFeatures, config: SageConfig, *, progress: bool = True) -> SageResult:
    """Select on validation (module docstring); vectors of the best parameters over all training edges."""
    torch.manual_seed(config.seed)
    model = GraphSAGE(
        split.n_users,
        torch.from_numpy(features.users),
        torch.from_numpy(features.items),
        config.dim,
        config.layers,
        init_std=config.init_std,
    )
    steps = _Steps(model, split.fit, config)
    started = time.perf_counter()
    deadline = started + config.time_budget if config.time_budget > 0 else math.inf
    best_state, best_recall, best_epoch, reference, without_gain = copy.deepcopy(model.state_dict()), -1.0, 0, 0.0, 0
    history: list[EpochRecord] = []
    stop_reason = "epoch limit"
    with progress_bar(config.epochs, "train graphsage", enabled=progress) as bar:
        for epoch in range(1, config.epochs + 1):
            loss = steps.epoch(lambda: time.perf_counter() >= deadline)
            time_up = time.perf_counter() >= deadline
            if not np.isfinite(loss):
                stop_reason = "time budget" if time_up else "loss is not finite"
                break
            recall = None
            if epoch % config.eval_every == 0 or epoch == config.epochs or time_up:
                users, items = full_graph_vectors(model, split.fit)
                recall = evaluate_vectors(users, items, split.fit, split.valid, ks=(20,))["recall@20"]
                if recall >= best_recall:  # a tie keeps the later, longer-trained parameters
                    best_state, best_recall, best_epoch = copy.deepcopy(model.state_dict()), recall, epoch
                if recall > reference * (1 + config.min_gain):
                    reference, without_gain = recall, 0
                else:
                    without_gain += 1
            history.append(EpochRecord(epoch, time.perf_counter() - started, loss, recall))
            bar.update(1)
            bar.set_postfix({"loss": f"{loss:.4f}", "best_valid_r20": f"{max(best_recall, 0):.4f}"})
            if without_gain >= config.patience:
                stop_reason = f"no validation gain in {config.patience} evaluations"
                break
            if time_up:
                stop_reason = "time budget"
                break
    model.load_state_dict(best_state)
    user_vectors, item_vectors = full_graph_vectors(model, split.train)
    return SageResult(
        model,
        user_vectors,
        item_vectors,
        best_epoch,
        max(best_recall, 0.0),
        tuple(history),
        stop_reason,
        time.perf_counter() - started,
    )


def train_sage_bundle(
    data: Path,
    out: Path,
    config: SageConfig,
    *,
    data_format: str | None = None,
    min_rating: float = 4.0,
    split_method: str = "random",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``train_bundle``'s GraphSAGE twin: same split, evaluator and bundle, plus the new-movie item tower."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not force:
        raise BundleError("already exists (pass --force to replace it)", path=out)
    dataset = load_dataset(Path(data), data_format)
    split = make_split(dataset, min_rating=min_rating, seed=SPLIT_SEED, method=split_method)
    items = item_metadata(dataset, split.item_ids)
    features = node_features(dataset, items, split.user_ids)
    result = train_sage(split, features, config, progress=progress)
    metrics: dict[str, Any] = dict(
        evaluate_vectors(result.user_vectors, result.item_vectors, split.train, split.test, item_genres=items.genres)
    )
    metrics["protocol"] = protocol_summary(split)
    training = {
        "best_epoch": result.best_epoch,
        "selection_epochs": len(result.history),
        "refit_epochs": 0,
        "epochs_run": len(result.history),
        "best_valid_recall@20": result.best_valid_recall,
        "seconds": round(result.seconds, 2),
        "stop_reason": result.stop_reason,
        "refitted_on_train": False,
        "history": [vars(record) for record in result.history],
    }
    metrics["training"] = training
    bundle = trained_bundle(
        result.user_vectors,
        result.item_vectors,
        dataset,
        split,
        items,
        min_rating,
        train_config=config.to_json(),
        extra_config={"user_features": list(features.user_columns)},
        metrics=metrics,
    )
    with tempfile.TemporaryDirectory(prefix="movierec-sage-") as scratch:
        curve = Path(scratch) / CURVE_NAME
        plot_training_curve(result.history, result.best_epoch, curve, f"graphsage on {dataset.name}", test=metrics)
        tower = ItemFeatureModel(features.encoder, result.model.item_tower(), "graphsage").write(Path(scratch))
        write_model_bundle(bundle, out, force=force, attachments={CURVE_NAME: curve, **{p.name: p for p in tower}})
    summary = {key: value for key, value in metrics.items() if key != "training"}
    summary["training"] = {k: v for k, v in training.items() if k != "history"}
    summary["training"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["training"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary["bundle"] = str(out)
    return summary
