"""The training-curve PNG attached to every bundle: loss and validation Recall@20 per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from movierec.trainer.train import EpochRecord


def plot_training_curve(history: Sequence[EpochRecord], best_epoch: int, path: Path, title: str) -> None:
    """Loss (left axis) and validation Recall@20 (right axis) against epochs; the kept epoch is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = [record.epoch for record in history]
    loss_axis.plot(epochs, [record.loss for record in history], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    recall_axis = loss_axis.twinx()
    evaluated = [(record.epoch, record.valid_recall) for record in history if record.valid_recall is not None]
    recall_axis.plot(
        [epoch for epoch, _ in evaluated],
        [recall for _, recall in evaluated],
        color="tab:orange",
        marker="o",
        markersize=3,
        label="validation Recall@20",
    )
    recall_axis.set_ylabel("validation Recall@20", color="tab:orange")
    if best_epoch > 0:
        recall_axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        recall_axis.annotate(f"kept: epoch {best_epoch}", (best_epoch, recall_axis.get_ylim()[0]), fontsize=8)
    loss_axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
