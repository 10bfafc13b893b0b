"""``recctl train --workers N`` and torchrun: data-parallel training over gloo, on tiny data.

The processes are real (torch.multiprocessing / the torchrun launcher), talking
over loopback TCP as they would across machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from test_train import N_ITEMS, N_USERS, TINY_TRAIN, tiny_split, write_ratings
from torch.multiprocessing.spawn import spawn

from movierec.bundle import read_model_bundle
from movierec.trainer.config import TrainConfig, resolve_config
from movierec.trainer.distributed import GlooCoordinator, free_loopback_port
from movierec.trainer.models.graph import normalized_adjacency
from movierec.trainer.models.lightgcn import LightGCN
from movierec.trainer.train import SOLO, Coordinator, _Stepper

RECCTL = [sys.executable, "-m", "movierec.clients.cli.main"]


def _one_step(config: TrainConfig, coordinator: Coordinator, weighted: bool = False) -> torch.Tensor:
    """Parameters after one plain SGD step (lr 1) on the whole tiny fit slice as one batch.

    ``weighted``: with unequal per-positive loss weights (as recency gives), fixed by a seed.
    """
    split = tiny_split()
    weights = np.random.default_rng(3).uniform(0.05, 1.0, split.fit.nnz).astype(np.float32) if weighted else None
    torch.manual_seed(0)
    model = LightGCN(split.n_users, split.n_items, 8, 2)
    coordinator.adopt(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stepper = _Stepper(
        config,
        split.fit,
        model,
        normalized_adjacency(split.fit),
        optimizer=optimizer,
        coordinator=coordinator,
        weights=weights,
    )
    assert len(stepper._batches()) == 1
    stepper.rng = np.random.default_rng(7)  # the batch order and negatives _batches() just consumed, again
    stepper.epoch(lambda: False)
    return model.embedding.weight.detach().clone()


def _step_worker(rank: int, world: int, port: int, config: TrainConfig, out: str, weighted: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        coordinator = GlooCoordinator()
        weights = _one_step(config, coordinator, weighted)
        assert coordinator.steps == 1 and coordinator.allreduce_seconds > 0
        torch.save(weights, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("sampled", "weighted"), [(False, False), (True, False), (False, True)])
def test_one_step_of_two_workers_equals_one_step_of_one_process(tmp_path: Path, sampled: bool, weighted: bool) -> None:
    """Each worker takes half the batch's users; the all-reduced gradient is the whole batch's (also when the
    positives carry unequal loss weights: each worker's share is its weight, not its count of positives)."""
    extra = {"full_softmax_max_items": 10, "sampled_negatives": 16} if sampled else {}
    config = resolve_config("fast", dim=8, layers=2, batch_size=N_USERS, weight_decay=1e-2, **extra)
    alone = _one_step(config, SOLO, weighted)
    out = str(tmp_path / "weights")
    spawn(_step_worker, args=(2, free_loopback_port(), config, out, weighted), nprocs=2)  # type: ignore[no-untyped-call]
    first, second = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert torch.equal(first, second)  # every worker holds the same parameters after the step
    torch.manual_seed(0)
    initial = LightGCN(N_USERS, N_ITEMS, 8, 2)  # the same seed's start, to check the step moved them
    assert not torch.allclose(alone, initial.embedding.weight, atol=1e-4)
    torch.testing.assert_close(first, alone, rtol=1e-5, atol=1e-6)


def _train(
    data: Path, out: Path, *extra: str, env: dict[str, str] | None = None, recipe: tuple[str, ...] = tuple(TINY_TRAIN)
) -> subprocess.CompletedProcess[str]:
    command = [*RECCTL, "train", "--data", str(data), "--out", str(out), *recipe, "--seed", "3", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_recctl_train_workers_2_matches_one_process(tmp_path: Path) -> None:
    data = write_ratings(tmp_path / "data")
    alone = _train(data, tmp_path / "alone", "--json")
    assert alone.returncode == 0, alone.stderr
    shared = _train(data, tmp_path / "shared", "--workers", "2", "--json")
    assert shared.returncode == 0, shared.stderr
    one, two = json.loads(alone.stdout), json.loads(shared.stdout)
    bundle = read_model_bundle(tmp_path / "shared")
    assert bundle.config["workers"] == 2 and read_model_bundle(tmp_path / "alone").config["workers"] == 1
    assert bundle.metrics["recall@20"] == pytest.approx(two["recall@20"])
    assert two["recall@20"] > 20 / N_ITEMS + 0.2  # far above a random top 20 of 40 items
    assert two["recall@20"] == pytest.approx(one["recall@20"], abs=0.02)
    assert two["training"]["epochs_run"] == one["training"]["epochs_run"]
    timings = two["training"]["distributed"]["per_worker"]
    assert len(timings) == 2 and all(t["steps"] == timings[0]["steps"] > 0 for t in timings)
    assert all(0 < t["communication_share"] < 1 for t in timings)


def test_the_same_command_runs_under_torchrun(tmp_path: Path) -> None:
    """torchrun starts the processes and sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; recctl joins its group."""
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "movierec.clients.cli.main"]
    command += ["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # only the leader prints
    assert len(summary["training"]["distributed"]["per_worker"]) == 2
    assert read_model_bundle(out).config["workers"] == 2


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--workers", "0"], {}, "--workers must be a positive integer"),
        (["--workers", "2", "--model", "graphsage"], {}, "graphsage trains in one process"),
        (
            ["--workers", "3"],
            {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            "disagrees with torchrun's WORLD_SIZE 2",
        ),
    ],
)
def test_bad_worker_settings_fail_in_one_line(
    tmp_path: Path, extra: list[str], env: dict[str, str], message: str
) -> None:
    data = write_ratings(tmp_path / "data")
    recipe = ("--epochs", "1") if "graphsage" in extra else tuple(TINY_TRAIN)  # graphsage takes its own flags
    done = _train(data, tmp_path / "bundle", *extra, env={**os.environ, **env}, recipe=recipe)
    assert done.returncode != 0
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bundle").exists()
