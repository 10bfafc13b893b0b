"""Accuracy of LightGCN against its peers, all on one split and through one evaluator.

Protocol (design notes §4, written into the results with every number):

* Data: MovieLens-1M from ``movierec.paths.default_ml1m_dir()`` (or ``--data``).
* Positives: rating >= 4. One global random 80/20 split of the positive
  (user, item) pairs with seed 42 (``make_split`` defaults); a validation
  slice (10 % of train) is carved from train, never from test.
* Tuning: every tuned peer is fitted on ``fit`` (train minus valid) and scored
  on ``valid`` (fit items masked); the best setting by validation Recall@20 is
  refitted on all of ``train`` and evaluated once on ``test``. The GNN rows use
  ``valid`` for early stopping only, inside ``recctl train``.
* Evaluation: ``movierec.trainer.evaluate.evaluate_ranking``: full ranking over
  all items with each user's train positives masked; Recall@K, NDCG@K (binary
  relevance), Precision@K and the seed's "recall" (hits / min(K, |test|),
  reported as ``seed_recall@K``), K = 10 and 20, averaged over users with at
  least one test item.
* Training wall time: the final fit on ``train`` (tuning time is shown apart);
  for the CLI rows, the whole ``recctl train`` process.

Usage::

    .venv/bin/python benchmarks/accuracy.py [--data DIR] [--out benchmarks/results] [--rows ease,ials] [--merge]
        [--keep-bundles DIR] [--reuse-bundles DIR]

``--reuse-bundles DIR`` re-evaluates a CLI row's kept bundle (``DIR/<row name>``, as ``--keep-bundles`` wrote
it) instead of retraining, after the same split checks; its training wall time and command stay those of the
run that trained it (from the merged results), so only the evaluation is new.

Needs the ``peers`` extra (scikit-surprise, implicit, pyspark + Java 17) for the
library rows; a row whose library is missing is reported as not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers.base import Peer, TrainingData
from peers.ease import Ease
from peers.ials import ImplicitAls
from peers.inputs import training_data
from peers.machine import describe_machine
from peers.popularity import Popularity
from peers.puresvd import PureSvd
from peers.recctl import (
    RecctlRow,
    RecctlRowError,
    bundle_folder_name,
    evaluate_recctl_bundle,
    run_recctl_row,
    split_differences,
)
from peers.report import write_chart, write_coverage_chart, write_json, write_markdown
from peers.spark_als import SparkAls, local_spark
from peers.surprise_svd import SurpriseSvd
from peers.tuning import Params, Trial, grid_search
from tqdm import tqdm

from movierec.bundle import read_model_bundle
from movierec.paths import default_ml1m_dir
from movierec.trainer.data import item_metadata, load_dataset, make_split
from movierec.trainer.data.split import Split
from movierec.trainer.evaluate import evaluate_ranking

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RESULTS_NAME = "accuracy"
SELECTION_METRIC = "recall@20"


@dataclass(frozen=True)
class PeerRow:
    """A table row fitted in this process: a peer factory and the grid it is tuned over (one point = fixed)."""

    key: str
    name: str
    make: Callable[..., Peer]
    grid: tuple[Params, ...]
    library: str | None = None  # the module a third-party peer needs, to say why a kept row was not re-run


def _grid(**axes: Sequence[float | int]) -> tuple[Params, ...]:
    """The cartesian product of the axes, in the order given (earlier points win ties)."""
    points: list[dict[str, float | int]] = [{}]
    for name, values in axes.items():
        points = [{**point, name: value} for point in points for value in values]
    return tuple(points)


def peer_rows(spark: Callable[[], SparkSession]) -> list[PeerRow]:
    """The in-process rows, in table order. ``spark`` starts the shared session on first use."""

    def spark_als(**params: Any) -> Peer:
        return SparkAls(spark(), **params)

    return [
        PeerRow("popularity", "Popularity", Popularity, ({},)),
        PeerRow(
            "surprise-svd",
            "SVD (Surprise)",
            SurpriseSvd,
            ({"factors": 100, "epochs": 20, "lr": 0.005, "reg": 0.02},),  # Surprise's defaults, as the seed ran it
            library="surprise",
        ),
        PeerRow(
            "spark-als",
            "ALS (Spark)",
            spark_als,
            # A cross around the best of an exploratory sweep on valid; each fit takes ~1.5 min on 2 cores.
            (
                {"rank": 64, "reg": 0.1, "alpha": 1.0},
                {"rank": 64, "reg": 0.5, "alpha": 1.0},
                {"rank": 64, "reg": 0.1, "alpha": 3.0},
            ),
            library="pyspark",
        ),
        PeerRow(
            "ials",
            "iALS (implicit)",
            ImplicitAls,
            _grid(factors=(64, 128, 256), reg=(50.0, 100.0), alpha=(10.0,)),
            library="implicit",
        ),
        PeerRow("ease", "EASE (λ tuned)", Ease, _grid(l2=(100.0, 250.0, 500.0, 1000.0, 2000.0))),
        PeerRow("puresvd", "PureSVD (factors tuned)", PureSvd, _grid(factors=(16, 32, 64, 128))),
    ]


OURS_PREFIX = "LightGCN (ours"
OURS = f"{OURS_PREFIX})"
RECCTL_ROWS = [
    # NGCF propagates over the CSR adjacency only, so it cannot run the stock-PyG `paper` preset. It is run
    # twice: with the fast preset's NGCF settings (64-d, lr 1e-2, L2 1e-2, dot-product scores at τ 0.2, from
    # a short NGCF sweep recorded in trainer/config.py), and with L2 1e-4 under a 480 s budget.
    RecctlRow("ngcf", "NGCF (fast preset: 64-d, lr 1e-2, L2 1e-2)", ("--model", "ngcf", "--preset", "fast")),
    RecctlRow(
        "ngcf-64",
        "NGCF (64-d, lr 1e-2, L2 1e-4, 480 s)",
        (
            "--model",
            "ngcf",
            "--preset",
            "fast",
            "--dim",
            "64",
            "--lr",
            "1e-2",
            "--weight-decay",
            "1e-4",
            "--time-budget",
            "480",
        ),
    ),
    # The stock PyG recipe (BPR, one uniform negative, lr 1e-3, batch 2048, L2 1e-4, 64-d) for a fixed 40
    # epochs, the prototype budget. Propagated with our CSR operator: the same LightGCN outputs as
    # PyG's edge-index model (tests/test_models.py checks them equal), ~10x cheaper per epoch, so 40 epochs
    # fit in ~12 min here instead of the 1-2.5 h the edge-index model needs on this shared 2-core machine.
    RecctlRow(
        "lightgcn-paper",
        "LightGCN (paper recipe, 40 epochs)",
        ("--model", "lightgcn", "--preset", "paper", "--epochs", "40", "--propagation", "csr"),
    ),
    RecctlRow("lightgcn-ours", "LightGCN (ours)", ("--model", "lightgcn", "--preset", "fast")),
    # The same recipe with other training seeds (the split stays seed 42): how much of a margin is noise.
    *(
        RecctlRow(f"lightgcn-ours-seed{seed}", f"{OURS_PREFIX}, training seed {seed})", ("--seed", str(seed)))
        for seed in (1, 2)
    ),
    # PyG SAGEConv with movie and user features, neighbourhood-sampled mini-batches (SageConfig defaults,
    # early stopping on valid); benchmarks/results/graphsage.md has its training curve and a second run.
    RecctlRow("graphsage", "GraphSAGE (movie + user features)", ("--model", "graphsage")),
]


# The training settings shown in the table for CLI rows (the whole config is in the JSON).
CLI_SETTINGS_SHOWN = (
    "preset",
    "loss",
    "cosine",
    "temperature",
    "dim",
    "layers",
    "lr",
    "batch_size",
    "weight_decay",
    "epochs",
    "refit",
    "refit_fraction",
    "patience",
    "min_gain",
)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _provenance() -> dict[str, Any]:
    """When a row started and how loaded the shared machine was then (its wall times depend on it)."""
    return {"started_at": _utc_now(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}


def run_peer(
    row: PeerRow,
    fit_data: TrainingData,
    train_data: TrainingData,
    split: Split,
    item_genres: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Tune on valid (when the grid has several points), refit on train, evaluate on test (``item_genres``:
    one genre list per item row, for the lists' genre diversity)."""
    provenance = _provenance()
    trials: list[Trial] = []
    started = time.perf_counter()
    if len(row.grid) > 1:

        def report(trial: Trial) -> None:
            valid = trial.valid_metrics
            tqdm.write(
                f"  {row.name} {dict(trial.params)}: valid recall@20 {valid['recall@20']:.4f} "
                f"ndcg@20 {valid['ndcg@20']:.4f} ({trial.fit_seconds:.1f} s)"
            )

        search = grid_search(row.make, row.grid, fit_data, split.valid, SELECTION_METRIC, on_trial=report)
        params, trials = search.best, search.trials
    else:
        params = row.grid[0]
    tuning_seconds = time.perf_counter() - started if trials else None
    peer = row.make(**params)
    fit_started = time.perf_counter()
    peer.fit(train_data)
    train_seconds = time.perf_counter() - fit_started
    metrics = evaluate_ranking(peer.score, split.train, split.test, item_genres=item_genres)
    return {
        "name": row.name,
        "key": row.key,
        "params": dict(params),
        "metrics": metrics,
        "train_seconds": train_seconds,
        "tuning_seconds": tuning_seconds,
        "selection_metric": SELECTION_METRIC,
        "trials": [
            {"params": dict(t.params), "valid_metrics": t.valid_metrics, "fit_seconds": t.fit_seconds} for t in trials
        ],
        **provenance,
    }


def _lazy_spark(stack: ExitStack) -> Callable[[], SparkSession]:
    """A getter that starts one local Spark session on first call and stops it when ``stack`` closes."""
    sessions: list[SparkSession] = []

    def get() -> SparkSession:
        if not sessions:
            sessions.append(stack.enter_context(local_spark(cores=2)))
        return sessions[0]

    return get


def _selected(requested: str | None, known: Sequence[str]) -> set[str]:
    """The row keys named by ``--rows`` (all when absent); an unknown key stops the run before any work."""
    if requested is None:
        return set(known)
    keys = {key.strip() for key in requested.split(",") if key.strip()}
    unknown = sorted(keys - set(known))
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return keys


def protocol_description(split: Split) -> dict[str, Any]:
    return {
        **split.protocol,
        "positives": f"rating >= {split.protocol['min_rating']:g}",
        "candidates": "all items; each user's train positives masked",
        "tuning": "fit on `fit` (train minus valid), select by valid recall@20, refit on `train`",
        "metrics": {
            "recall@K": "hits / |test items|",
            "ndcg@K": "binary-relevance DCG / ideal DCG over min(K, |test items|)",
            "precision@K": "hits / K",
            "seed_recall@K": "hits / min(K, |test items|) (the seed's 'recall', not recall)",
        },
        "users": split.n_users,
        "items": split.n_items,
        "positives_fit": split.fit.nnz,
        "positives_valid": split.valid.nnz,
        "positives_train": split.train.nnz,
        "positives_test": split.test.nnz,
    }


PREAMBLE = [
    "# Accuracy on MovieLens-1M: LightGCN and its peers",
    "",
    "Every row is measured on the **same split through the same evaluator** "
    "(`movierec.trainer.evaluate.evaluate_ranking`), written by `benchmarks/accuracy.py`.",
    "",
    "**Protocol.** MovieLens-1M; positives = rating >= 4; one global random 80/20 split of the "
    "positive pairs, seed 42; a 10 % validation slice carved from train (never from test) for tuning and "
    "early stopping. Full ranking over all items with each user's train positives masked. "
    "Recall@K = hits/|test|, NDCG@K with binary relevance, Precision@K = hits/K, and the seed's own metric "
    "`seed_recall@K` = hits/min(K, |test|) (labelled as such: it is not recall). Averages over users with "
    ">= 1 test item. Tuned rows: grid on `fit` → `valid` (Recall@20), best setting refitted on `train`, "
    "evaluated once on `test`. Train wall = the final fit on `train` (tuning time apart); for the "
    "`recctl` rows, the whole `recctl train` process including data loading and its early stopping.",
    "",
    "**Rows.**",
    "- *Popularity*: number of train positives per item.",
    "- *SVD (Surprise)*: `surprise.SVD` with Surprise's defaults (100 factors, 20 epochs, lr 0.005, "
    "reg 0.02, seed 42), fitted on explicit star ratings: the train positives with their ratings **plus every "
    "rating below 4** (those are never test items; the split holds out positives only). Validation and test "
    "pairs are excluded. All unseen items ranked by the predicted rating μ+b_u+b_i+q_i·p_u, unclipped "
    "(clipping to 5 would turn the top of the ranking into ties).",
    "- *ALS (Spark)*: `pyspark.ml.recommendation.ALS(implicitPrefs=True)`, local[2], on the train "
    "positives (value 1); rank / regParam / alpha tuned on valid; scores = factor dot products.",
    "- *iALS (implicit)*: `implicit.cpu.als.AlternatingLeastSquares` on the train positives; "
    "factors / regularization / alpha tuned on valid.",
    "- *EASE*: closed form B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹ (numpy); λ tuned on valid over a grid "
    "that includes the issue's reference λ = 500.",
    "- *PureSVD*: top-k right singular vectors V of the binary train matrix (scipy `svds`), "
    "scores x_u V Vᵀ; k tuned on valid over a grid that includes the issue's reference k = 32.",
    "- *NGCF*, *LightGCN (paper recipe)*, *LightGCN (ours)*: trained and evaluated by the project's CLI "
    "(`recctl train ... --json`, `recctl evaluate --model ... --json`; the exact commands are in accuracy.json); "
    "the benchmark checks that each bundle holds exactly this split (id maps, train and test positives) and "
    "that `recctl evaluate` reports the same protocol and number of evaluated users. The paper recipe is "
    "stock PyG LightGCN (BPR, one uniform negative, Adam lr 1e-3, batch 2048, L2 1e-4, 64 dims, 3 layers) "
    "for a fixed 40 epochs, propagated with our CSR operator (same outputs as PyG's edge-index model, "
    "tested; ~10x cheaper per epoch). "
    "NGCF cannot run the stock-PyG preset (it propagates over the CSR "
    "adjacency only), so it is trained with `--preset fast`, whose NGCF settings (64-d, lr 1e-2, L2 1e-2, "
    "dot-product scores at τ 0.2, refit on train) come from a short NGCF-only sweep, and once more with L2 "
    "1e-4 under a 480 s budget; a wider NGCF search could do better, so the NGCF rows are a lower bound on "
    "what NGCF can reach on this split. *LightGCN (ours, training seed N)* repeat our row with other "
    "training seeds (same split) to show how much of a margin is seed noise.",
    "- *GraphSAGE*: `recctl train --model graphsage` (PyG `SAGEConv`, mean aggregation, 2 layers, 64-d, "
    "neighbourhood-sampled mini-batches; movie genres and year, user gender, age and occupation as node "
    "features; early stopping on valid, no refit), evaluated like the other `recctl` rows; "
    "[graphsage.md](graphsage.md) has its training curve and a second same-seed run (the run-to-run spread).",
    "- A `recctl` row re-evaluated from a kept bundle (`--reuse-bundles`) keeps the training wall time of "
    "the run that trained it; the JSON names the bundle (`reevaluated_bundle`).",
]


BEYOND_PREAMBLE = [
    "The same rows' top-20 lists, beyond whether they hit the test set (definitions in "
    "`movierec.trainer.evaluate`; where RecBole defines a measure — ItemCoverage, AveragePopularity, "
    "GiniIndex, TailPercentage — ours is its definition, differences named there). Coverage = share of the "
    "catalogue in anyone's top 20; novelty = mean -log2 of an item's share of the training interactions; "
    "Gini = inequality of how often items are recommended (0 = evenly); average popularity = mean training "
    "interactions of a recommended item; tail % = share of list slots given to the 10 % least interacted items; "
    "genre ILD = mean pairwise genre Jaccard distance within a list. Peers are scored by `evaluate_ranking` with "
    "the movies' genres, the `recctl` rows by `recctl evaluate --json` on their bundle (same evaluator). "
    "[accuracy_coverage.png](accuracy_coverage.png) plots NDCG@20 against Coverage@20 for every model.",
]


def _load_previous(path: Path) -> dict[str, Any]:
    """The results of an earlier run, to merge with (``--merge``); empty when there are none."""
    if not path.is_file():
        return {"rows": [], "runs": []}
    return dict(json.loads(path.read_text()))


def _with_shown_settings(row: dict[str, Any]) -> dict[str, Any]:
    """A CLI row with ``params`` = the settings the table shows, taken from the config it was trained with."""
    train_config = row.get("train_config")
    if train_config is None:
        return row
    return {**row, "params": {key: train_config[key] for key in CLI_SETTINGS_SHOWN if key in train_config}}


def standing_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Where our LightGCN stands against every other measured row, in Recall@20 and NDCG@20 differences."""
    measured = {row["name"]: row["metrics"] for row in rows if "metrics" in row}
    if OURS not in measured:
        return []
    ours = measured[OURS]
    lines = [f"{OURS}: Recall@20 {ours['recall@20']:.4f}, NDCG@20 {ours['ndcg@20']:.4f}. Difference to each row:"]
    for name, metrics in measured.items():
        if not name.startswith(OURS_PREFIX):
            recall = ours["recall@20"] - metrics["recall@20"]
            ndcg = ours["ndcg@20"] - metrics["ndcg@20"]
            verdict = "ahead on both" if recall > 0 and ndcg > 0 else "NOT ahead on both"
            lines.append(f"{name}: Recall@20 {recall:+.4f}, NDCG@20 {ndcg:+.4f} ({verdict})")
    seeds = [metrics for name, metrics in measured.items() if name.startswith(OURS_PREFIX)]
    if len(seeds) > 1:
        recalls = [metrics["recall@20"] for metrics in seeds]
        ndcgs = [metrics["ndcg@20"] for metrics in seeds]
        peers = [metrics for name, metrics in measured.items() if not name.startswith(OURS_PREFIX)]
        beaten = all(min(recalls) > peer["recall@20"] and min(ndcgs) > peer["ndcg@20"] for peer in peers)
        lines.append(
            f"Our recipe over {len(seeds)} training seeds: Recall@20 {min(recalls):.4f}-{max(recalls):.4f}, "
            f"NDCG@20 {min(ndcgs):.4f}-{max(ndcgs):.4f}; "
            + ("every seed is ahead of every other row on both." if beaten else "NOT every seed beats every row.")
        )
        if peers:
            best_recall = max(peer["recall@20"] for peer in peers)
            best_ndcg = max(peer["ndcg@20"] for peer in peers)
            margins = ", ".join(f"{m['recall@20'] - best_recall:+.4f} / {m['ndcg@20'] - best_ndcg:+.4f}" for m in seeds)
            lines.append(f"Each seed's margin over the best other row on each metric (Recall@20 / NDCG@20): {margins}.")
    not_run = [row["name"] for row in rows if "metrics" not in row]
    if not_run:
        lines.append(f"Not run in these results: {', '.join(not_run)}.")
    return lines


def _ordered_rows(measured: dict[str, dict[str, Any]], order: Sequence[str]) -> Iterator[dict[str, Any]]:
    for name in order:
        if name in measured:
            yield measured[name]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="MovieLens-1M folder (default: the shared copy)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rows", default=None, help="comma-separated row keys to run (default: all)")
    parser.add_argument(
        "--merge", action="store_true", help="keep rows of an existing accuracy.json that this run does not redo"
    )
    parser.add_argument(
        "--merge-from",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="also merge the rows and runs of another accuracy.json (e.g. a long row run apart); "
        "with --rows '' nothing is retrained and the results are only re-rendered",
    )
    parser.add_argument(
        "--keep-bundles",
        type=Path,
        metavar="DIR",
        help="write the CLI rows' model bundles here and keep them (default: a temporary folder)",
    )
    parser.add_argument(
        "--reuse-bundles",
        type=Path,
        metavar="DIR",
        help="re-evaluate a CLI row's bundle kept in DIR (by --keep-bundles) instead of retraining it",
    )
    parser.add_argument("--recctl-timeout", type=float, default=1800.0, help="seconds per recctl command")
    return parser.parse_args(argv)


def _run_peer_rows(
    rows: Sequence[PeerRow],
    fit_data: TrainingData,
    train_data: TrainingData,
    split: Split,
    item_genres: Sequence[Sequence[str]],
) -> Iterator[dict[str, Any]]:
    progress = tqdm(rows, desc="peers", unit="row")
    for row in progress:
        progress.set_postfix_str(row.name)
        try:
            outcome = run_peer(row, fit_data, train_data, split, item_genres)
        except ImportError as error:
            outcome = {"name": row.name, "error": f"library missing ({error}); install the peers extra"}
        tqdm.write(f"{row.name}: {_summary(outcome)}")
        yield outcome


def _run_cli_rows(
    rows: Sequence[RecctlRow],
    data_dir: Path,
    split: Split,
    expected_users: int,
    timeout: float,
    keep_in: Path | None,
    reuse_from: Path | None = None,
    previous: dict[str, dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        if keep_in is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="movierec-accuracy-"))
        else:
            keep_in.mkdir(parents=True, exist_ok=True)
            work_dir = str(keep_in)
        for row in rows:
            provenance = _provenance()
            try:
                kept = reuse_from / bundle_folder_name(row) if reuse_from is not None else None
                if kept is not None and kept.is_dir():
                    outcome = _reevaluated(row, kept, split, expected_users, timeout, (previous or {}).get(row.name))
                    provenance = {}  # the row's training provenance is the run that trained the bundle
                else:
                    outcome = run_recctl_row(row, data_dir, Path(work_dir), split.protocol, expected_users, timeout)
                bundle = read_model_bundle(Path(outcome.pop("bundle")))
                differences = split_differences(bundle, split)
                if differences:
                    raise RecctlRowError(f"the bundle's split differs from the benchmark's in {', '.join(differences)}")
                # The settings the bundle was actually trained with: presets change as the trainer evolves.
                train_config = dict(bundle.config.get("train", {}))
                result = _with_shown_settings({"name": row.name, **outcome, "train_config": train_config, **provenance})
            except RecctlRowError as error:
                result = {"name": row.name, "error": str(error)}
            tqdm.write(f"{row.name}: {_summary(result)}")
            yield result


def _reevaluated(
    row: RecctlRow,
    bundle: Path,
    split: Split,
    expected_users: int,
    timeout: float,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """A kept bundle's ``recctl evaluate``, with the training facts of the run that trained it.

    Those come from the merged results when the row is there, else from the bundle's own metrics.json
    (its training loop's seconds, without process start and data loading: labelled so).
    """
    outcome = evaluate_recctl_bundle(row, bundle, split.protocol, expected_users, timeout)
    outcome["reevaluated_bundle"] = str(bundle)
    if previous is not None and "train_seconds" in previous:
        carried = ("train_seconds", "train_command", "train_report", "started_at", "load_average_1min_at_start")
        return {**{key: previous[key] for key in carried if key in previous}, **outcome}
    training = read_model_bundle(bundle).metrics.get("training", {})
    outcome["train_seconds"] = training.get("seconds")
    outcome["train_seconds_source"] = "the bundle's metrics.json training seconds (loop only)"
    return outcome


def _beyond_accuracy_gaps(rows: Sequence[dict[str, Any]], peers: Sequence[PeerRow]) -> None:
    """Say, on each row kept without the beyond-accuracy metrics, why it was not re-measured."""
    library_of = {row.name: row.library for row in peers}
    for row in rows:
        if "metrics" not in row or "coverage@20" in row["metrics"]:
            continue
        library = library_of.get(row["name"])
        if library is not None and importlib.util.find_spec(library) is None:
            row["beyond_accuracy_missing"] = (
                f"accuracy kept from an earlier run; `{library}` is not installed here to re-run it"
            )
        else:
            row["beyond_accuracy_missing"] = "accuracy kept from an earlier run, not re-run since"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    data_dir = args.data or default_ml1m_dir()
    if data_dir is None:
        raise SystemExit("MovieLens-1M not found: pass --data or set MOVIEREC_DATA")
    started = time.perf_counter()
    machine = describe_machine()
    dataset = load_dataset(data_dir)
    split = make_split(dataset)
    fit_data = training_data(dataset.ratings, split.user_ids, split.item_ids, split.fit, [split.valid, split.test])
    train_data = training_data(dataset.ratings, split.user_ids, split.item_ids, split.train, [split.test])
    expected_users = int((split.test.row_lengths() > 0).sum())
    item_genres = item_metadata(dataset, split.item_ids).genres

    previous = _load_previous(args.out / f"{RESULTS_NAME}.json") if args.merge else {"rows": [], "runs": []}
    for other in map(_load_previous, args.merge_from):
        previous = {"rows": [*previous["rows"], *other["rows"]], "runs": [*previous["runs"], *other["runs"]]}
    measured = {row["name"]: _with_shown_settings(row) for row in previous["rows"]}
    with ExitStack() as stack:
        rows = peer_rows(_lazy_spark(stack))
        keys = _selected(args.rows, [row.key for row in rows] + [row.key for row in RECCTL_ROWS])
        chosen = [row for row in rows if row.key in keys]
        peer_outcomes = _run_peer_rows(chosen, fit_data, train_data, split, item_genres)
        measured |= {outcome["name"]: outcome for outcome in peer_outcomes}
    chosen_cli = [row for row in RECCTL_ROWS if row.key in keys]
    cli_outcomes = _run_cli_rows(
        chosen_cli,
        data_dir,
        split,
        expected_users,
        args.recctl_timeout,
        args.keep_bundles,
        args.reuse_bundles,
        dict(measured),
    )
    measured |= {outcome["name"]: outcome for outcome in cli_outcomes}

    order = [row.name for row in rows] + [row.name for row in RECCTL_ROWS]
    run = {
        "command": shlex.join(["python", "benchmarks/accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": time.perf_counter() - started,
        "finished_at": _utc_now(),
        "machine": machine,
    }
    result: dict[str, Any] = {
        "protocol": protocol_description(split) | {"users_evaluated": expected_users},
        "runs": [*previous["runs"], run],
        "rows": list(_ordered_rows(measured, order)),
    }
    result["notes"] = standing_notes(result["rows"])
    _beyond_accuracy_gaps(result["rows"], rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{RESULTS_NAME}.json", result)
    write_markdown(args.out / f"{RESULTS_NAME}.md", result, PREAMBLE, BEYOND_PREAMBLE)
    title = "MovieLens-1M, random 80/20 split of ratings >= 4 (seed 42), full ranking"
    write_chart(args.out / f"{RESULTS_NAME}.png", result["rows"], title)
    write_coverage_chart(args.out / f"{RESULTS_NAME}_coverage.png", result["rows"], f"NDCG@20 vs coverage@20: {title}")
    print(f"wrote {args.out / RESULTS_NAME}.md/.json/.png, {RESULTS_NAME}_coverage.png in {run['total_seconds']:.0f} s")
    return 0


def _summary(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"not run: {row['error']}"
    metrics = row["metrics"]
    return (
        f"recall@20 {metrics['recall@20']:.4f} ndcg@20 {metrics['ndcg@20']:.4f} "
        f"(train {row['train_seconds']:.1f} s) {row.get('params', '')}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
