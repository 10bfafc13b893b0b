"""The validation curve of one selection phase within a time budget, beside popularity: the sweep behind the
large-data rules (``dot_min_users``, ``dot_lr``, ``uniform_negatives_share``; sweeps.md, section 7).

Loads a ratings folder, makes the standard split (positives rating >= 4, random 80/20 with seed 42, 10 % of
train as validation), applies ``TrainConfig()`` with the given ``--set`` changes and its scale rules, then runs
only the selection phase (no refit, no early stop: patience is lifted so the whole curve shows) until the
budget runs out, and prints validation Recall@20 at every evaluation beside popularity's on the same
validation users. A large set costs minutes per variant, so each variant is its own command and the figures
are compared within one session.

Usage::

    .venv/bin/python benchmarks/selection_curve.py DATA_DIR --budget 240 [--set cosine=false] [--set lr=0.01]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from generalise import parse_setting

from movierec.bundle.csr import CSR
from movierec.trainer import train as training
from movierec.trainer.config import TrainConfig
from movierec.trainer.data import load_dataset
from movierec.trainer.data.split import Split, make_split
from movierec.trainer.evaluate import evaluate_vectors


def popularity_recall(split: Split, valid: CSR) -> float:
    """Validation Recall@20 of ranking every user's unseen items by fit popularity."""
    counts = np.bincount(split.fit.indices, minlength=split.n_items).astype(np.float32)
    users = np.ones((split.n_users, 1), np.float32)
    return float(evaluate_vectors(users, counts[:, None] / counts.max(), split.fit, valid, ks=(20,))["recall@20"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="ratings folder")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of training (default 240)")
    parser.add_argument("--set", action="append", default=[], type=parse_setting, help="NAME=VALUE (repeatable)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    split = make_split(load_dataset(args.data), min_rating=4.0, seed=42)
    config = replace(TrainConfig(), time_budget=args.budget, patience=10**6, **dict(args.set))
    plan = training.scale_plan(config, split)
    config = plan.applied_to(config)
    print(f"loaded in {time.perf_counter() - started:.1f} s; {plan.describe()}; changes {dict(args.set)}")
    valid = training.validation_sample(split.valid, plan.valid_users, config.seed)
    print(f"popularity valid R@20 {popularity_recall(split, valid):.4f}")
    torch.manual_seed(config.seed)
    model = training.build_model(config, split.n_users, split.n_items)
    graph = training.build_graph(config, split.fit)
    selection = training.select_on_validation(
        split, config, model, graph, training._Clock(config.time_budget), plan, progress=False
    )
    for record in selection.history:
        if record.valid_recall is not None:
            print(
                f"epoch {record.epoch} at {record.seconds:.0f} s: loss {record.loss:.4f}, "
                f"valid {record.valid_recall:.4f}"
            )
    print(f"best valid R@20 {selection.best.recall:.4f} at epoch {selection.best.epoch} of {selection.epochs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
