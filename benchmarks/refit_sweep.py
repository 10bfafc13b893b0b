"""How long to select and how long to refit: the sweep behind ``refit``, ``refit_fraction`` and ``patience``.

One selection run of the default recipe on ``fit`` (validated every 2
epochs) is snapshotted at a few epochs; from each snapshot the refit keeps
training on all of train with the learning rate annealed to zero for a few
lengths, and each result is scored on test (standard split: ML-1M, rating >= 4,
random 80/20 with seed 42, full ranking, train items masked). The snapshot
alone (validated parameters, no refit) is scored too. Results are printed and
written to ``benchmarks/results/refit_sweep.json``; ``sweeps.md`` quotes them.

Usage::

    .venv/bin/python benchmarks/refit_sweep.py [--snapshots 16,24,32,40] [--refits 6,12] [--seed 42]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_machine import machine_basics

from movierec.paths import default_ml1m_dir


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=default_ml1m_dir())
    parser.add_argument("--snapshots", type=_ints, default=[16, 24, 32, 40], help="selection epochs to refit from")
    parser.add_argument("--refits", type=_ints, default=[6, 12], help="refit lengths in epochs")
    parser.add_argument("--seed", type=int, default=42, help="training seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "refit_sweep.json")
    args = parser.parse_args()
    if args.data is None:
        raise SystemExit("no --data and no MovieLens-1M copy found")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from movierec.trainer.config import TrainConfig
    from movierec.trainer.data import load_dataset
    from movierec.trainer.data.split import make_split
    from movierec.trainer.evaluate import evaluate_vectors
    from movierec.trainer.train import _Stepper, build_graph, build_model, final_vectors

    split = make_split(load_dataset(args.data))
    config = replace(TrainConfig(), seed=args.seed)
    fit_graph, train_graph = build_graph(config, split.fit), build_graph(config, split.train)

    def test_scores(model: Any) -> dict[str, float]:
        users, items = final_vectors(model, train_graph, cosine=config.cosine)
        metrics = evaluate_vectors(users, items, split.train, split.test, ks=(20,))
        return {"recall@20": round(metrics["recall@20"], 4), "ndcg@20": round(metrics["ndcg@20"], 4)}

    torch.manual_seed(config.seed)
    model = build_model(config, split.n_users, split.n_items)
    stepper = _Stepper(config, split.fit, model, fit_graph)
    snapshots: dict[int, tuple[Any, Any]] = {}
    curve: list[tuple[int, float]] = []
    for epoch in range(1, max(args.snapshots) + 1):
        stepper.epoch(lambda: False)
        if epoch % 2 == 0:
            users, items = final_vectors(model, fit_graph, cosine=config.cosine)
            curve.append((epoch, evaluate_vectors(users, items, split.fit, split.valid, ks=(20,))["recall@20"]))
            print(f"epoch {epoch}: valid Recall@20 {curve[-1][1]:.4f}", flush=True)
        if epoch in args.snapshots:
            snapshots[epoch] = (copy.deepcopy(model.state_dict()), copy.deepcopy(stepper.optimizer.state_dict()))
    rows: list[dict[str, Any]] = []
    for epoch, (state, optimizer_state) in snapshots.items():
        model.load_state_dict(state)
        rows.append({"selection_epochs": epoch, "refit_epochs": 0, "test": test_scores(model), "seconds": 0.0})
        print(rows[-1], flush=True)
        for length in args.refits:
            model.load_state_dict(state)
            refit = _Stepper(config, split.train, model, train_graph, seed=config.seed + 1)
            refit.optimizer.load_state_dict(optimizer_state)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(refit.optimizer, T_max=length)
            started = time.perf_counter()
            for _ in range(length):
                refit.epoch(lambda: False)
                schedule.step()
            seconds = round(time.perf_counter() - started, 1)
            row = {"selection_epochs": epoch, "refit_epochs": length, "test": test_scores(model), "seconds": seconds}
            rows.append(row)
            print(rows[-1], flush=True)
    payload = {"machine": machine_basics("torch", "numpy"), "seed": args.seed, "valid_curve": curve, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
