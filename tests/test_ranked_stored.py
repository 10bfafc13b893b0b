"""Ranked prefixes built in batches at index build time, stored in the version and memory-mapped at load.

The batched build must be bit for bit the single-user scan (items, float32 scores, tie order) whatever the
chunk size and thread count, because a BLAS product's last bits depend on the batch: the search's scores
must not (movierec.index.topk, "Scores").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle, user_id_of_row
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.bundle import CSR, ModelBundle, read_manifest, write_model_bundle
from movierec.errors import BundleError
from movierec.index import build_index, open_index
from movierec.index.events import SeenEvents
from movierec.index.layout import RANKED_LENGTHS_FILE, RANKED_ROWS_FILE, RANKED_SCORES_FILE
from movierec.index.ranked import RankedPrefixes, chunk_users
from movierec.index.topk import ExactSearcher, exact_scores

RANKED_FILES = (RANKED_ROWS_FILE, RANKED_SCORES_FILE, RANKED_LENGTHS_FILE)


def bits(values: npt.NDArray[np.float32]) -> list[int]:
    """Scores as their bit patterns: equal lists mean bit-for-bit equal scores (0.0 vs -0.0 included)."""
    patterns: list[int] = np.ascontiguousarray(values, dtype=np.float32).view(np.int32).tolist()
    return patterns


def scan_one(
    searcher: ExactSearcher, users: npt.NDArray[np.float32], seen: CSR, user: int, k: int
) -> tuple[list[int], list[int]]:
    (answer,) = searcher.search(users[user : user + 1], k, [seen.row(user).astype(np.int64)])
    return answer.item_rows.tolist(), bits(answer.scores)


@pytest.mark.parametrize(("n_items", "dim"), [(7, 64), (50, 64), (333, 64), (333, 17), (3000, 32)])
def test_a_batch_scores_each_query_as_it_alone_would_be_scored(n_items: int, dim: int) -> None:
    # These shapes send OpenBLAS down its matrix-vector, small-matrix and blocked kernels, whose sums differ
    # in the last bits: the search's answers must not.
    rng = np.random.default_rng(n_items + dim)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    queries = rng.standard_normal((70, dim)).astype(np.float32)
    searcher = ExactSearcher(items)
    excluded = [rng.choice(n_items, size=n_items // 5, replace=False).astype(np.int64) for _ in range(70)]
    together = searcher.search(queries, 10, excluded)
    for q in range(70):
        (alone,) = searcher.search(queries[q : q + 1], 10, excluded[q : q + 1])
        assert together[q].item_rows.tolist() == alone.item_rows.tolist()
        assert bits(together[q].scores) == bits(alone.scores)


def test_exact_scores_sum_float32_products_in_dimension_order() -> None:
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((3, 9)).astype(np.float32) * 1e3
    items = rng.standard_normal((5, 9)).astype(np.float32)
    query_index = np.array([0, 2, 1, 2], dtype=np.int64)
    item_index = np.array([4, 0, 3, 3], dtype=np.int64)
    expected = []
    for q, i in zip(query_index, item_index, strict=True):
        total = np.float32(queries[q, 0] * items[i, 0])
        for d in range(1, 9):
            total = np.float32(total + np.float32(queries[q, d] * items[i, d]))
        expected.append(total)
    assert bits(exact_scores(queries, query_index, items, item_index)) == bits(np.array(expected))


@st.composite
def build_cases(draw: st.DrawFn) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], CSR, int, int, int]:
    """Float vectors (continuous: BLAS rounding differs by batch) or small integers (exact ties), seen sets up
    to the whole catalogue, depths past the catalogue, chunks from one user to all, one or several threads."""
    n_items = draw(st.integers(1, 60))
    n_users = draw(st.integers(1, 40))
    dim = draw(st.sampled_from([1, 3, 8, 33, 64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        items = rng.standard_normal((n_items, dim)).astype(np.float32)
        users = rng.standard_normal((n_users, dim)).astype(np.float32)
    else:
        items = rng.integers(-2, 3, size=(n_items, dim)).astype(np.float32)
        users = rng.integers(-2, 3, size=(n_users, dim)).astype(np.float32)
    counts = [draw(st.integers(0, n_items)) for _ in range(n_users)]
    rows = np.repeat(np.arange(n_users), counts)
    cols = np.concatenate([rng.choice(n_items, size=c, replace=False) for c in counts]).astype(np.int64)
    seen = CSR.from_pairs(rows, cols, n_users, n_items)
    depth = draw(st.integers(1, n_items + 2))
    chunk = draw(st.integers(1, n_users))
    workers = draw(st.sampled_from([1, 2, 3]))
    return items, users, seen, depth, chunk, workers


@settings(max_examples=150, deadline=None)
@given(build_cases())
def test_the_batched_build_is_the_single_user_scan_bit_for_bit(
    case: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], CSR, int, int, int],
) -> None:
    items, users, seen, depth, chunk, workers = case
    searcher = ExactSearcher(items)
    budget = chunk * items.shape[0] * 12 * workers  # exactly `chunk` users per BLAS product
    assert chunk_users(items.shape[0], budget, workers) == chunk
    prefixes = RankedPrefixes.build(searcher, users, seen, depth, memory_budget=budget, workers=workers)
    for user in range(users.shape[0]):
        length = int(prefixes.lengths[user])
        assert (prefixes.rows[user, :length].tolist(), bits(prefixes.scores[user, :length])) == scan_one(
            searcher, users, seen, user, depth
        )
        assert np.all(prefixes.rows[user, length:] == -1) and np.all(np.isneginf(prefixes.scores[user, length:]))


def write_store(tmp_path: Path, bundle: ModelBundle | None = None, **build: object) -> Path:
    write_model_bundle(
        bundle or make_bundle(n_users=50, n_items=120, dim=16, seen_per_user=30, seed=11), tmp_path / "model"
    )
    return build_index(tmp_path / "model", tmp_path / "index", **build)  # type: ignore[arg-type]


def assert_serves_like_the_scan(version: Path, ranked_depth: int) -> None:
    ranked = open_index(version, ranked_depth=ranked_depth)
    scanning = open_index(version, ranked_depth=0)
    users = list(range(ranked.n_users))
    extras = [np.array([u % 7, (5 * u) % ranked.n_items], dtype=np.int32) for u in users]
    for k in (1, 10, ranked_depth, ranked_depth + 5):
        got = ranked.recommend(users, k, extras)
        for user in users:  # one user per scan: the unary request's path
            (want,) = scanning.recommend([user], k, [extras[user]])
            assert got[user].item_rows.tolist() == want.item_rows.tolist()
            assert bits(got[user].scores) == bits(want.scores)


def test_a_build_stores_checksummed_prefixes_that_a_load_maps_instead_of_computing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = write_store(tmp_path, ranked_depth=24)
    manifest = read_manifest(version, "index")
    assert all(name in manifest.files for name in RANKED_FILES)
    assert manifest.meta["ranked"]["depth"] == 24
    assert manifest.meta["ranked"]["bytes"] == sum((version / name).stat().st_size for name in RANKED_FILES)

    def no_build(*args: object, **kwargs: object) -> RankedPrefixes:
        raise AssertionError("recomputed the prefixes the version stores")

    monkeypatch.setattr(RankedPrefixes, "build", no_build)
    served = open_index(version, ranked_depth=24)
    assert served.ranked is not None and served.ranked.stored and served.ranked.depth == 24
    rows = served.ranked.rows
    assert type(rows) is np.ndarray and type(rows[:1]) is np.ndarray  # no memmap subclass on the request path
    assert isinstance(rows.base, np.memmap) and not rows.flags.writeable  # still the file's read-only mapping
    monkeypatch.undo()
    assert_serves_like_the_scan(version, 24)
    assert_serves_like_the_scan(version, 9)  # a server asking for fewer places cuts the stored ones
    assert open_index(version, ranked_depth=9).ranked.stored  # type: ignore[union-attr]


def test_prefixes_exclude_the_live_events_compacted_into_the_version(tmp_path: Path) -> None:
    bundle = make_bundle(n_users=20, n_items=60, dim=8, seen_per_user=5, seed=2)
    searcher = ExactSearcher(bundle.item_vectors)
    # Each user watches their current favourite: it must leave their stored prefix.
    favourites = [int(scan_one(searcher, bundle.user_vectors, bundle.seen, u, 1)[0][0]) for u in range(20)]
    events = SeenEvents(
        offsets=np.arange(1, 21, dtype=np.int64),
        user_ids=np.array([user_id_of_row(u) for u in range(20)], dtype=np.int64),
        item_ids=np.array([10 * (f + 1) for f in favourites], dtype=np.int64),
        ratings=np.full(20, np.nan),
        times=np.zeros(20, dtype=np.int64),
    )
    version = write_store(tmp_path, bundle, ranked_depth=12, new_events=events)
    served = open_index(version, ranked_depth=12)
    assert served.ranked is not None and served.ranked.stored
    for user, favourite in enumerate(favourites):
        assert favourite not in served.ranked.rows[user].tolist()
    assert_serves_like_the_scan(version, 12)


def test_a_version_without_stored_prefixes_still_loads_and_computes_them(tmp_path: Path) -> None:
    version = write_store(tmp_path, ranked_depth=0)
    assert "ranked" not in read_manifest(version, "index").meta
    assert not any((version / name).exists() for name in RANKED_FILES)
    served = open_index(version, ranked_depth=16)
    assert served.ranked is not None and not served.ranked.stored and served.ranked.depth == 16
    assert_serves_like_the_scan(version, 16)


def test_the_load_log_says_whether_the_prefixes_were_mapped_or_computed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from movierec.server.app import load_index

    caplog.set_level(logging.INFO, logger="movierec.server.app")
    for name, depth, how in (("stored", 16, "mapped from the version"), ("none", 0, "precomputed")):
        caplog.clear()
        load_index(write_store(tmp_path / name, ranked_depth=depth), ranked_depth=16)
        (line,) = [r.getMessage() for r in caplog.records if "rankings" in r.getMessage()]
        assert f"16 places of 50 users' rankings {how} (" in line, line


def test_an_hnsw_version_stores_no_prefixes(tmp_path: Path) -> None:
    version = write_store(tmp_path, kind="hnsw", ranked_depth=16)
    assert "ranked" not in read_manifest(version, "index").meta


def rewrite_manifest(version: Path, change: dict[str, object]) -> None:
    path = version / "manifest.json"
    raw = json.loads(path.read_text())
    raw["meta"]["ranked"].update(change)
    path.write_text(json.dumps(raw))


def test_prefixes_that_disagree_with_the_scan_are_recomputed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = write_store(tmp_path, ranked_depth=16)
    scores = np.load(version / RANKED_SCORES_FILE)
    scores[:, 0] = np.nextafter(scores[:, 0], np.float32(np.inf))  # one bit off: a checksum still catches it
    np.save(version / RANKED_SCORES_FILE, scores)
    with pytest.raises(BundleError, match="checksum"):
        open_index(version, ranked_depth=16)
    with caplog.at_level(logging.WARNING, logger="movierec.index.ranked"):
        served = open_index(version, verify=False, ranked_depth=16)
    assert served.ranked is not None and not served.ranked.stored
    assert "disagree with the scan" in caplog.text


def test_prefixes_of_another_ranking_rule_are_recomputed(tmp_path: Path) -> None:
    version = write_store(tmp_path, ranked_depth=16)
    rewrite_manifest(version, {"rule": 0})
    served = open_index(version, verify=False, ranked_depth=16)
    assert served.ranked is not None and not served.ranked.stored


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("unlisted", "present but not listed"),
        ("half", "half recorded"),
        ("depth", "ranked.depth"),
        ("shape", "shapes"),
        ("rows", "rows outside"),
    ],
)
def test_a_bad_stored_prefix_is_a_bundle_error(tmp_path: Path, damage: str, message: str) -> None:
    if damage == "unlisted":
        version = write_store(tmp_path, ranked_depth=0)
        np.save(version / RANKED_ROWS_FILE, np.zeros((50, 4), dtype=np.int32))
    else:
        version = write_store(tmp_path, ranked_depth=16)
    path = version / "manifest.json"
    raw = json.loads(path.read_text())
    if damage == "half":
        del raw["files"][RANKED_LENGTHS_FILE]
    elif damage == "depth":
        raw["meta"]["ranked"]["depth"] = "16"
    elif damage == "shape":
        np.save(version / RANKED_LENGTHS_FILE, np.zeros(49, dtype=np.int32))
    elif damage == "rows":
        rows = np.load(version / RANKED_ROWS_FILE)
        rows[3, 0] = 120
        np.save(version / RANKED_ROWS_FILE, rows)
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=message):
        open_index(version, verify=False, ranked_depth=16)


def test_the_chunk_follows_the_memory_budget() -> None:
    assert chunk_users(20_000, 256 * 2**20, 2) == 256 * 2**20 // 2 // (20_000 * 12)
    assert chunk_users(20_000, 1, 4) == 1  # never below one user
    assert chunk_users(10, 2**40, 1) == 2048  # nor above the cap
    with pytest.raises(ValueError, match="memory_budget"):
        chunk_users(10, 0, 1)
