"""``recctl train`` (ratings folder -> model bundle) and ``recctl evaluate`` (bundle -> test metrics).

``evaluate`` needs numpy only: it recomputes the metrics from the bundle's
vectors and CSRs, so it runs where torch is not installed. ``train`` imports
torch inside its handler.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from movierec.clients.cli.output import print_json, print_table
from movierec.errors import MovierecError
from movierec.paths import default_ml1m_dir

# Flags that override one TrainConfig field: (flag, field, type, metavar, meaning).
RECIPE_FLAGS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--epochs", "epochs", int, "N", "maximum selection epochs (early stopping usually ends sooner)"),
    ("--dim", "dim", int, "D", "embedding size"),
    ("--layers", "layers", int, "L", "propagation layers"),
    ("--lr", "lr", float, "X", "Adam learning rate"),
    ("--batch-size", "batch_size", int, "B", "users (softmax) or pairs (bpr) per step"),
    ("--weight-decay", "weight_decay", float, "W", "L2 weight on the ego embeddings"),
    ("--temperature", "temperature", float, "T", "softmax temperature"),
    ("--refit-fraction", "refit_fraction", float, "F", "refit epochs as a fraction of the selection epochs"),
    ("--patience", "patience", int, "P", "evaluations without a gain before the selection stops"),
    ("--min-gain", "min_gain", float, "G", "relative validation gain that restarts the patience count"),
    (
        "--search-max-positives",
        "search_max_positives",
        int,
        "N",
        "try the search space's settings on validation when the fit slice has at most N positives (0: never)",
    ),
    ("--recency", "recency", float, "B", "weight each positive exp(B (r - 1)), r its rank in the user's history"),
    (
        "--recency-trial",
        "recency_trial",
        float,
        "B",
        "with timestamps, also select with --recency B and keep what validates better (0: never)",
    ),
    (
        "--trial-cut",
        "trial_cut",
        float,
        "F",
        "stop a selection run after the first once it validates more than this fraction behind the leading "
        "run at the same epoch (0: never)",
    ),
)


def _preset_values(field: str) -> str:
    """The value each named recipe gives ``field``, for --help (movierec.trainer.config needs no torch)."""
    from movierec.trainer.config import PRESETS

    return ", ".join(f"{name}: {getattr(config, field)}" for name, config in PRESETS.items())


def register(commands: Any) -> None:
    train = commands.add_parser("train", help="train LightGCN (or NGCF, GraphSAGE) and write a model bundle")
    train.add_argument("--data", type=Path, metavar="DIR", help="ratings folder (default: the MovieLens-1M copy)")
    train.add_argument("--format", dest="fmt", metavar="F", help="ratings format (default: detect)")
    train.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="bundle directory to create")
    train.add_argument(
        "--model",
        default="lightgcn",
        help="lightgcn (default), ngcf or graphsage (movie features; new movies get vectors)",
    )
    train.add_argument("--preset", default="fast", help="fast (default: our recipe) or paper (stock PyG recipe)")
    train.add_argument("--loss", help="softmax or bpr (default: the preset's)")
    train.add_argument(
        "--propagation",
        choices=("csr", "edge_index"),
        help="csr: our cached normalised adjacency; edge_index: PyG's stock LightGCN (default: the preset's)",
    )
    for flag, field, kind, metavar, meaning in RECIPE_FLAGS:
        train.add_argument(flag, type=kind, metavar=metavar, help=f"{meaning} ({_preset_values(field)})")
    train.add_argument(
        "--score",
        choices=("dot", "cosine"),
        help="score = dot product or cosine of the final embeddings (fast: cosine up to 8,192 users, dot past "
        "32,768, validation's choice between; paper: dot)",
    )
    train.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after early stopping, keep training on all of train with the learning rate annealed to zero "
        f"({_preset_values('refit')})",
    )
    train.add_argument(
        "--eval-every", type=int, metavar="E", help=f"validate every E epochs ({_preset_values('eval_every')})"
    )
    train.add_argument("--seed", type=int, metavar="S", help="training seed (the split always uses seed 42)")
    train.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this long, keep the best")
    train.add_argument("--min-rating", type=float, default=4.0, metavar="R", help="positives: rating >= R")
    train.add_argument(
        "--split",
        choices=("random", "temporal"),
        default="random",
        help="evaluation split: random 80/20 of the positives (default), or each user's latest 20 %% held out "
        "(the future; needs timestamps)",
    )
    train.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="train in N local processes sharing each step's users (torch.distributed, gloo); under torchrun "
        "the group is torchrun's (README: Training past one machine)",
    )
    train.add_argument("--force", action="store_true", help="replace an existing bundle")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="recompute test metrics of a model bundle (no torch needed)")
    evaluate.add_argument("--model", type=Path, metavar="BUNDLE", help="model bundle directory")
    evaluate.add_argument(
        "--cold-items",
        action="store_true",
        help="instead: hold 20%% of the movies out of training, train GraphSAGE and LightGCN on the rest "
        "(--time-budget each), rank the held-out movies from their features (needs torch; minutes)",
    )
    evaluate.add_argument("--data", type=Path, metavar="DIR", help="--cold-items: ratings folder (default: ML-1M)")
    evaluate.add_argument("--time-budget", type=float, default=240.0, metavar="S", help="--cold-items: per model")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    # Checked before torch is imported (seconds): a wrong path should fail at once.
    data = args.data or default_ml1m_dir()
    if data is None:
        raise MovierecError("no --data given and no MovieLens-1M found ($MOVIEREC_DATA or ../shared/data/ml-1m)")
    if not data.exists():
        raise MovierecError(f"--data {data}: no such file or folder")
    from movierec.trainer.config import TrainConfig, resolve_config
    from movierec.trainer.sage_config import SageConfig, sage_config_from_args

    if args.model == "graphsage":  # GraphSAGE's own settings (movierec.trainer.sage_config)
        config: TrainConfig | SageConfig = sage_config_from_args(args)
    else:
        config = resolve_config(
            args.preset,
            model=args.model,
            loss=args.loss,
            propagation=args.propagation,
            **{field: getattr(args, field) for _, field, *_ in RECIPE_FLAGS},  # argparse's dest is the field
            cosine=None if args.score is None else args.score == "cosine",
            refit=args.refit,
            eval_every=args.eval_every,
            seed=args.seed,
            time_budget=args.time_budget,
        )
    # Must precede torch's import. On a shared machine, OpenMP threads that spin while waiting steal
    # the cores the other thread needs (spinning waits made epochs 2-4x slower under load).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    summary = _train_with_workers(args, data, config) if _distributed(args) else _train_alone(args, data, config)
    if not summary:  # a torchrun worker other than the leader: the leader reports
        return 0
    if args.json:
        print_json(summary)
    else:
        _print_metrics(summary)
        for line in closing_lines(summary["training"]):
            print(line)
        print(f"bundle written to {summary['bundle']}")
    return 0


def _distributed(args: argparse.Namespace) -> bool:
    """Whether to train in a process group: asked for with --workers N > 1, or launched by torchrun."""
    if args.workers is not None and args.workers < 1:
        raise MovierecError(f"--workers must be a positive integer, got {args.workers}")
    from movierec.trainer.distributed import launched_by_torchrun

    wanted = launched_by_torchrun() or (args.workers or 1) > 1
    if wanted and args.model == "graphsage":
        raise MovierecError("--workers and torchrun train lightgcn or ngcf; graphsage trains in one process")
    return wanted


def _train_alone(args: argparse.Namespace, data: Path, config: Any) -> dict[str, Any]:
    from movierec.trainer.pipeline import train_bundle

    return train_bundle(
        data,
        args.out,
        config,
        data_format=args.fmt,
        min_rating=args.min_rating,
        split_method=args.split,
        force=args.force,
        progress=not args.json,
    )


def _train_with_workers(args: argparse.Namespace, data: Path, config: Any) -> dict[str, Any]:
    from movierec.trainer.distributed import TrainJob, launched_by_torchrun, train_spawned, train_under_torchrun

    if args.out.exists() and not args.force:  # before any process starts
        raise MovierecError(f"{args.out}: already exists (pass --force to replace it)")
    job = TrainJob(data, args.out, config, args.fmt, args.min_rating, args.force, not args.json, args.split)
    if launched_by_torchrun():
        return train_under_torchrun(job, args.workers)
    return train_spawned(job, args.workers)


def closing_lines(training: dict[str, Any]) -> list[str]:
    """What happened during training, in the order it happened, for the closing summary."""
    from movierec.trainer.config import describe_overrides

    lines = []
    if training.get("scale"):
        lines.append(f"scale rules: {training['scale']['rules']}")
    if training.get("search"):
        tried = "; ".join(
            f"{describe_overrides(trial['overrides'])}: {trial['best_valid_recall']:.4f} in {trial['epochs']} epochs"
            + (" (stopped: behind the leading run)" if trial.get("cut") else "")
            for trial in training["search"]
        )
        lines.append(f"search on validation: {tried}")
    lines += [
        f"selection: {training['selection_epochs']} epochs on fit, best validation Recall@20 "
        f"{training['best_valid_recall@20']:.4f} at epoch {training['best_epoch']} "
        f"(stopped: {training['stop_reason']})"
    ]
    if training["refitted_on_train"]:
        lines.append(
            f"refit: {training['refit_epochs']} more epochs on all of train (fit + valid), "
            "learning rate annealed to zero; the bundle holds the refitted vectors"
        )
    else:
        lines.append("refit: none; the bundle holds the best validated vectors")
    for worker, timing in enumerate(training.get("distributed", {}).get("per_worker", [])):
        lines.append(
            f"worker {worker}: {timing['steps']} steps, {timing['compute_ms_per_step']:.1f} ms compute + "
            f"{timing['allreduce_ms_per_step']:.1f} ms all-reduce per step "
            f"(communication {100 * timing['communication_share']:.1f} %)"
        )
    lines.append(
        f"total: {training['epochs_run']} epochs, training {training['seconds']:.1f} s, "
        f"wall {training['wall_seconds']:.1f} s including loading, refit and writing; "
        f"peak RSS {training['peak_rss_mb'] / 1024:.2f} GiB"
    )
    return lines


def _evaluate(args: argparse.Namespace) -> int:
    if args.cold_items:  # the protocol of movierec.trainer.cold_items
        return _evaluate_cold_items(args)
    if args.model is None:
        raise MovierecError("--model BUNDLE is required (or --cold-items)")
    from movierec.bundle import read_model_bundle
    from movierec.trainer.evaluate import evaluate_vectors

    bundle = read_model_bundle(args.model)
    metrics: dict[str, Any] = dict(
        evaluate_vectors(
            bundle.user_vectors, bundle.item_vectors, bundle.train, bundle.test, item_genres=bundle.items.genres
        )
    )
    metrics["protocol"] = bundle.config.get("protocol", {})
    if args.json:
        print_json(metrics)
    else:
        _print_metrics(metrics)
    return 0


def _evaluate_cold_items(args: argparse.Namespace) -> int:
    if args.model is not None:
        raise MovierecError("--cold-items trains its own models on --data; it takes no --model")
    data = args.data or default_ml1m_dir()
    if data is None or not data.exists():
        raise MovierecError(f"--data {data}: no such file or folder" if data else "no --data and no MovieLens-1M found")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from movierec.trainer.cold_items import run_cold_items

    result = run_cold_items(data, time_budget=args.time_budget)
    if args.json:
        print_json(result)
        return 0
    rows = [
        (name, *(r[part][metric] for part in ("cold_only", "among_all") for metric in ("recall@20", "ndcg@20")))
        for name, r in result["results"].items()
    ]
    print_table(("method", "cold-only R@20", "cold-only N@20", "among-all R@20", "among-all N@20"), rows)
    protocol = result["protocol"]
    print(
        f"protocol: {protocol['test_cold_movies']} test cold movies ({protocol['cold_share']:.0%} held out, half for "
        f"validation), {protocol['users_with_test_cold_positives']} users with positives among them"
    )
    return 0


def _print_metrics(metrics: dict[str, Any]) -> None:
    # The evaluator's own metric names (numpy only: loaded here, not at every recctl start).
    from movierec.trainer.evaluate import BEYOND_ACCURACY_NAMES, METRIC_NAMES

    order = [f"{name}@{k}" for name in (*METRIC_NAMES, *BEYOND_ACCURACY_NAMES) for k in (10, 20)]
    # intra_list_diversity is absent when no item has a genre (a ratings file without movie metadata).
    rows = [(name, metrics[name]) for name in (*order, "users_evaluated") if name in metrics]
    print_table(("metric", "value"), rows)
    protocol = metrics.get("protocol", {})
    if protocol:
        print(
            f"protocol: {protocol.get('split')} split, seed {protocol.get('seed')}, "
            f"positives {protocol.get('positives')}, test fraction {protocol.get('test_fraction')}; "
            "seed_recall = hits / min(K, |test|), kept to compare with older reports"
        )
