"""``recctl train --workers N``: data-parallel training over ``torch.distributed`` (gloo, CPU).

Every process loads the same data, builds the same split and model (same
seed; the leader's initial parameters are broadcast anyway) and runs the
ordinary training loop (:func:`movierec.trainer.train.train_model`) with a
:class:`GlooCoordinator`:

* each optimiser step's users are shared out: process ``rank`` takes rows
  ``rank::world`` of the step's batch; every process propagates the whole graph
  (the propagation is the model, not the data), computes its shard's loss, and
  the gradients are summed with one ``all_reduce`` per parameter before the
  optimiser step — what ``DistributedDataParallel`` does, written out so the
  all-reduce can be timed apart from the compute (DDP hides it in backward hooks);
* the leader (rank 0) alone validates; its decisions (stop now, which search
  trial won) are broadcast, so every process stops at the same step;
* the leader evaluates on test and writes the bundle.

Launch. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` set, one process per worker, possibly on several machines) the
process joins that group. Otherwise ``--workers N`` spawns N local processes
with ``torch.multiprocessing`` that meet on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, spawn

from movierec.errors import MovierecError
from movierec.trainer.config import TrainConfig
from movierec.trainer.models.base import GraphRecommender
from movierec.trainer.train import Coordinator

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process is one of a group started by ``torchrun`` (or any launcher setting its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class GlooCoordinator(Coordinator):
    """This process's place in an initialised process group, timing each step's compute and all-reduce."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.steps = 0
        self.compute_seconds = 0.0  # forward + backward of this process's shard
        self.allreduce_seconds = 0.0  # summing the gradients across processes
        self._step_start = 0.0

    def adopt(self, model: GraphRecommender) -> None:
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def step_started(self) -> None:
        self._step_start = time.perf_counter()

    def reduce_gradients(self, model: GraphRecommender) -> None:
        computed = time.perf_counter()
        for parameter in model.parameters():
            if parameter.grad is None:  # this shard did not reach it: it still takes part in the sum
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)
            parameter.grad /= self.world
        reduced = time.perf_counter()
        self.steps += 1
        self.compute_seconds += computed - self._step_start
        self.allreduce_seconds += reduced - computed

    def agree(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def timings(self) -> dict[str, Any]:
        """Per-step cost on this process and the communication share of it."""
        step = self.compute_seconds + self.allreduce_seconds
        return {
            "workers": self.world,
            "steps": self.steps,
            "compute_ms_per_step": round(1000 * self.compute_seconds / max(1, self.steps), 2),
            "allreduce_ms_per_step": round(1000 * self.allreduce_seconds / max(1, self.steps), 2),
            "communication_share": round(self.allreduce_seconds / step, 4) if step else 0.0,
        }


@dataclass(frozen=True)
class TrainJob:
    """What every worker needs to run :func:`movierec.trainer.pipeline.train_bundle` (picklable)."""

    data: Path
    out: Path
    config: TrainConfig
    data_format: str | None
    min_rating: float
    force: bool
    progress: bool
    split_method: str = "random"


def threads_per_worker(local_workers: int) -> int:
    """Share this machine's cores between the workers it runs (oversubscribed threads only wait on each other)."""
    return max(1, (os.cpu_count() or 1) // max(1, local_workers))


def run_worker(job: TrainJob) -> dict[str, Any]:
    """Join the initialised group, train, and return the leader's summary (others: {})."""
    from movierec.trainer.pipeline import train_bundle

    coordinator = GlooCoordinator()
    summary = train_bundle(
        job.data,
        job.out,
        job.config,
        data_format=job.data_format,
        min_rating=job.min_rating,
        split_method=job.split_method,
        force=job.force,
        progress=job.progress,
        coordinator=coordinator,
    )
    timings = coordinator.timings()
    every = [timings] * coordinator.world
    dist.all_gather_object(every, timings)
    if coordinator.leader:
        summary["training"]["distributed"] = {"per_worker": every}
    return summary


def train_under_torchrun(job: TrainJob, workers: int | None) -> dict[str, Any]:
    """This process is one of torchrun's: join its group (env://), train, leave."""
    world = int(os.environ["WORLD_SIZE"])
    if workers is not None and workers != world:
        raise MovierecError(f"--workers {workers} disagrees with torchrun's WORLD_SIZE {world} (omit --workers)")
    torch.set_num_threads(threads_per_worker(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    dist.init_process_group("gloo", init_method="env://")
    try:
        return run_worker(job)
    finally:
        dist.destroy_process_group()


def _spawned_worker(rank: int, world: int, port: int, job: TrainJob, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads_per_worker(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        summary = run_worker(job)
        if rank == 0:
            Path(result_file).write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


def train_spawned(job: TrainJob, workers: int) -> dict[str, Any]:
    """Spawn ``workers`` local processes meeting on a free loopback port; return the leader's summary."""
    with tempfile.TemporaryDirectory(prefix="movierec-workers-") as scratch:
        result_file = str(Path(scratch) / "summary.json")
        try:
            spawn(_spawned_worker, args=(workers, free_loopback_port(), job, result_file), nprocs=workers)  # type: ignore[no-untyped-call]
        except ProcessRaisedException as failure:
            last = str(failure).strip().splitlines()[-1]
            raise MovierecError(f"a training worker failed: {last}") from None
        except ProcessExitedException as failure:
            raise MovierecError(f"a training worker exited: {failure}") from None
        summary: dict[str, Any] = json.loads(Path(result_file).read_text())
        return summary
