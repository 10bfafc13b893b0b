"""Cold-start accuracy: how well a user folded in from liked items is served, on held-out ML-1M users.

Protocol (written into the results with every number):

* Split: the standard split (design notes §4) — ML-1M, positives = rating >= 4,
  one random 80/20 split of the positives, seed 42; with ``--bundle`` the
  bundle's own train/test CSRs (its config names the split).
* Held-out users: every user with at least one train and one test positive,
  shuffled (``--seed``) into ``--folds`` folds; each fold is held out in turn.
* Liked list: ``n`` random train positives of each user in H (all of them when
  the user has fewer), for each ``n`` in ``--liked``, plus ``all``. The target
  is the user's test positives, so no target item was ever shown to any model;
  (a random half of *all* positives would put target items into the trained
  user vector, which then stops being an upper bound).
* Ranking: full ranking over all items, the user's train positives masked for
  every method; Recall@K and NDCG@K (binary relevance) as defined in
  ``movierec.trainer.evaluate``, averaged over H.
* Methods: the LightGCN propagation rule and the plain mean
  (``movierec.index.fold_in``); the user's own trained vector (upper bound:
  the model saw all of that user's train positives); popularity (train counts).
* Variants: ``warm`` folds into the served model, which was trained with the
  held-out users' train positives (their edges shaped the item vectors: a mild
  leak); ``cold`` refits the model without the fold's users first (a true cold
  start): the stand-in on every fold, a bundle with its own ``recctl train``
  settings on ``--refit-folds`` folds (default 1: each refit is a full training
  run).
* Reported: means over all held-out users, and per fold the difference
  propagation − mean, so a reader sees whether the gap exceeds the noise.

Model: ``--bundle PATH`` (a ``recctl train`` output) or, by default, a
PureSVD stand-in (truncated SVD of the binary train matrix, scipy), whose
trained user vector is exactly the plain-sum fold-in (so with ``liked=all``
the mean reproduces the trained vector: a check of the harness); the
propagation rule is derived for LightGCN bundles.

Usage::

    .venv/bin/python benchmarks/cold_start.py [--bundle PATH] [--out benchmarks/results]

Results: ``benchmarks/results/cold_start.{md,json}`` (bundle) or ``cold_start_standin.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_machine import machine_basics
from tqdm import tqdm

from movierec.bundle import CSR, ModelBundle, read_model_bundle
from movierec.index.fold_in import FOLD_IN_METHODS, FoldIn
from movierec.paths import default_ml1m_dir
from movierec.trainer.evaluate import evaluate_vectors

KS = (10, 20)
RESULTS_NAME = "cold_start"
"""``cold_start.{md,json}`` for a trained bundle; the stand-in writes ``cold_start_standin.{md,json}``."""
TRAINED, POPULARITY = "trained vector", "popularity"
METHODS = (TRAINED, *FOLD_IN_METHODS, POPULARITY)
VARIANT_NOTES = {
    "warm": "fold into the served model (it was trained with these users' train positives)",
    "cold": "model refitted without each fold's users (a true cold start); the trained vector row is the served "
    "model's, for the same users",
}


@dataclass(frozen=True)
class Model:
    """What a variant scores with: item vectors, the training graph they came from, user vectors if trained."""

    item_vectors: npt.NDArray[np.float32]
    train: CSR
    user_vectors: npt.NDArray[np.float32] | None

    def fold_in(self) -> FoldIn:
        return FoldIn(self.item_vectors, np.bincount(self.train.indices, minlength=self.train.n_cols))


@dataclass(frozen=True)
class Problem:
    train: CSR
    test: CSR
    protocol: dict[str, Any]


def take_rows(csr: CSR, rows: npt.NDArray[np.int64]) -> CSR:
    """The sub-CSR of ``rows``, in that order."""
    lengths = csr.row_lengths()[rows]
    indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate([csr.row(int(r)) for r in rows]) if rows.size else np.zeros(0, np.int32)
    return CSR(indptr=indptr, indices=indices.astype(np.int32), n_cols=csr.n_cols)


def without_rows(csr: CSR, rows: npt.NDArray[np.int64]) -> CSR:
    """``csr`` with the given rows emptied (same shape): the graph a cold model is fitted on."""
    row_of, cols = csr.to_pairs()
    keep = ~np.isin(row_of, rows)
    return CSR.from_pairs(row_of[keep], cols[keep], csr.n_rows, csr.n_cols)


def sample_liked(train: CSR, n: int, rng: np.random.Generator) -> CSR:
    """``n`` random items of each row (all of them when the row is shorter)."""
    rows, cols = [], []
    for r in range(train.n_rows):
        items = train.row(r)
        chosen = items if items.size <= n else rng.choice(items, size=n, replace=False)
        rows.append(np.full(chosen.size, r, dtype=np.int64))
        cols.append(chosen.astype(np.int64))
    return CSR.from_pairs(np.concatenate(rows), np.concatenate(cols), train.n_rows, train.n_cols)


def fit_pure_svd(train: CSR, factors: int, seed: int) -> Model:
    """PureSVD: item vectors = top right singular vectors V of the binary train matrix X, user vectors = X V."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    x = sp.csr_matrix((np.ones(train.nnz), train.indices, train.indptr), shape=(train.n_rows, train.n_cols))
    start = np.random.default_rng(seed).standard_normal(min(x.shape))
    _, _, vt = spla.svds(x, k=factors, v0=start)
    items = np.ascontiguousarray(vt.T)
    return Model(item_vectors=items.astype(np.float32), train=train, user_vectors=np.asarray(x @ items, np.float32))


def standard_problem(data_dir: Path, seed: int) -> Problem:
    from movierec.trainer.data import load_dataset, make_split

    split = make_split(load_dataset(data_dir), seed=seed)
    return Problem(train=split.train, test=split.test, protocol=dict(split.protocol))


def evaluate(
    user_vectors: npt.NDArray[np.float32], item_vectors: npt.NDArray[np.float32], train_h: CSR, test_h: CSR
) -> dict[str, float]:
    """Recall/NDCG@K of a dot-product model for the rows of ``train_h``/``test_h`` (train positives masked)."""
    metrics = evaluate_vectors(user_vectors, item_vectors, train_h, test_h, ks=KS)
    return {name: value for name, value in metrics.items() if name.split("@")[0] in ("recall", "ndcg")}


def evaluate_fold(
    variant: str, model: Model, users: npt.NDArray[np.int64], problem: Problem, liked: dict[str, CSR]
) -> list[dict[str, Any]]:
    """Every method on one fold of held-out users; one row per (method, liked size)."""
    train_h, test_h = take_rows(problem.train, users), take_rows(problem.test, users)
    found: list[tuple[str, str, npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    if model.user_vectors is not None:
        found.append((TRAINED, "all", model.user_vectors[users], model.item_vectors))
    fold_in = model.fold_in()
    for label, csr in liked.items():
        for method in FOLD_IN_METHODS:
            found.append((method, label, fold_in.user_vectors(take_rows(csr, users), method), model.item_vectors))
    counts = np.bincount(model.train.indices, minlength=model.train.n_cols).astype(np.float32)
    found.append((POPULARITY, "-", np.ones((users.size, 1), np.float32), counts[:, None]))  # rank-1 "model"
    return [
        {
            "variant": variant,
            "method": method,
            "liked": label,
            "users": int(users.size),
            **evaluate(u, i, train_h, test_h),
        }
        for method, label, u, i in found
    ]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over all held-out users (folds weighted by their size), with the per-fold values kept."""
    keys = sorted({(r["variant"], r["method"], r["liked"]) for r in rows}, key=str)
    metric_names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]
    summary = []
    for variant, method, label in keys:
        folds = [r for r in rows if (r["variant"], r["method"], r["liked"]) == (variant, method, label)]
        weights = np.array([r["users"] for r in folds], dtype=np.float64)
        entry: dict[str, Any] = {"variant": variant, "method": method, "liked": label, "users": int(weights.sum())}
        for name in metric_names:
            values = np.array([r[name] for r in folds])
            entry[name] = round(float(values @ weights / weights.sum()), 5)
            entry[f"{name} per fold"] = [round(float(v), 5) for v in values]
        summary.append(entry)
    return summary


def fold_in_latency_us(fold_in: FoldIn, liked: CSR, repeats: int = 2000) -> float:
    """Mean microseconds of one single-user fold-in (what the server pays per cold request)."""
    lists = [liked.row(r % liked.n_rows) for r in range(repeats)]
    start = time.perf_counter()
    for items in lists:
        fold_in.user_vector(items)
    return round((time.perf_counter() - start) / repeats * 1e6, 1)


def machine() -> dict[str, Any]:
    return {**machine_basics("numpy"), "torch": "not used"}


def markdown(result: dict[str, Any]) -> str:
    labels = result["protocol"]["liked_labels"]
    info = result["machine"]
    lines = [
        "# Cold start: fold-in accuracy on held-out users",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Model: {result['model']}. Held-out users: {result['protocol']['held_out_users']} in "
        f"{result['protocol']['folds']} folds. Machine: {info['cpu']}, {info['cores']} cores "
        f"(load average {info['load_average_1m']} at the start), Python {info['python']}, numpy {info['numpy']}.",
        "",
        "Protocol: " + result["protocol"]["summary"],
        "",
    ]
    for variant in result["variants"]:
        rows = [r for r in result["summary"] if r["variant"] == variant]
        users = rows[0]["users"]
        lines += [f"## {variant}: {VARIANT_NOTES[variant]} — {users} users", ""]
        header = "| method | " + " | ".join(f"liked={label} R@20 | liked={label} N@20" for label in labels) + " |"
        lines += [header, "|---" * (1 + 2 * len(labels)) + "|"]
        for method in METHODS:
            found = {r["liked"]: r for r in rows if r["method"] == method}
            if not found:
                continue
            cells = []
            for label in labels:
                row = found.get(label) or next(iter(found.values()))  # liked-independent rows fill every column
                cells += [f"{row['recall@20']:.4f}", f"{row['ndcg@20']:.4f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Propagation − mean, NDCG@20, per fold:", ""]
        for label in labels:
            by_method = {r["method"]: r["ndcg@20 per fold"] for r in rows if r["liked"] == label}
            gaps = np.array(by_method["propagation"]) - np.array(by_method["mean"])
            lines.append(f"- liked={label}: {', '.join(f'{g:+.4f}' for g in gaps)}")
        lines.append("")
    lines += [
        f"Single-user fold-in latency (propagation, liked={result['latency_liked']}): "
        f"{result['fold_in_latency_us']} µs mean over 2000 calls.",
        "",
        "The trained vector and popularity do not depend on the liked list (the trained vector saw all of the "
        "user's train positives); they are repeated in each column for comparison.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a trained model bundle (default: PureSVD stand-in)")
    parser.add_argument("--data", type=Path, default=default_ml1m_dir(), help="MovieLens-1M folder (stand-in only)")
    parser.add_argument("--seed", type=int, default=42, help="split seed (stand-in), fold and liked-sample seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--liked", type=int, nargs="+", default=[5, 20], help="liked-list sizes (plus all)")
    parser.add_argument("--factors", type=int, default=64, help="stand-in dimension")
    parser.add_argument(
        "--refit-folds",
        type=int,
        help="folds to refit without their users for the cold variant (default: all for the stand-in, "
        "1 for a bundle, whose refit is a full training run)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.refit_folds is None and args.bundle is not None:
        args.refit_folds = 1
    if args.folds < 2 or min(args.liked) < 1:
        parser.error("--folds must be >= 2 and every --liked size >= 1")
    return args


Refit = Callable[[npt.NDArray[np.int64]], Model]
"""Fit the served model's recipe again with the given users' edges removed (their item vectors only)."""


def csr_minus(a: CSR, b: CSR) -> CSR:
    """The pairs of ``a`` that are not in ``b`` (same shape)."""
    rows_a, cols_a = a.to_pairs()
    rows_b, cols_b = b.to_pairs()
    keep = ~np.isin(rows_a * a.n_cols + cols_a, rows_b * b.n_cols + cols_b)
    return CSR.from_pairs(rows_a[keep], cols_a[keep], a.n_rows, a.n_cols)


def bundle_refit(bundle: ModelBundle) -> Refit | None:
    """Retrain with the bundle's own training settings (``recctl train``'s config), or None if it has none."""
    settings = dict(bundle.config.get("train", {}))
    if "preset" not in settings:
        return None
    from movierec.trainer.config import resolve_config
    from movierec.trainer.data import Split
    from movierec.trainer.train import train_model

    config = resolve_config(settings.pop("preset"), **settings)
    fit = csr_minus(bundle.train, bundle.valid)

    def refit(users: npt.NDArray[np.int64]) -> Model:
        split = Split(
            user_ids=bundle.user_ids,
            item_ids=bundle.item_ids,
            seen=without_rows(bundle.seen, users),
            train=without_rows(bundle.train, users),
            fit=without_rows(fit, users),
            valid=without_rows(bundle.valid, users),
            test=without_rows(bundle.test, users),
            protocol=dict(bundle.config.get("protocol", {})),
        )
        result = train_model(split, config, progress=False)
        return Model(result.item_vectors, split.train, None)

    return refit


def load(args: argparse.Namespace) -> tuple[Problem, Model, Refit | None, str]:
    """The split, the served ("warm") model, how to refit it without some users, and its name."""
    if args.bundle is not None:
        bundle = read_model_bundle(args.bundle)
        train = bundle.config.get("train", {})
        protocol = {"bundle": str(args.bundle), **bundle.config.get("protocol", {}), "training": train}
        recall = float(bundle.metrics.get("recall@20", float("nan")))
        name = (
            f"bundle `{args.bundle}` ({train.get('model', 'unknown model')}, {train.get('layers', '?')} layers, "
            f"{train.get('loss', '?')} loss, dim {bundle.dim}; test recall@20 {recall:.4f})"
        )
        served = Model(bundle.item_vectors, bundle.train, bundle.user_vectors)
        return Problem(bundle.train, bundle.test, protocol), served, bundle_refit(bundle), name
    if args.data is None:
        raise SystemExit("MovieLens-1M not found: pass --data or set MOVIEREC_DATA")
    problem = standard_problem(args.data, args.seed)

    def refit(users: npt.NDArray[np.int64]) -> Model:
        cold = fit_pure_svd(without_rows(problem.train, users), args.factors, args.seed)
        return Model(cold.item_vectors, cold.train, None)

    served = fit_pure_svd(problem.train, args.factors, args.seed)
    return problem, served, refit, f"PureSVD stand-in (scipy svds), {args.factors} factors"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_average = os.getloadavg()[0]
    problem, served, refit, model_name = load(args)
    rng = np.random.default_rng(args.seed)
    eligible = np.flatnonzero((problem.train.row_lengths() > 0) & (problem.test.row_lengths() > 0)).astype(np.int64)
    folds = [np.sort(fold) for fold in np.array_split(rng.permutation(eligible), args.folds)]
    sizes = sorted(set(args.liked))
    liked = {str(n): sample_liked(problem.train, n, rng) for n in sizes} | {"all": problem.train}
    refit_folds = 0 if refit is None else args.folds if args.refit_folds is None else min(args.refit_folds, args.folds)
    variants = ["warm", "cold"] if refit_folds else ["warm"]
    rows: list[dict[str, Any]] = []
    for index, users in enumerate(tqdm(folds, desc="cold start folds", unit="fold")):
        rows += evaluate_fold("warm", served, users, problem, liked)
        if refit is not None and index < refit_folds:
            reference = [{**row, "variant": "cold"} for row in rows if row["method"] == TRAINED][-1:]
            rows += reference + evaluate_fold("cold", refit(users), users, problem, liked)
    result = {
        "command": " ".join(["benchmarks/cold_start.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": model_name,
        "machine": {**machine(), "load_average_1m": round(load_average, 1)},
        "protocol": {
            **problem.protocol,
            "held_out_users": int(eligible.size),
            "folds": args.folds,
            "refitted_folds": refit_folds,
            "seed": args.seed,
            "liked_labels": [*map(str, sizes), "all"],
            "metrics": "Recall@K = hits/|test|, NDCG@K binary relevance (movierec.trainer.evaluate); train masked",
            "summary": (
                "standard split (ML-1M, positives rating >= 4, random 80/20, seed 42) unless a bundle is given; "
                f"all {eligible.size} users with train and test positives, in {args.folds} held-out folds; "
                "liked = n random train positives of the user (all: every one); target = the user's test "
                "positives; full ranking over all items with the user's train positives masked; K = 20 shown."
            ),
        },
        "variants": variants,
        "summary": aggregate(rows),
        "per_fold_rows": rows,
        "latency_liked": sizes[-1],
        "fold_in_latency_us": fold_in_latency_us(served.fold_in(), liked[str(sizes[-1])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_NAME if args.bundle is not None else f"{RESULTS_NAME}_standin"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
