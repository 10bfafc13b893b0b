"""Tiny, deterministic model bundles for tests that need one (index, server, CLI).

Real bundles come from the trainer; these have random vectors and random
"seen" sets so tests run in milliseconds and can choose their own shape.
Ids are deliberately not 0..n-1 (users 1, 3, 5, ...; items 10, 20, 30, ...)
so a test that confuses an internal row with a dataset id fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, ItemMetadata, ModelBundle, write_model_bundle

GENRES = ("Action", "Comedy", "Drama", "Sci-Fi", "Thriller")


def user_id_of_row(row: int) -> int:
    """The dataset id the factory gives user ``row``."""
    return 2 * row + 1


def item_id_of_row(row: int) -> int:
    """The dataset id the factory gives item ``row``."""
    return 10 * (row + 1)


def random_seen(n_users: int, n_items: int, seen_per_user: int, rng: np.random.Generator) -> CSR:
    """Each user has rated ``min(seen_per_user, n_items)`` distinct random items."""
    per_user = min(seen_per_user, n_items)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = np.concatenate([rng.choice(n_items, size=per_user, replace=False) for _ in range(n_users)])
    return CSR.from_pairs(rows, cols.astype(np.int64), n_users, n_items)


def make_bundle(
    n_users: int,
    n_items: int,
    dim: int,
    seen_per_user: int,
    seed: int,
    *,
    item_vectors: npt.NDArray[np.float32] | None = None,
) -> ModelBundle:
    """An in-memory bundle; ``item_vectors`` overrides the random ones (e.g. to force score ties)."""
    rng = np.random.default_rng(seed)
    user_vectors = rng.standard_normal((n_users, dim)).astype(np.float32)
    if item_vectors is None:
        item_vectors = rng.standard_normal((n_items, dim)).astype(np.float32)
    seen = random_seen(n_users, n_items, seen_per_user, rng)
    empty = CSR.from_pairs([], [], n_users, n_items)
    items = ItemMetadata(
        titles=[f"Movie {item_id_of_row(r)} ({1980 + r % 40})" for r in range(n_items)],
        years=[1980 + r % 40 for r in range(n_items)],
        genres=[[GENRES[r % len(GENRES)]] for r in range(n_items)],
    )
    return ModelBundle(
        user_vectors=user_vectors,
        item_vectors=np.ascontiguousarray(item_vectors, dtype=np.float32),
        user_ids=np.array([user_id_of_row(r) for r in range(n_users)], dtype=np.int64),
        item_ids=np.array([item_id_of_row(r) for r in range(n_items)], dtype=np.int64),
        items=items,
        seen=seen,
        train=seen,
        valid=empty,
        test=empty,
        config={"model": "random", "dim": dim, "seed": seed},
        metrics={"recall@10": 0.0},
        dataset={"name": "synthetic", "seed": seed},
    )


def make_model_bundle(
    path: Path, n_users: int = 20, n_items: int = 50, dim: int = 8, seen_per_user: int = 5, seed: int = 0
) -> Path:
    """Write a random model bundle to ``path`` (which must not exist) and return ``path``."""
    write_model_bundle(make_bundle(n_users, n_items, dim, seen_per_user, seed), path)
    return Path(path)
