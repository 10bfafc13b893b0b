"""A MovieLens-shaped synthetic dataset, for scale tests and benchmarks past the sizes GroupLens ships.

The generator plants the structure a recommender is meant to find, so that a
model trained on the output has something to learn and popularity is a real
baseline, not the best possible answer:

* **activity and popularity are power laws**: each user's number of ratings and
  each movie's popularity weight are Lomax (Pareto II) draws (a few users rate
  thousands of movies, most rate a few dozen, none fewer than
  ``MIN_RATINGS_PER_USER`` when the sizes allow; a few movies collect most
  ratings, many have a handful);
* **latent tastes**: users and movies have ``LATENT_DIM``-dimensional factors;
  a user picks movies by popularity times ``exp(TASTE * affinity)``, and rates
  them from the same affinity plus user and movie biases and noise, cut into
  1-5 stars;
* **metadata follows taste**: each movie's genres are the genre directions its
  factor points at, its year skews recent, and its title reads ``Adjective
  Noun (Year)`` (sometimes ``..., The``, so titles need CSV quoting as real ones do);
* **timestamps**: each user is active over a span starting at a random date.

Output is the MovieLens CSV layout (``ratings.csv`` sorted by user then movie,
``movies.csv``), which :func:`movierec.trainer.data.load_dataset` detects as
``ml-csv``. Ids run ``1..users`` and ``1..items``; stars are whole numbers.

Exactly ``ratings`` distinct (user, movie) pairs are written. Users are
generated in chunks of about ``CHUNK_RATINGS`` ratings, each with its own
random stream, so memory stays bounded whatever the size; per user, candidate
movies are drawn by popularity (``OVERSAMPLE`` times the ratings needed) and
the best by ``taste + Gumbel noise`` are kept, which approximates sampling
without replacement from popularity x ``exp(TASTE * affinity)`` without scoring
every movie. Users who need a large share of the catalogue (or whose candidates are
too few once duplicates are dropped) are scored against every movie instead.
The output depends on the seed and the sizes only.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm import tqdm

from movierec.errors import MovierecError

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 18 genres of ML-1M's ``movies.dat``."""

LATENT_DIM = 8
TASTE = 3.0
"""How strongly affinity (a standard-normal score) steers which movies a user picks."""
USER_ACTIVITY_SHAPE = 2.5
ITEM_POPULARITY_SHAPE = 1.3
"""Pareto shapes: smaller is heavier-tailed."""
MIN_RATINGS_PER_USER = 20
"""As in MovieLens; lowered when there are too few ratings to give every user this many."""
MAX_CATALOGUE_SHARE = 0.6
"""No user rates more than this share of the movies (ML-1M's busiest: 62 %), unless the sizes leave no choice."""
CHUNK_RATINGS = 200_000
OVERSAMPLE = 3.0
DENSE_SCORES = 4_000_000
"""Users scored against the whole catalogue at once: at most this many (user, movie) scores."""
FIRST_TIMESTAMP = 946_684_800  # 2000-01-01 UTC
LAST_TIMESTAMP = 1_420_070_400  # 2015-01-01 UTC
LATEST_YEAR = 2014
EARLIEST_YEAR = 1915
STAR_CUTS = (-1.1, -0.45, 0.45, 1.5)
"""Where the rating score (affinity + biases + noise) crosses from 1 to 2 stars, 2 to 3, ... ;
chosen so the star histogram resembles ML-1M's (about 6/11/26/35/22 %)."""

_ADJECTIVES = (
    "Silent", "Crimson", "Last", "Broken", "Golden", "Hidden", "Wild", "Lonely", "Dark", "Bright", "Secret", "Lost",
    "Electric", "Frozen", "Burning", "Midnight", "Distant", "Little", "Great", "Strange", "Quiet", "Final", "Blue",
    "Iron", "Paper", "Savage", "Gentle", "Endless", "Hollow", "Velvet",
)  # fmt: skip
_NOUNS = (
    "River", "Harbor", "Letters", "Summer", "Kingdom", "Stranger", "Garden", "Road", "Empire", "Promise", "Island",
    "Witness", "Season", "Machine", "Heart", "Shadow", "Voyage", "Station", "Mirror", "Frontier", "Dream", "Game",
    "Storm", "Tide", "Echo", "Winter", "City", "Family", "Horizon", "Sky",
)  # fmt: skip


@dataclass(frozen=True)
class SynthResult:
    """What was written, for the CLI's summary."""

    folder: Path
    ratings_file: Path
    movies_file: Path
    ratings: int
    users: int
    items: int
    users_with_ratings: int
    items_with_ratings: int
    seconds: float


@dataclass(frozen=True)
class _World:
    """Everything drawn once per dataset: factors, biases, popularity, activity, time spans."""

    user_factors: npt.NDArray[np.float32]
    user_bias: npt.NDArray[np.float32]
    user_start: npt.NDArray[np.int64]
    user_span: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]
    item_factors: npt.NDArray[np.float32]
    item_quality: npt.NDArray[np.float32]
    item_log_popularity: npt.NDArray[np.float64]
    item_cdf: npt.NDArray[np.float64]


def check_request(users: int, items: int, ratings: int, seed: int) -> None:
    """Refuse sizes no dataset can have, with a message that says why."""
    for name, value in (("users", users), ("items", items), ("ratings", ratings)):
        if value < 1:
            raise MovierecError(f"--{name} must be a positive whole number, got {value}")
    if ratings > users * items:
        raise MovierecError(
            f"--ratings {ratings:,} is more than --users x --items = {users * items:,}: "
            "each user rates each movie at most once"
        )
    if seed < 0:
        raise MovierecError(f"--seed must be 0 or more, got {seed}")


def generate(
    out: Path | str,
    *,
    users: int,
    items: int,
    ratings: int,
    seed: int = 0,
    force: bool = False,
    progress: bool | None = None,
) -> SynthResult:
    """Write ``ratings.csv`` and ``movies.csv`` into ``out`` (created if missing).

    Existing files are never overwritten unless ``force``; each file is written
    under a temporary name and renamed, so an interrupted run leaves no half file.
    ``progress=None`` shows a bar only when stderr is a terminal.
    """
    check_request(users, items, ratings, seed)
    started = time.perf_counter()
    folder = Path(out)
    ratings_file, movies_file = folder / "ratings.csv", folder / "movies.csv"
    if folder.exists() and not folder.is_dir():
        raise MovierecError("exists and is not a folder", path=folder)
    existing = [p.name for p in (ratings_file, movies_file) if p.exists()]
    if existing and not force:
        raise MovierecError(f"already holds {' and '.join(existing)} (use --force to replace)", path=folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MovierecError(f"cannot create the folder: {exc.strerror}", path=folder) from None

    root = np.random.SeedSequence(seed)
    world_seed, movies_seed, chunks_seed = root.spawn(3)
    world = _draw_world(np.random.default_rng(world_seed), users, items, ratings)
    _write_atomically(movies_file, lambda tmp: _write_movies(tmp, world, np.random.default_rng(movies_seed)))

    items_rated = np.zeros(items, dtype=bool)
    bounds = _chunk_bounds(world.counts)
    chunk_seeds = chunks_seed.spawn(len(bounds) - 1)

    def write_ratings(tmp: Path) -> None:
        with (
            tmp.open("w", newline="") as handle,
            tqdm(
                total=ratings,
                unit="rating",
                unit_scale=True,
                desc="synth",
                disable=None if progress is None else not progress,
            ) as bar,
        ):
            handle.write("userId,movieId,rating,timestamp\n")
            for first, last, chunk_seed in zip(bounds[:-1], bounds[1:], chunk_seeds, strict=True):
                rng = np.random.default_rng(chunk_seed)
                pair_users, pair_items = _pick_pairs(world, int(first), int(last), rng)
                frame = pd.DataFrame(
                    {
                        "userId": pair_users + 1,
                        "movieId": pair_items + 1,
                        "rating": _stars(world, pair_users, pair_items, rng),
                        "timestamp": _timestamps(world, pair_users, rng),
                    }
                )
                frame.to_csv(handle, header=False, index=False, lineterminator="\n")
                items_rated[pair_items] = True
                bar.update(pair_users.shape[0])

    _write_atomically(ratings_file, write_ratings)
    return SynthResult(
        folder=folder,
        ratings_file=ratings_file,
        movies_file=movies_file,
        ratings=ratings,
        users=users,
        items=items,
        users_with_ratings=int((world.counts > 0).sum()),
        items_with_ratings=int(items_rated.sum()),
        seconds=time.perf_counter() - started,
    )


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        write(partial)
        os.replace(partial, target)
    except OSError as exc:
        raise MovierecError(f"cannot write: {exc.strerror}", path=target) from None
    finally:
        partial.unlink(missing_ok=True)


def _power_law_weights(rng: np.random.Generator, n: int, shape: float) -> npt.NDArray[np.float64]:
    """``n`` draws of a Lomax (Pareto II) law: many near 0, a power-law tail with exponent ``shape``."""
    return (1.0 - rng.random(n)) ** (-1.0 / shape) - 1.0


def _draw_world(rng: np.random.Generator, users: int, items: int, ratings: int) -> _World:
    scale = np.float32(1.0 / np.sqrt(LATENT_DIM))
    user_factors = rng.standard_normal((users, LATENT_DIM), dtype=np.float32) * scale
    item_factors = rng.standard_normal((items, LATENT_DIM), dtype=np.float32)
    popularity = _power_law_weights(rng, items, ITEM_POPULARITY_SHAPE)
    cdf = np.cumsum(popularity)
    popularity = np.maximum(popularity, 1e-12)
    floor = min(MIN_RATINGS_PER_USER, ratings // (2 * users), items)
    if ratings >= users:
        floor = max(floor, 1)
    cap = min(items, max(int(np.ceil(MAX_CATALOGUE_SHARE * items)), -(-ratings // users)))
    counts = allocate_counts(_power_law_weights(rng, users, USER_ACTIVITY_SHAPE), ratings, floor=floor, cap=cap)
    history = LAST_TIMESTAMP - FIRST_TIMESTAMP
    span_days = rng.exponential(365.0, users) * (1.0 + np.log1p(counts / max(floor, 1)))
    span = np.clip(span_days * 86_400, 3_600, history).astype(np.int64)
    return _World(
        user_factors=user_factors,
        user_bias=(rng.standard_normal(users) * 0.4).astype(np.float32),
        user_start=FIRST_TIMESTAMP + (rng.random(users) * (history - span)).astype(np.int64),
        user_span=span,
        counts=counts,
        item_factors=item_factors,
        item_quality=(rng.standard_normal(items) * 0.5).astype(np.float32),
        item_log_popularity=np.log(popularity),
        item_cdf=cdf / cdf[-1],
    )


def allocate_counts(weights: npt.NDArray[np.float64], total: int, *, floor: int, cap: int) -> npt.NDArray[np.int64]:
    """Whole counts in ``[floor, cap]`` summing to ``total``, above the floor in proportion to ``weights``.

    Water-filling: the heaviest weights are capped first and what they cannot
    take is shared among the rest; the fractional parts are then rounded by
    largest remainder so the sum is exact.
    """
    n = weights.shape[0]
    if not 0 <= floor <= cap or not n * floor <= total <= n * cap:
        raise ValueError(f"cannot give {n} users between {floor} and {cap} each, {total} in all")
    room, rest = cap - floor, total - n * floor
    order = np.argsort(-weights, kind="stable")
    sorted_weights = weights[order]
    # Share when the k heaviest are capped: (rest - k*room) / (weight of the others); the first k where the
    # (k+1)-th heaviest stays under the cap is the water level.
    weight_after = np.concatenate([np.cumsum(sorted_weights[::-1])[::-1], [0.0]])
    capped = np.arange(n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = (rest - capped * room) / weight_after
    fits = np.concatenate([level[:-1] * sorted_weights < room, [True]])
    k = int(np.argmax(fits))
    extra = np.full(n, float(room))
    if k < n:
        extra[k:] = np.minimum(level[k] * sorted_weights[k:], room)
    whole = np.floor(extra).astype(np.int64)
    short = rest - int(whole.sum())
    if short > 0:
        fraction = np.where(whole < room, extra - whole, -1.0)
        whole[np.argsort(-fraction, kind="stable")[:short]] += 1
    counts = np.empty(n, dtype=np.int64)
    counts[order] = floor + whole
    return counts


def _chunk_bounds(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """User row boundaries of chunks holding about ``CHUNK_RATINGS`` ratings each (users are never split)."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(CHUNK_RATINGS, int(ends[-1]), CHUNK_RATINGS), side="left") + 1
    return np.unique(np.concatenate([[0], cuts, [counts.shape[0]]]))


def _affinity(world: _World, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Standard-normal taste score of each (user, item) pair."""
    out = np.empty(users.shape[0], dtype=np.float32)
    step = 1 << 16
    for start in range(0, users.shape[0], step):
        u, i = users[start : start + step], items[start : start + step]
        out[start : start + step] = np.einsum("ij,ij->i", world.user_factors[u], world.item_factors[i])
    return out


def _pick_pairs(
    world: _World, first: int, last: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The rated (user, item) rows of users ``first..last-1``, sorted by user then item."""
    users = np.arange(first, last, dtype=np.int64)
    counts = world.counts[first:last]
    n_items = world.item_factors.shape[0]
    dense = counts * OVERSAMPLE > n_items / 2
    sparse_users, sparse_items, short = _pick_by_candidates(world, users[~dense & (counts > 0)], rng)
    dense_users = np.concatenate([users[dense], short])
    picked_users = [sparse_users]
    picked_items = [sparse_items]
    for block in _blocks(dense_users, max(1, DENSE_SCORES // n_items)):
        block_users, block_items = _pick_by_scan(world, block, rng)
        picked_users.append(block_users)
        picked_items.append(block_items)
    keys = np.sort(np.concatenate(picked_users) * n_items + np.concatenate(picked_items))
    return keys // n_items, keys % n_items


def _blocks(values: npt.NDArray[np.int64], size: int) -> Iterator[npt.NDArray[np.int64]]:
    for start in range(0, values.shape[0], size):
        yield values[start : start + size]


def _pick_by_candidates(
    world: _World, users: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Draw candidates by popularity, keep each user's best by taste + Gumbel noise.

    Returns the kept pairs and the users whose distinct candidates fell short.
    """
    n_items = world.item_factors.shape[0]
    needed = world.counts[users]
    drawn = np.ceil(needed * OVERSAMPLE).astype(np.int64) + 4
    owner = np.repeat(np.arange(users.shape[0], dtype=np.int64), drawn)
    candidates = np.searchsorted(world.item_cdf, rng.random(owner.shape[0]), side="right")
    keys = np.sort(owner * n_items + np.minimum(candidates, n_items - 1))
    keys = keys[np.diff(keys, prepend=-1) != 0]  # distinct pairs (np.unique would hash first: slower)
    owner, candidates = keys // n_items, keys % n_items
    noise = -np.log(-np.log(rng.random(keys.shape[0])))
    merit = TASTE * _affinity(world, users[owner], candidates) + noise
    order = np.lexsort((-merit, owner))  # by user, best first
    distinct = np.bincount(owner, minlength=users.shape[0])
    group_start = np.cumsum(distinct) - distinct
    rank = np.arange(order.shape[0]) - np.repeat(group_start, distinct)
    enough = distinct >= needed
    keep = order[(rank < needed[owner[order]]) & enough[owner[order]]]
    return users[owner[keep]], candidates[keep], users[~enough]


def _pick_by_scan(
    world: _World, users: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Score every item for these users: Gumbel top-n of log popularity + taste, without replacement."""
    needed = world.counts[users]
    merit = TASTE * (world.user_factors[users] @ world.item_factors.T) + world.item_log_popularity
    merit += -np.log(-np.log(rng.random(merit.shape)))
    picked_users, picked_items = [], []
    for row, (user, n) in enumerate(zip(users, needed, strict=True)):
        best = np.argpartition(-merit[row], n - 1)[:n] if n < merit.shape[1] else np.arange(merit.shape[1])
        picked_users.append(np.full(n, user, dtype=np.int64))
        picked_items.append(best.astype(np.int64))
    if not picked_users:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(picked_users), np.concatenate(picked_items)


def _stars(
    world: _World, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64], rng: np.random.Generator
) -> npt.NDArray[np.int8]:
    """1-5 stars: affinity plus user and item biases plus noise, cut at ``STAR_CUTS``."""
    score = _affinity(world, users, items) + world.user_bias[users] + world.item_quality[items]
    score += rng.standard_normal(users.shape[0], dtype=np.float32) * np.float32(0.6)
    return (np.searchsorted(np.asarray(STAR_CUTS, dtype=np.float32), score) + 1).astype(np.int8)


def _timestamps(world: _World, users: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Within each user's active span (which ends by ``LAST_TIMESTAMP``), front-loaded: most ratings come
    early, as in MovieLens."""
    offset = (rng.random(users.shape[0]) ** 2 * world.user_span[users]).astype(np.int64)
    stamps: npt.NDArray[np.int64] = world.user_start[users] + offset
    return stamps


def _write_movies(path: Path, world: _World, rng: np.random.Generator) -> None:
    n_items = int(world.item_factors.shape[0])
    directions = rng.standard_normal((len(GENRES), LATENT_DIM), dtype=np.float32) / np.float32(np.sqrt(LATENT_DIM))
    leaning = world.item_factors @ directions.T + rng.standard_normal((n_items, len(GENRES)), dtype=np.float32) * 0.3
    ranked = np.argsort(-leaning, axis=1)[:, :3]
    best = np.take_along_axis(leaning, ranked, axis=1)
    second, third = best[:, 1] > 0.9, (best[:, 1] > 0.9) & (best[:, 2] > 1.1)
    n_genres: list[int] = (1 + second.astype(np.int64) + third.astype(np.int64)).tolist()
    years = LATEST_YEAR - np.minimum(rng.exponential(14.0, n_items), LATEST_YEAR - EARLIEST_YEAR).astype(np.int64)
    adjective = rng.integers(0, len(_ADJECTIVES), n_items).tolist()
    noun = rng.integers(0, len(_NOUNS), n_items).tolist()
    article_draws: list[float] = rng.random(n_items).tolist()
    ranked_genres: list[list[int]] = ranked.tolist()
    years_of: list[int] = years.tolist()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("movieId", "title", "genres"))
        for row in range(n_items):
            name = f"{_ADJECTIVES[adjective[row]]} {_NOUNS[noun[row]]}"
            if article_draws[row] < 0.2:
                name += ", The"
            genres = "|".join(GENRES[g] for g in ranked_genres[row][: n_genres[row]])
            writer.writerow((row + 1, f"{name} ({years_of[row]})", genres))
