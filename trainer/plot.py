"""The training-curve PNG attached to every bundle: loss and validation Recall@20 per epoch, refit shaded,
and the validation curves of the selection runs that were not kept (search alternatives, trials)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from movierec.trainer.config import describe_overrides
from movierec.trainer.train import REFIT, EpochRecord, SearchTrial


def loss_axis_limits(losses: Sequence[float]) -> tuple[float, float]:
    """Loss-axis limits that show the later epochs' movement.

    The first epochs' losses are far above the rest (a random model's softmax
    loss is log(n_items)); scaled to them the curve is a flat line. The top is
    the largest loss after the first tenth of the epochs (at least the first
    two), so the start is drawn clipped at the top edge instead.
    """
    values = np.asarray([loss for loss in losses if np.isfinite(loss)], dtype=float)
    if values.size == 0:
        return 0.0, 1.0
    skip = min(values.size - 1, max(2, values.size // 10))
    low, high = float(values.min()), float(values[skip:].max())
    margin = max(high - low, abs(high) * 1e-3, 1e-9) * 0.08
    return low - margin, high + margin


def plot_training_curve(
    history: Sequence[EpochRecord],
    best_epoch: int,
    path: Path,
    title: str,
    *,
    test: Mapping[str, Any] | None = None,
    trials: Sequence[SearchTrial] = (),
) -> None:
    """Loss (left axis) and validation Recall@20 (right axis) against epochs.

    The kept validation epoch is marked, the refit on all of train is shaded,
    and the final test Recall/NDCG@20 (when given) is written on the plot.
    With ``trials`` (the search's runs), the runs not kept are drawn thin and
    grey beside the kept one, a cross where a run was cut for trailing, so
    the plot shows what the kept settings won against and what was stopped early.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    epochs = [record.epoch for record in history]
    losses = [record.loss for record in history]
    loss_axis.plot(epochs, losses, color="tab:blue", label="training loss")
    loss_axis.set_ylim(*loss_axis_limits(losses))
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss (first epochs clipped)", color="tab:blue")
    refit = [record.epoch for record in history if record.phase == REFIT]
    if refit:
        loss_axis.axvspan(
            min(refit) - 0.5,
            max(refit) + 0.5,
            color="tab:green",
            alpha=0.12,
            label=f"refit on all of train ({len(refit)} epochs, learning rate annealed to 0)",
        )
    recall_axis = loss_axis.twinx()
    evaluated = [(record.epoch, record.valid_recall) for record in history if record.valid_recall is not None]
    recall_axis.plot(
        [epoch for epoch, _ in evaluated],
        [recall for _, recall in evaluated],
        color="tab:orange",
        marker="o",
        markersize=3,
        label="validation Recall@20" + (" (the kept run)" if trials else ""),
    )
    for trial in trials:
        if trial.curve and not trial.kept:
            epochs_run, recalls = zip(*trial.curve, strict=True)
            recall_axis.plot(epochs_run, recalls, color="grey", linewidth=0.8, alpha=0.6)
            end = (epochs_run[-1], recalls[-1])
            if trial.cut:
                recall_axis.plot(*end, color="grey", marker="x", markersize=6)
            recall_axis.annotate(describe_overrides(trial.overrides), end, fontsize=6, color="grey")
    if trials:
        recall_axis.plot([], [], color="grey", linewidth=0.8, label="validation runs not kept (x: cut for trailing)")
    recall_axis.set_ylabel("validation Recall@20", color="tab:orange")
    if best_epoch > 0:
        recall_axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        recall_axis.annotate(
            f"best valid: epoch {best_epoch}", (best_epoch, recall_axis.get_ylim()[1]), fontsize=8, va="top", ha="right"
        )
    handles, labels = loss_axis.get_legend_handles_labels()
    more_handles, more_labels = recall_axis.get_legend_handles_labels()
    recall_axis.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="center right")
    if test is not None and "recall@20" in test and "ndcg@20" in test:
        title += f"\nfinal test Recall@20 {test['recall@20']:.4f}, NDCG@20 {test['ndcg@20']:.4f}"
    loss_axis.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
