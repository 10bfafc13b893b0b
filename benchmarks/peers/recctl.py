"""Rows trained by the project's own CLI (NGCF, LightGCN): ``recctl train`` then ``recctl evaluate``.

They run as subprocesses so the benchmark measures exactly what a user runs,
including process start and data loading in the training wall time. Their
numbers only join the table when ``recctl evaluate`` reports the same split
protocol and the same number of evaluated users as the peers' evaluation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR

PROTOCOL_KEYS = ("split", "seed", "min_rating", "test_fraction", "valid_fraction")


class SplitParts(Protocol):
    """What a model bundle and a Split share: the id maps and the train/test positives."""

    @property
    def user_ids(self) -> npt.NDArray[np.int64]: ...

    @property
    def item_ids(self) -> npt.NDArray[np.int64]: ...

    @property
    def train(self) -> CSR: ...

    @property
    def test(self) -> CSR: ...


def split_differences(bundle: SplitParts, split: SplitParts) -> list[str]:
    """The parts in which a trained bundle's split differs from the benchmark's: the decisive same-split check.

    Comparing the protocol settings is not enough (a split implementation can
    change under the same seed); the id maps and the exact train and test
    positives must be identical for the rows to be comparable.
    """
    same = {
        "user_ids": _same_array(bundle.user_ids, split.user_ids),
        "item_ids": _same_array(bundle.item_ids, split.item_ids),
        "train": _same_csr(bundle.train, split.train),
        "test": _same_csr(bundle.test, split.test),
    }
    return [name for name, equal in same.items() if not equal]


def _same_csr(left: CSR, right: CSR) -> bool:
    return (
        left.n_cols == right.n_cols
        and _same_array(left.indptr, right.indptr)
        and _same_array(left.indices, right.indices)
    )


def _same_array(left: npt.NDArray[Any], right: npt.NDArray[Any]) -> bool:
    return left.shape == right.shape and bool(np.array_equal(left, right))


class RecctlRowError(RuntimeError):
    """A CLI-trained row could not be measured (command missing, failed, or on another protocol)."""


@dataclass(frozen=True)
class RecctlRow:
    """A table row produced by ``recctl train <train_args>`` on the benchmark's data."""

    key: str
    name: str
    train_args: tuple[str, ...]


def recctl_executable() -> Path:
    """The ``recctl`` of the running interpreter's environment (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "recctl"
    if beside.is_file():
        return beside
    found = shutil.which("recctl")
    if found is None:
        raise RecctlRowError("recctl is not installed in this environment")
    return Path(found)


def _run_json(command: Sequence[str], timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise RecctlRowError(f"`{' '.join(command)}` ran past {timeout:.0f} s") from error
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RecctlRowError(f"`{' '.join(command)}` exited {done.returncode}: {last_line}")
    try:
        payload = json.loads(done.stdout)
    except json.JSONDecodeError as error:
        raise RecctlRowError(f"`{' '.join(command)}` did not print one JSON document: {error}") from error
    if not isinstance(payload, dict):
        raise RecctlRowError(f"`{' '.join(command)}` printed JSON that is not an object")
    return payload


def protocol_mismatches(reported: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The protocol settings on which ``reported`` contradicts ``expected`` (settings it omits are not counted)."""
    return [
        f"{key}: {reported[key]!r} != {expected[key]!r}"
        for key in PROTOCOL_KEYS
        if key in reported and key in expected and reported[key] != expected[key]
    ]


def run_recctl_row(
    row: RecctlRow,
    data_dir: Path,
    work_dir: Path,
    expected_protocol: Mapping[str, Any],
    expected_users: int,
    timeout: float,
) -> dict[str, Any]:
    """Train and evaluate one row; the metrics, the wall time of ``recctl train`` and both JSON reports."""
    recctl = str(recctl_executable())
    bundle = work_dir / bundle_folder_name(row)
    train_command = [recctl, "train", "--data", str(data_dir), "--out", str(bundle), *row.train_args, "--json"]
    started = time.perf_counter()
    train_report = _run_json(train_command, timeout)
    train_seconds = time.perf_counter() - started
    return {
        **evaluate_recctl_bundle(row, bundle, expected_protocol, expected_users, timeout),
        "train_seconds": train_seconds,
        "train_command": " ".join(["recctl", *train_command[1:]]),
        "train_report": train_report,
    }


def bundle_folder_name(row: RecctlRow) -> str:
    """The folder a row's bundle is written to (and found in, when a kept bundle is re-evaluated)."""
    return row.name.replace(" ", "_").replace("/", "_")


def evaluate_recctl_bundle(
    row: RecctlRow, bundle: Path, expected_protocol: Mapping[str, Any], expected_users: int, timeout: float
) -> dict[str, Any]:
    """``recctl evaluate`` on a trained bundle: its metrics, if it reports the expected protocol and users.

    Used after training and, alone, on a kept bundle (``accuracy.py --reuse-bundles``), so a row's newer
    metrics come from the very vectors its accuracy numbers came from, without retraining.
    """
    recctl = str(recctl_executable())
    evaluation = _run_json([recctl, "evaluate", "--model", str(bundle), "--json"], timeout)
    reported_protocol = evaluation.get("protocol", {})
    mismatches = protocol_mismatches(
        reported_protocol if isinstance(reported_protocol, dict) else {}, expected_protocol
    )
    users = evaluation.get("users_evaluated")
    if users is not None and int(users) != expected_users:
        mismatches.append(f"users_evaluated: {users} != {expected_users}")
    if mismatches:
        raise RecctlRowError(f"{row.name} was evaluated on another protocol ({'; '.join(mismatches)})")
    metrics = {key: float(value) for key, value in evaluation.items() if "@" in key}
    return {"bundle": str(bundle), "metrics": metrics, "evaluate_report": evaluation}
