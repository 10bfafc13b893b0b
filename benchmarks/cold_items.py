"""Cold items: how well movies nobody rated during training are ranked for the users who later liked them.

Protocol (written into the results with every number):

* Data: ML-1M by default (``--data``); positives = rating >= 4.
* Cold movies: 20 % of the movies with at least one positive (``--cold-share``, seed ``--seed``), every rating
  of theirs removed before training (the ColdRec benchmark's item cold-start setting); half are validation
  cold movies (used only to pick the ridge regressor's strength), half test cold movies (reported).
* Warm training: the rest goes through the standard split (random 80/20 of positives, seed 42, 10 % of train
  for validation) and each model is trained on it exactly as ``recctl train`` trains it (``--time-budget``
  seconds each): GraphSAGE (``--model graphsage``) and LightGCN (the fast recipe).
* Vectors for the cold movies, from genres and year only: GraphSAGE's item tower (the model's forward pass
  without neighbours, as ``recctl index add-items`` computes it); LightGCN + ridge regression from the same
  features onto its trained item vectors (``movierec.item_features.fit_ridge``, alpha from the validation
  cold movies). Baselines: *genre popularity* (a movie scores the mean training popularity of its genres, the
  same list for everyone) and *user genre affinity* (the mean share of the user's training positives in the
  movie's genres).
* Users: every warm user with at least one positive among the test cold movies; targets: those positives.
* Rankings: (a) *cold only*: the test cold movies ranked among themselves (nothing masked); (b) *among all*:
  the test cold movies ranked among every warm movie as well, each user's training positives masked, the
  targets still only the cold positives. Recall@K and NDCG@K as in ``movierec.trainer.evaluate``.

Usage::

    nice -n 10 .venv/bin/python benchmarks/cold_items.py [--data DIR] [--time-budget 240] [--out benchmarks/results]

Results: ``benchmarks/results/cold_items.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP waits steal shared cores

from bench_machine import machine_basics

from movierec.paths import default_ml1m_dir
from movierec.trainer.cold_items import run_cold_items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="ratings folder (default: MovieLens-1M)")
    parser.add_argument("--cold-share", type=float, default=0.2, help="share of movies held out (0.2)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the cold movie draw")
    parser.add_argument("--min-rating", type=float, default=4.0)
    parser.add_argument("--time-budget", type=float, default=240.0, help="training seconds per model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    lines = [
        "# Cold items: ranking movies nobody rated during training",
        "",
        "Produced by `nice -n 10 .venv/bin/python benchmarks/cold_items.py"
        f" --time-budget {p['time_budget_s']:g}` (protocol: the script's docstring).",
        "",
        f"- Data: `{p['data']}`, positives {p['positives']}; {p['validation_cold_movies']} validation + "
        f"{p['test_cold_movies']} test cold movies ({p['cold_share']:.0%} of the movies with a positive, seed "
        f"{p['cold_seed']}), all their ratings removed before training; {p['warm_movies']} warm movies, "
        f"{p['warm_split']}.",
        f"- Evaluated: {p['users_with_test_cold_positives']} users with {p['test_cold_positives']} positives "
        "among the test cold movies. *Cold only*: the test cold movies ranked among themselves. *Among all*: "
        "ranked among every warm movie too (training positives masked), targets still only the cold positives.",
        f"- Training: at most {p['time_budget_s']:g} s per model; took {result['training_seconds']}.",
        f"- Ridge alpha picked on the validation cold movies (Recall@20): {result['ridge_alpha_validation_recall@20']}",
        "",
        "| method | cold only R@20 | cold only N@20 | cold only R@10 | among all R@20 | among all N@20 "
        "| warm test R@20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        c, a = r["cold_only"], r["among_all"]
        warm = f"{r['warm_test']['recall@20']:.4f}" if "warm_test" in r else "-"
        lines.append(
            f"| {name} | {c['recall@20']:.4f} | {c['ndcg@20']:.4f} | {c['recall@10']:.4f} | "
            f"{a['recall@20']:.4f} | {a['ndcg@20']:.4f} | {warm} |"
        )
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_1min']} (shared); torch {m['torch']}, "
        f"torch_geometric {m['torch_geometric']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data or default_ml1m_dir()
    if data is None:
        raise SystemExit("no --data and no MovieLens-1M found ($MOVIEREC_DATA)")
    result: dict[str, Any] = run_cold_items(
        data, cold_share=args.cold_share, seed=args.seed, min_rating=args.min_rating, time_budget=args.time_budget
    )
    result["machine"] = machine_basics("torch", "torch-geometric", "numpy")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_items.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cold_items.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
