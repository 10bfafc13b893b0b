"""From a ratings folder to a model bundle: load, split, train, evaluate on test, write atomically."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import ItemMetadata, ModelBundle, write_model_bundle
from movierec.errors import BundleError
from movierec.trainer.config import TrainConfig
from movierec.trainer.data import Dataset, item_metadata, load_dataset
from movierec.trainer.data.split import Split, make_split
from movierec.trainer.evaluate import evaluate_vectors
from movierec.trainer.plot import plot_training_curve
from movierec.trainer.sage_config import SageConfig
from movierec.trainer.train import SOLO, Coordinator, TrainResult, train_model

CURVE_NAME = "training_curve.png"
SPLIT_SEED = 42  # the standard split's seed (see movierec.trainer.data.split); the training seed is separate


def test_metrics(
    result: TrainResult, split: Split, item_genres: Sequence[Sequence[str]] | None = None
) -> dict[str, Any]:
    """Test-set metrics of the kept vectors, with every training item masked, plus the protocol.

    ``item_genres`` (one list per item row) adds the lists' genre diversity, as ``recctl evaluate`` reports it.
    """
    metrics: dict[str, Any] = dict(
        evaluate_vectors(result.user_vectors, result.item_vectors, split.train, split.test, item_genres=item_genres)
    )
    metrics["protocol"] = protocol_summary(split)
    return metrics


def protocol_summary(split: Split) -> dict[str, Any]:
    """The split protocol, with how the metrics are computed, as stored in config and metrics."""
    return {
        **split.protocol,
        "positives": f"rating >= {split.protocol['min_rating']:g}",
        "ranking": "full ranking over all items, each user's training items masked",
        "users": "users with >= 1 test item",
    }


def trained_bundle(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    dataset: Dataset,
    split: Split,
    items: ItemMetadata,
    min_rating: float,
    *,
    train_config: dict[str, Any],
    extra_config: dict[str, Any],
    metrics: dict[str, Any],
) -> ModelBundle:
    """The bundle every trainer writes: its vectors with the split's ids, seen sets and protocol and the dataset's
    identity, so LightGCN and GraphSAGE bundles serve, evaluate and rebuild alike.

    ``extra_config`` is the model's own part of the config, stored after the shared keys.
    """
    return ModelBundle(
        user_vectors=user_vectors,
        item_vectors=item_vectors,
        user_ids=split.user_ids,
        item_ids=split.item_ids,
        items=items,
        seen=split.seen,
        train=split.train,
        valid=split.valid,
        test=split.test,
        config={
            "train": train_config,
            "data": {"path": str(dataset.path), "format": dataset.format, "min_rating": min_rating},
            "protocol": protocol_summary(split),
            **extra_config,
        },
        metrics=metrics,
        dataset={"name": dataset.name, "sha256": dataset.checksum, "path": str(dataset.path), "min_rating": min_rating},
    )


def train_bundle(
    data: Path,
    out: Path,
    config: TrainConfig | SageConfig,
    *,
    data_format: str | None = None,
    min_rating: float = 4.0,
    split_method: str = "random",
    force: bool = False,
    progress: bool = True,
    coordinator: Coordinator = SOLO,
) -> dict[str, Any]:
    """Train on ``data`` and write the bundle to ``out``; returns a JSON-ready summary.

    An existing ``out`` is refused before any work unless ``force``; the bundle
    is staged and renamed into place, so a failure or Ctrl-C leaves ``out`` as it was.
    With several training processes (``movierec.trainer.distributed``) every
    one trains; only the leader evaluates on test and writes (the others return {}).
    ``split_method`` is the evaluation split's (``movierec.trainer.data.split``):
    "temporal" holds out each user's latest positives, the question a service answers.
    """
    if isinstance(config, SageConfig):  # GraphSAGE: its own settings and loop, the same split, evaluator and bundle
        from movierec.trainer.sage_train import train_sage_bundle

        return train_sage_bundle(
            data,
            out,
            config,
            data_format=data_format,
            min_rating=min_rating,
            split_method=split_method,
            force=force,
            progress=progress,
        )
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not force:
        raise BundleError("already exists (pass --force to replace it)", path=out)
    dataset = load_dataset(Path(data), data_format)
    split = make_split(dataset, min_rating=min_rating, seed=SPLIT_SEED, method=split_method)
    result = train_model(split, config, progress=progress and coordinator.leader, coordinator=coordinator)
    if not coordinator.leader:
        return {}
    items = item_metadata(dataset, split.item_ids)
    metrics = test_metrics(result, split, items.genres)
    metrics["training"] = training_summary(result)
    bundle = trained_bundle(
        result.user_vectors,
        result.item_vectors,
        dataset,
        split,
        items,
        min_rating,
        train_config=(result.config or config).to_json(),  # the search's choice when the search ran
        extra_config={
            "scale": scale_summary(result),  # what the scale rules chose (movierec.trainer.config.plan_for)
            "workers": coordinator.world,  # training processes (recctl train --workers / torchrun)
        },
        metrics=metrics,
    )
    with tempfile.TemporaryDirectory(prefix="movierec-train-") as scratch:
        curve = Path(scratch) / CURVE_NAME
        title = f"{config.model} ({config.preset} preset) on {dataset.name}"
        plot_training_curve(result.history, result.best_epoch, curve, title, test=metrics, trials=result.search)
        write_model_bundle(bundle, out, force=force, attachments={CURVE_NAME: curve})
    summary = {key: value for key, value in metrics.items() if key != "training"}
    summary["training"] = {k: v for k, v in metrics["training"].items() if k != "history"}
    # Everything this call did: loading, splitting, both training phases, test metrics, the bundle.
    summary["training"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["training"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary["bundle"] = str(out)
    return summary


def training_summary(result: TrainResult) -> dict[str, Any]:
    """How training went, as stored in the bundle's metrics (the history draws the curve)."""
    return {
        "best_epoch": result.best_epoch,
        "selection_epochs": result.selection_epochs,
        "refit_epochs": result.refit_epochs,
        # every epoch trained: all the search's selection runs (or the one selection), then the refit
        "epochs_run": (sum(trial.epochs for trial in result.search) or result.selection_epochs) + result.refit_epochs,
        "best_valid_recall@20": result.best_valid_recall,
        "seconds": round(result.seconds, 2),
        "stop_reason": result.stop_reason,
        "refitted_on_train": result.refitted,
        "search": [vars(trial) for trial in result.search],
        "scale": scale_summary(result),
        "history": [vars(record) for record in result.history],
    }


def scale_summary(result: TrainResult) -> dict[str, Any]:
    """The scale plan's figures and its one-line description ({} for results made without one)."""
    if result.scale is None:
        return {}
    return {**asdict(result.scale), "rules": result.scale.describe()}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
