"""Index search latency with seen-item exclusion: our exact path vs FAISS alternatives, flat vs HNSW.

What is measured, all in one run so the ratios share the machine's load:

* Catalog ``ml1m``: the MovieLens-1M catalog (3,706 items, 6,040 users) served
  through the real path (``build_index`` -> ``open_index`` -> ``recommend``),
  each user's rated items excluded as in production. Vectors come from
  ``--model BUNDLE`` (a trained bundle) or, by default, a rank-``--dim``
  PureSVD of the binary rating matrix (numpy randomized SVD, seed 0): real
  co-rating structure, which is what decides HNSW's recall.
* Catalog ``large``: ``--large-items`` synthetic items (clustered low-rank
  vectors, seed 0) for the regime HNSW is for; no seen sets, only the extra
  exclusions below.
* Extra exclusions per query: 0, 100 and 2,000 random items (``exclude_item_ids``
  in a request), on top of the user's seen items for ``ml1m``.
* Batch sizes 1 and 64 (a stream batch answered by one ``recommend`` call), k = 10.
* Methods:
  ``exact``          ours: one BLAS product per batch, excluded cells blanked, argpartition (exact, tie rule);
  ``exact_blas_default`` the same with OpenBLAS's default thread count, timed after the others (its
                     spinning threads would slow them); every other method runs under
                     ``limit_serving_threads()``: one BLAS and one OpenMP thread, the serving configuration;
  ``faiss_selector`` ``IndexFlatIP.search`` per query with ``IDSelectorNot(IDSelectorBatch(excluded))``
                     (a FAISS selector covers a whole call, so a batch costs one call per query);
  ``faiss_overfetch`` one batched ``IndexFlatIP.search`` for k + the batch's largest exclusion, then filtering;
  ``hnsw``           ours with ``kind="hnsw"`` (M=32, efConstruction=200, efSearch=128): graph candidates,
                     exact re-rank, exact fallback when the candidates run short.
  The two FAISS baselines return the right items but do not apply our tie rule; they are timed as
  alternatives, not used.
* Latency: wall time of one call, methods interleaved round by round; p50/p99 over ``--rounds`` rounds.
  recall@10 of ``hnsw`` = |hnsw ∩ exact| / |exact|, summed over ``RECALL_QUERIES`` random users (queries)
  with the same number of extra exclusions (the timed batches are too small to estimate it).
* Filters (``ml1m``, the served ``kind=flat`` path, seen items excluded, batch 1 and 64): ``recommend``
  with each filter of ``FILTERS`` (genre and year, wide and narrow), interleaved round by round with
  no filter; the compiled mask is cached per filter, so this is the steady-state cost. Next to it the
  alternative the served path does not take: score every item and blank the filtered-out ones to -inf
  (passed to ``recommend`` as extra exclusions; same answers). The first use of a filter (compiling its
  mask) is timed separately over one single-year filter per distinct year.
  The stand-in's titles, years and genres are ML-1M's ``movies.dat`` (via the trainer's parser).
* ``because`` (``ml1m``): one call per answer of k = 10, for ``BECAUSE_QUERIES`` random users, next to
  ``recommend`` of one user.

Usage::

    .venv/bin/python benchmarks/index_bench.py [--model BUNDLE] [--rounds 60] [--large-items 100000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from bench_machine import machine_basics
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from movierec.bundle import CSR, ItemMetadata, ModelBundle, read_model_bundle, write_model_bundle
from movierec.index import ItemFilter, ServingIndex, build_index, limit_serving_threads, open_index
from movierec.index.faiss_index import HnswParams, HnswSearcher, create_index
from movierec.index.topk import ExactSearcher, Recommendation
from movierec.paths import default_ml1m_dir

K = 10
BATCH_SIZES = (1, 64)
EXTRA_EXCLUDED = (0, 100, 2000)
RESULTS_NAME = "index"
RECALL_QUERIES = 500
BECAUSE_QUERIES = 300
FILTERS = {
    "none": ItemFilter(),
    "genre Drama (wide)": ItemFilter(include_genres=frozenset({"Drama"})),
    "genre Film-Noir (narrow)": ItemFilter(include_genres=frozenset({"Film-Noir"})),
    "years 1990-1999": ItemFilter(min_year=1990, max_year=1999),
    "Comedy, not Romance, 1980-1989": ItemFilter(frozenset({"Comedy"}), frozenset({"Romance"}), 1980, 1989),
}

Search = Callable[[], list[Recommendation] | list[npt.NDArray[np.int64]]]
SearchFunction = Callable[[npt.NDArray[np.float32], Sequence[npt.NDArray[np.int64]]], list[Recommendation]]


@dataclass(frozen=True)
class Catalog:
    """Vectors to search, queries, and each query's excluded item rows (seen items, for ml1m)."""

    name: str
    item_vectors: npt.NDArray[np.float32]
    user_vectors: npt.NDArray[np.float32]
    seen: list[npt.NDArray[np.int64]]
    source: str


def ml1m_ratings(folder: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(user row, item row) of every rating and the movie id of each item row; rows follow sorted dataset
    ids, as in a bundle."""
    raw = (folder / "ratings.dat").read_bytes().replace(b"::", b" ")
    table = np.array(raw.split(), dtype=np.int64).reshape(-1, 4)
    _, users = np.unique(table[:, 0], return_inverse=True)
    item_ids, items = np.unique(table[:, 1], return_inverse=True)
    return users, items, item_ids


def ml1m_items(folder: Path, item_ids: npt.NDArray[np.int64]) -> ItemMetadata:
    """Titles, years and genres of ``item_ids`` from ``movies.dat``, parsed as the trainer does."""
    from movierec.trainer.data.metadata import read_dat_movies

    movies = read_dat_movies(folder / "movies.dat")
    row_of = {int(movie_id): row for row, movie_id in enumerate(movies.item_ids.tolist())}
    rows = [row_of[int(i)] for i in item_ids.tolist()]
    return ItemMetadata(
        [movies.titles[r] for r in rows], [movies.years[r] for r in rows], [list(movies.genres[r]) for r in rows]
    )


def pure_svd(
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    metadata: ItemMetadata,
    dim: int,
) -> ModelBundle:
    """Rank-``dim`` PureSVD of the binary rating matrix (randomized SVD with two power iterations)."""
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    matrix = np.zeros((n_users, n_items), dtype=np.float32)
    matrix[users, items] = 1.0
    rng = np.random.default_rng(0)
    basis = matrix @ rng.standard_normal((n_items, dim + 10)).astype(np.float32)
    for _ in range(2):
        basis, _ = np.linalg.qr(matrix @ (matrix.T @ basis))
    small_u, singular, vt = np.linalg.svd(basis.T @ matrix, full_matrices=False)
    scale = np.sqrt(singular[:dim])
    seen = CSR.from_pairs(users, items, n_users, n_items)
    empty = CSR.from_pairs([], [], n_users, n_items)
    return ModelBundle(
        user_vectors=np.ascontiguousarray((basis @ small_u[:, :dim]) * scale, dtype=np.float32),
        item_vectors=np.ascontiguousarray(vt[:dim].T * scale, dtype=np.float32),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        item_ids=item_ids,
        items=metadata,
        seen=seen,
        train=seen,
        valid=empty,
        test=empty,
        config={"model": "PureSVD (benchmark stand-in)", "dim": dim},
    )


def large_catalog(n_items: int, n_queries: int, dim: int) -> Catalog:
    """Clustered vectors (64 centres, rank ``dim``), the shape trained embeddings take."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    items = centres[rng.integers(0, 64, n_items)] + 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32)
    queries = centres[rng.integers(0, 64, n_queries)] + 0.5 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    seen = [np.empty(0, dtype=np.int64)] * n_queries
    return Catalog("large", items, queries, seen, f"synthetic clustered, {n_items} items, dim {dim}")


def faiss_selector(
    index: faiss.Index, queries: npt.NDArray[np.float32], excluded: Sequence[npt.NDArray[np.int64]]
) -> Search:
    def run() -> list[npt.NDArray[np.int64]]:
        answers = []
        for q in range(queries.shape[0]):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded[q]))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # the stubs omit kwargs
            _, labels = index.search(queries[q : q + 1], K, params=params)
            answers.append(labels[0])
        return answers

    return run


def faiss_overfetch(
    index: faiss.Index, queries: npt.NDArray[np.float32], excluded: Sequence[npt.NDArray[np.int64]]
) -> Search:
    width = min(index.ntotal, K + max(e.size for e in excluded))

    def run() -> list[npt.NDArray[np.int64]]:
        _, labels = index.search(queries, width, params=None)
        return [row[~np.isin(row, e)][:K] for row, e in zip(labels, excluded, strict=True)]

    return run


def with_default_blas_threads(
    search: SearchFunction,
    queries: npt.NDArray[np.float32],
    excluded: Sequence[npt.NDArray[np.int64]],
) -> list[Recommendation]:
    """The exact path with OpenBLAS's own thread count (one per core), i.e. without limit_serving_threads."""
    with threadpool_limits(limits=os.cpu_count(), user_api="blas"):
        return search(queries, excluded)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.array(seconds) * 1e3, q))


def time_interleaved(methods: dict[str, Search], rounds: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for run in methods.values():  # one untimed call each: first-touch costs are not latency
        run()
    for _ in range(rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    return timings


def recall(approximate: list[Recommendation], exact: list[Recommendation]) -> float:
    hits = sum(np.intersect1d(a.item_rows, e.item_rows).size for a, e in zip(approximate, exact, strict=True))
    total = sum(len(e) for e in exact)
    return hits / total if total else 1.0


def hnsw_recall(catalog: Catalog, exact_search: SearchFunction, hnsw_search: SearchFunction, extra: int) -> float:
    """recall@10 of the HNSW path against the exact one over RECALL_QUERIES users (seed 2)."""
    rng = np.random.default_rng(2)
    n_items = catalog.item_vectors.shape[0]
    users = rng.choice(
        catalog.user_vectors.shape[0], size=min(RECALL_QUERIES, catalog.user_vectors.shape[0]), replace=False
    )
    queries = np.ascontiguousarray(catalog.user_vectors[users])
    excluded = [
        np.concatenate([catalog.seen[u], rng.choice(n_items, size=min(extra, n_items), replace=False)]) for u in users
    ]
    return recall(hnsw_search(queries, excluded), exact_search(queries, excluded))


def measure_catalog(
    catalog: Catalog,
    exact_search: SearchFunction,
    hnsw_search: SearchFunction,
    rounds: int,
    progress: tqdm,
) -> list[dict[str, Any]]:
    """Every (batch size, extra exclusions) cell for one catalog; ``*_search(queries, excluded)``."""
    flat = faiss.IndexFlatIP(catalog.item_vectors.shape[1])
    flat.add(catalog.item_vectors)
    rng = np.random.default_rng(1)
    n_items = catalog.item_vectors.shape[0]
    rows = []
    for batch in BATCH_SIZES:
        users = rng.choice(catalog.user_vectors.shape[0], size=batch, replace=False)
        queries = np.ascontiguousarray(catalog.user_vectors[users])
        for extra in EXTRA_EXCLUDED:
            extras = [rng.choice(n_items, size=min(extra, n_items), replace=False).astype(np.int64) for _ in users]
            excluded = [np.concatenate([catalog.seen[u], e]) for u, e in zip(users, extras, strict=True)]
            methods: dict[str, Search] = {
                "exact": functools.partial(exact_search, queries, excluded),
                "faiss_selector": faiss_selector(flat, queries, excluded),
                "faiss_overfetch": faiss_overfetch(flat, queries, excluded),
                "hnsw": functools.partial(hnsw_search, queries, excluded),
            }
            timings = time_interleaved(methods, rounds)
            # Timed on its own: OpenBLAS's extra threads keep spinning after a call and would slow the others.
            default_blas = functools.partial(with_default_blas_threads, exact_search, queries, excluded)
            timings.update(time_interleaved({"exact_blas_default": default_blas}, rounds))
            row: dict[str, Any] = {
                "catalog": catalog.name,
                "batch": batch,
                "extra_excluded": extra,
                "mean_excluded": float(np.mean([e.size for e in excluded])),
                "hnsw_recall_at_10": hnsw_recall(catalog, exact_search, hnsw_search, extra),
            }
            for name, seconds in timings.items():
                row[f"{name}_p50_ms"] = percentile_ms(seconds, 50)
                row[f"{name}_p99_ms"] = percentile_ms(seconds, 99)
            rows.append(row)
            progress.update()
    return rows


def machine() -> dict[str, Any]:
    return {**machine_basics("numpy", "faiss-cpu", "torch"), "faiss_omp_threads": faiss.omp_get_max_threads()}


def run_ml1m(args: argparse.Namespace, work: Path, progress: tqdm) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if args.model is not None:
        model_dir, source = Path(args.model), f"model bundle {args.model}"
    else:
        folder = args.data or default_ml1m_dir()
        if folder is None:
            raise SystemExit("MovieLens-1M not found: pass --data or --model, or set MOVIEREC_DATA")
        model_dir, source = work / "model", f"PureSVD dim {args.dim} of ML-1M ratings ({folder})"
        users, items, item_ids = ml1m_ratings(Path(folder))
        write_model_bundle(pure_svd(users, items, item_ids, ml1m_items(Path(folder), item_ids), args.dim), model_dir)
    start = time.perf_counter()
    flat = open_index(build_index(model_dir, work / "index"))
    flat_build = time.perf_counter() - start
    start = time.perf_counter()
    hnsw = open_index(build_index(model_dir, work / "index", kind="hnsw"))
    hnsw_build = time.perf_counter() - start
    model = read_model_bundle(model_dir)
    catalog = Catalog(
        "ml1m",
        model.item_vectors,
        model.user_vectors,
        [model.seen.row(u).astype(np.int64) for u in range(model.n_users)],
        source,
    )

    def served(index: ServingIndex) -> SearchFunction:
        # recommend() adds each user's seen items itself; the vectors path takes the full exclusion list.
        return lambda queries, excluded: index.recommend_vectors(queries, K, excluded)

    rows = measure_catalog(catalog, served(flat), served(hnsw), args.rounds, progress)
    user_rows = list(range(64))
    start = time.perf_counter()
    for _ in range(args.rounds):
        flat.recommend(user_rows, K)
    per_call = (time.perf_counter() - start) / args.rounds
    filters = measure_filters(flat, args.rounds)
    info = {
        "source": source,
        "n_items": model.n_items,
        "n_users": model.n_users,
        "dim": model.dim,
        "seen_per_user_mean": float(np.mean(model.seen.row_lengths())),
        "seen_per_user_max": int(np.max(model.seen.row_lengths())),
        "build_seconds": {"flat": flat_build, "hnsw": hnsw_build},
        "recommend_64_users_ms": per_call * 1e3,
        "filters": filters,
    }
    return rows, info


def measure_filters(index: ServingIndex, rounds: int) -> dict[str, Any]:
    """Served ``recommend`` per filter (cached masks) vs none, first-use mask compilation, ``because`` for k=10."""
    rng = np.random.default_rng(3)
    known = set(index.genres)
    usable = {name: f for name, f in FILTERS.items() if f.include_genres | f.exclude_genres <= known}
    rows = []
    for batch in BATCH_SIZES:
        users = rng.choice(index.n_users, size=batch, replace=False).tolist()
        methods: dict[str, Search] = {}
        for name, item_filter in usable.items():
            methods[name] = functools.partial(index.recommend, users, K, None, item_filter)
            allowed = index.allowed_items(item_filter)
            if allowed is not None:
                blocked = [np.flatnonzero(~allowed)] * batch
                methods[f"{name} [blank -inf]"] = functools.partial(index.recommend, users, K, blocked)
        timings = time_interleaved(methods, rounds)
        for name, item_filter in usable.items():
            allowed = index.allowed_items(item_filter)
            seconds = timings[name]
            blanked = timings.get(f"{name} [blank -inf]")
            rows.append(
                {
                    "batch": batch,
                    "filter": name,
                    "allowed_items": index.n_items if allowed is None else int(allowed.sum()),
                    "p50_ms": percentile_ms(seconds, 50),
                    "p99_ms": percentile_ms(seconds, 99),
                    "p50_vs_none": percentile_ms(seconds, 50) / percentile_ms(timings["none"], 50),
                    "blank_inf_p50_ms": percentile_ms(blanked, 50) if blanked else None,
                }
            )
    compile_seconds = []
    for year in sorted({y for y in index.model.items.years if y is not None}):
        start = time.perf_counter()
        index.allowed_items(ItemFilter(min_year=year, max_year=year))  # a new filter: a cache miss
        compile_seconds.append(time.perf_counter() - start)
    because_users = rng.choice(index.n_users, size=min(BECAUSE_QUERIES, index.n_users), replace=False).tolist()
    answers = index.recommend(because_users, K)
    because_seconds = []
    for user, answer in zip(because_users, answers, strict=True):
        start = time.perf_counter()
        index.because(user, answer.item_rows)
        because_seconds.append(time.perf_counter() - start)
    positives = index.model.train.row_lengths()[because_users]
    return {
        "skipped": sorted(set(FILTERS) - set(usable)),
        "rows": rows,
        "first_use_compile_ms": {
            "filters": len(compile_seconds),
            "p50": percentile_ms(compile_seconds, 50) if compile_seconds else None,
            "p99": percentile_ms(compile_seconds, 99) if compile_seconds else None,
        },
        "because_k10_ms": {
            "queries": len(because_seconds),
            "p50": percentile_ms(because_seconds, 50),
            "p99": percentile_ms(because_seconds, 99),
            "mean_train_positives": float(np.mean(positives)),
        },
    }


def run_large(args: argparse.Namespace, progress: tqdm) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    catalog = large_catalog(args.large_items, 1000, args.dim)
    params = HnswParams()
    start = time.perf_counter()
    graph = create_index("hnsw", catalog.item_vectors, params)
    build = time.perf_counter() - start
    exact = ExactSearcher(catalog.item_vectors)
    hnsw = HnswSearcher(graph, exact, params)
    rows = measure_catalog(
        catalog,
        lambda q, e: exact.search(q, K, e),
        lambda q, e: hnsw.search(q, K, e),
        max(5, args.rounds // 3),
        progress,
    )
    return rows, {"source": catalog.source, "n_items": args.large_items, "hnsw_build_seconds": build}


METHODS = ("exact", "exact_blas_default", "faiss_selector", "faiss_overfetch", "hnsw")


def plot(out: Path, result: dict[str, Any]) -> None:
    """Grouped bars of p50 latency (log scale) per method, one panel per catalog."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    catalogs = list(result["catalogs"])
    figure, axes = plt.subplots(1, len(catalogs), figsize=(7 * len(catalogs), 4.5), squeeze=False)
    for axis, name in zip(axes[0], catalogs, strict=True):
        rows = [r for r in result["rows"] if r["catalog"] == name]
        positions = np.arange(len(rows))
        width = 0.8 / len(METHODS)
        for i, method in enumerate(METHODS):
            axis.bar(positions + i * width, [r[f"{method}_p50_ms"] for r in rows], width, label=method)
        axis.set_xticks(positions + 0.4 - width / 2, [f"batch {r['batch']}\n+{r['extra_excluded']} excl" for r in rows])
        axis.set_yscale("log")
        axis.set_ylabel("p50 latency per call (ms, log)")
        axis.set_title(f"{name}: {result['catalogs'][name]['n_items']} items, k={K}")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"{RESULTS_NAME}.png", dpi=110)
    plt.close(figure)


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS_NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(out, result)
    lines = [
        "# Index search latency with exclusion (`benchmarks/index_bench.py`)",
        "",
        f"Run {result['created_at']}: `{result['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        "",
        "k = 10. Latency of one call (a batch of 64 queries is one call), ms, p50 / p99 over the rounds;",
        "methods interleaved round by round. `exact` is what serves (`kind=flat`, the default).",
        "The machine is shared (see the load average): compare columns within a row, not across runs.",
        "",
        f"![p50 latency per method]({RESULTS_NAME}.png)",
        "",
    ]
    for name, info in result["catalogs"].items():
        lines += [f"## `{name}`: {info['source']}", "", "```", json.dumps(info, indent=1), "```", ""]
        lines += [
            "| batch | extra excluded | mean excluded | exact | exact_blas_default | faiss_selector | faiss_overfetch "
            "| hnsw | hnsw recall@10 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in result["rows"] if r["catalog"] == name):
            cells = [f"{row[f'{m}_p50_ms']:.3f} / {row[f'{m}_p99_ms']:.3f}" for m in METHODS]
            lines.append(
                f"| {row['batch']} | {row['extra_excluded']} | {row['mean_excluded']:.0f} | "
                + " | ".join(cells)
                + f" | {row['hnsw_recall_at_10']:.3f} |"
            )
        lines.append("")
    lines += filter_lines(result["catalogs"]["ml1m"]["filters"])
    lines += ["## Exclusion cost of the served path (`exact`, p50, relative to 0 extra excluded)", ""]
    for row in result["rows"]:
        base = next(
            r
            for r in result["rows"]
            if r["catalog"] == row["catalog"] and r["batch"] == row["batch"] and r["extra_excluded"] == 0
        )
        lines.append(
            f"- {row['catalog']}, batch {row['batch']}, {row['extra_excluded']} extra: "
            f"{row['exact_p50_ms'] / base['exact_p50_ms']:.2f}x"
        )
    (out / f"{RESULTS_NAME}.md").write_text("\n".join(lines) + "\n")


def filter_lines(filters: dict[str, Any]) -> list[str]:
    lines = [
        "## Filters and `because` (`ml1m`, served `recommend`, seen items excluded, k = 10)",
        "",
        "Filters are exact: the served path scans only the allowed items (exclusions inside that scan).",
        "Masks are cached per distinct filter, so these are steady-state latencies, interleaved round by",
        "round with `none` and with `blank -inf`, the alternative not served (every item scored, the",
        "filtered-out ones blanked to -inf; same answers).",
        "",
        "| batch | filter | allowed items | served p50 / p99 ms | served p50 vs none | blank -inf p50 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in filters["rows"]:
        blanked = "" if row["blank_inf_p50_ms"] is None else f"{row['blank_inf_p50_ms']:.3f}"
        lines.append(
            f"| {row['batch']} | {row['filter']} | {row['allowed_items']} | "
            f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f} | {row['p50_vs_none']:.2f}x | {blanked} |"
        )
    compile_cost, because = filters["first_use_compile_ms"], filters["because_k10_ms"]
    if compile_cost["filters"]:
        lines += [
            "",
            f"- First use of a filter (mask compiled, then cached): p50 {compile_cost['p50']:.3f} ms, "
            f"p99 {compile_cost['p99']:.3f} ms over {compile_cost['filters']} single-year filters.",
        ]
    lines += [
        f"- `because` for one answer of k = 10: p50 {because['p50']:.3f} ms, p99 {because['p99']:.3f} ms over "
        f"{because['queries']} users (mean {because['mean_train_positives']:.0f} training positives each).",
    ]
    if filters["skipped"]:
        lines.append(f"- Skipped (genres absent from this catalog): {', '.join(filters['skipped'])}.")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="a trained model bundle (default: PureSVD of ML-1M)")
    parser.add_argument("--data", type=Path, help="MovieLens-1M folder (default: movierec.paths)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension of the stand-ins")
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per method and cell")
    parser.add_argument("--large-items", type=int, default=50_000, help="synthetic catalog size (0 = skip)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    limit_serving_threads()
    cells = len(BATCH_SIZES) * len(EXTRA_EXCLUDED) * (2 if args.large_items else 1)
    result: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/index_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "k": K,
        "threads": "limit_serving_threads(): 1 BLAS + 1 OpenMP thread, except exact_blas_default",
        "hnsw_params": HnswParams().to_json(),
        "catalogs": {},
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as work, tqdm(total=cells, desc="index bench", unit="cell") as progress:
        rows, info = run_ml1m(args, Path(work), progress)
        result["rows"] += rows
        result["catalogs"]["ml1m"] = info
        if args.large_items:
            rows, info = run_large(args, progress)
            result["rows"] += rows
            result["catalogs"]["large"] = info
    write_results(args.out, result)
    print((args.out / f"{RESULTS_NAME}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
