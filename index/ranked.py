"""Each user's exact ranking of unseen items, its first ``depth`` places computed when the index version is built.

Why: a single-user search is one matrix-vector product over every item vector
plus a partition, yet a model user's answer only ever changes with ``k`` and
with the request's extra exclusions (its own ``exclude_item_ids`` and live
events). Both are applied to a stored prefix in microseconds:

    top-k(catalog − seen − extra) = the first k items of prefix(u) that are not in extra,

whenever at least ``k`` such items remain, because every item outside the
prefix ranks below every item inside it (score descending, ties to the lower
item row: the ranking rule of :mod:`movierec.index.topk`, which also built the
prefix). A prefix shorter than ``depth`` holds *all* of the user's unseen
items, so it answers any request. Otherwise (k beyond what is left of the
prefix) the caller falls back to the full scan: exactness never depends on the
cache, only speed does.

Bit for bit: the prefixes come from the very search a request's scan runs
(:meth:`ExactSearcher.search`), many users per call. Its scores do not depend
on the batch (see "Scores" in :mod:`movierec.index.topk`), so a prefix holds
the same items and the same float32 scores as a later single-user scan, on this
machine or any other.

When: ``recctl index build`` writes them into the version (:func:`write_prefixes`,
after the version's compacted events are merged into the seen sets), as three
``.npy`` files the manifest lists and checksums; a server memory-maps them
(:meth:`RankedPrefixes.for_version`), so the workers of one host share one copy
in the page cache and a hot swap costs a checksum pass, not a recomputation.
A version built before they existed (or under another ranking rule) has them
computed at load, by the same batched build. The build scores users in chunks
(one BLAS product each, sized from a memory budget) on several threads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from movierec.bundle import MANIFEST_NAME, read_manifest
from movierec.bundle.csr import CSR
from movierec.bundle.manifest import listed_file
from movierec.bundle.npy import read_npy
from movierec.errors import BundleError
from movierec.index.layout import INDEX_KIND, RANKED_LENGTHS_FILE, RANKED_ROWS_FILE, RANKED_SCORES_FILE
from movierec.index.topk import ExactSearcher, Recommendation

logger = logging.getLogger(__name__)

# Bytes one stored place costs: an int32 item row and a float32 score.
BYTES_PER_PLACE = 8
# The prefixes of all users together stay under this (1 GiB: 256 places for 500,000 users); a catalogue
# with more users gets shorter prefixes, and none below MIN_USEFUL_DEPTH, where most requests would scan.
MAX_BYTES = 1 << 30
MIN_USEFUL_DEPTH = 16
# Places built per user by default: the server's default depth (256 places cover k up to 256 with room for
# the request's own exclusions).
DEFAULT_DEPTH = 256
# The ranking rule stored prefixes follow (scores summed in dimension order, ties to the lower row). A version
# whose prefixes name another rule has them recomputed at load instead of trusted.
RANKING_RULE = 1
# Working memory of the build: each thread's chunk holds its BLAS scores, the partition's copy and masks,
# about this many bytes per (user, item) cell.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
WORKING_BYTES_PER_SCORE = 12
MAX_CHUNK_USERS = 2048
# Users whose stored prefixes are recomputed at load and compared bit for bit (evenly spread, first and last).
LOAD_CHECK_USERS = 32
RANKED_FILES = (RANKED_ROWS_FILE, RANKED_SCORES_FILE, RANKED_LENGTHS_FILE)


def affordable_depth(n_users: int, n_items: int, wanted: int) -> int:
    """The depth to build: ``wanted``, at most the catalogue, cut to fit :data:`MAX_BYTES`; 0 = none."""
    depth = min(wanted, n_items, MAX_BYTES // max(1, n_users * BYTES_PER_PLACE))
    return depth if depth >= min(MIN_USEFUL_DEPTH, wanted, n_items) and depth > 0 else 0


def default_workers() -> int:
    """Threads for a build: the cores this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def chunk_users(n_items: int, memory_budget: int, workers: int) -> int:
    """Users ranked per BLAS product: as many as let ``workers`` chunks fit ``memory_budget`` together."""
    if memory_budget < 1:
        raise ValueError("memory_budget must be positive")
    per_chunk = memory_budget // max(1, workers)
    return max(1, min(MAX_CHUNK_USERS, per_chunk // (max(1, n_items) * WORKING_BYTES_PER_SCORE)))


@dataclass(frozen=True)
class RankedPrefixes:
    """``rows[u, :lengths[u]]`` are user ``u``'s best unseen item rows in ranking order; ``scores`` align.

    ``stored`` tells prefixes memory-mapped from the version from ones computed in this process.
    """

    rows: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]
    lengths: npt.NDArray[np.int32]
    depth: int
    n_items: int
    stored: bool = False

    @classmethod
    def build(
        cls,
        searcher: ExactSearcher,
        user_vectors: npt.NDArray[np.float32],
        seen: CSR,
        depth: int,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        workers: int | None = None,
        on_progress: Callable[[int], object] | None = None,
    ) -> RankedPrefixes:
        """Rank every user's unseen items in memory, keeping the first ``depth`` (see :func:`rank_users_into`)."""
        n_users = int(user_vectors.shape[0])
        rows = np.empty((n_users, depth), dtype=np.int32)
        scores = np.empty((n_users, depth), dtype=np.float32)
        lengths = np.empty(n_users, dtype=np.int32)
        rank_users_into(
            rows,
            scores,
            lengths,
            searcher,
            user_vectors,
            seen,
            memory_budget=memory_budget,
            workers=workers,
            on_progress=on_progress,
        )
        return cls(rows, scores, lengths, depth, searcher.n_items)

    @classmethod
    def for_version(
        cls,
        directory: Path,
        searcher: ExactSearcher,
        user_vectors: npt.NDArray[np.float32],
        seen: CSR,
        depth: int,
    ) -> RankedPrefixes:
        """The version's stored prefixes (memory-mapped, cut to at most ``depth`` places: a version stores the
        depth its build chose; spot-checked against the scan), or, for a version without them (or of another
        ranking rule), ``depth`` places computed now by the batched build."""
        stored = read_stored(Path(directory), int(user_vectors.shape[0]), searcher.n_items)
        if stored is not None:
            cut = stored.cut(depth)
            if cut.agrees_with_scan(searcher, user_vectors, seen):
                return cut
            logger.warning(
                "index %s: stored ranked prefixes disagree with the scan; recomputing them", Path(directory).name
            )
        return cls.build(searcher, user_vectors, seen, depth)

    def cut(self, depth: int) -> RankedPrefixes:
        """The first ``depth`` places (views, no copy); a prefix cut short may no longer hold every unseen item,
        which :meth:`answer` handles as any full-length prefix."""
        if depth >= self.depth:
            return self
        lengths = np.minimum(self.lengths, depth).astype(np.int32)
        return RankedPrefixes(self.rows[:, :depth], self.scores[:, :depth], lengths, depth, self.n_items, self.stored)

    def agrees_with_scan(
        self, searcher: ExactSearcher, user_vectors: npt.NDArray[np.float32], seen: CSR, users: int = LOAD_CHECK_USERS
    ) -> bool:
        """Whether a spread of users' prefixes are exactly what the scan computes here and now."""
        n_users = int(user_vectors.shape[0])
        if n_users == 0:
            return True
        sample = np.unique(np.linspace(0, n_users - 1, num=min(users, n_users)).astype(np.int64))
        queries = np.ascontiguousarray(user_vectors[sample], dtype=np.float32)
        excluded = [seen.row(int(u)).astype(np.int64) for u in sample]
        for user, answer in zip(sample.tolist(), searcher.search(queries, self.depth, excluded), strict=True):
            length = int(self.lengths[user])
            if length != len(answer) or not (
                np.array_equal(self.rows[user, :length], answer.item_rows)
                and np.array_equal(self.scores[user, :length].view(np.int32), answer.scores.view(np.int32))
            ):
                return False
        return True

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.scores.nbytes + self.lengths.nbytes)

    def answer(self, user: int, k: int, extra: npt.NDArray[np.int64] | None = None) -> Recommendation | None:
        """The exact top-``k`` of ``user`` minus ``extra`` (validated item rows), or None when the prefix
        cannot decide it (fewer than ``k`` items of it survive and it does not hold every unseen item)."""
        length = int(self.lengths[user])
        rows = self.rows[user, :length]
        scores = self.scores[user, :length]
        if extra is not None and extra.size:
            blocked = np.zeros(self.n_items, dtype=bool)
            blocked[extra] = True
            kept = ~blocked[rows]
            rows, scores = rows[kept], scores[kept]
        if rows.shape[0] < k and length == self.depth:
            return None
        return Recommendation(np.array(rows[:k]), np.array(scores[:k]))


def rank_users_into(
    rows: npt.NDArray[np.int32],
    scores: npt.NDArray[np.float32],
    lengths: npt.NDArray[np.int32],
    searcher: ExactSearcher,
    user_vectors: npt.NDArray[np.float32],
    seen: CSR,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    workers: int | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> None:
    """Fill ``rows``/``scores`` (users x depth; -1 / -inf past each user's length) and ``lengths`` with every
    user's top ``depth`` unseen items: chunks of users, each one :meth:`ExactSearcher.search` call (one BLAS
    product), on ``workers`` threads with one BLAS thread each. ``on_progress(users)`` after each chunk."""
    n_users, depth = rows.shape
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if scores.shape != rows.shape or lengths.shape != (n_users,) or user_vectors.shape[0] != n_users:
        raise ValueError("rows, scores, lengths and user_vectors must agree on the users and the depth")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    step = chunk_users(searcher.n_items, memory_budget, workers)
    queries = np.ascontiguousarray(user_vectors, dtype=np.float32)

    def rank_chunk(start: int) -> int:
        stop = min(n_users, start + step)
        excluded = [seen.row(user).astype(np.int64) for user in range(start, stop)]
        answers = searcher.search(queries[start:stop], depth, excluded)
        rows[start:stop] = -1
        scores[start:stop] = -np.inf
        for user, answer in enumerate(answers, start=start):
            count = len(answer)
            rows[user, :count] = answer.item_rows
            scores[user, :count] = answer.scores
            lengths[user] = count
        return int(stop - start)

    starts = range(0, n_users, step)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(rank_chunk, starts):
            if on_progress is not None:
                on_progress(done)


def write_prefixes(
    directory: Path,
    searcher: ExactSearcher,
    user_vectors: npt.NDArray[np.float32],
    seen: CSR,
    depth: int,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    workers: int | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Write every user's first ``depth`` places into ``directory`` (written straight to the files, so the
    build holds only its chunks in memory); return the manifest's ``ranked`` block."""
    started = time.perf_counter()
    n_users = int(user_vectors.shape[0])
    open_memmap = np.lib.format.open_memmap
    rows = open_memmap(directory / RANKED_ROWS_FILE, mode="w+", dtype=np.int32, shape=(n_users, depth))
    scores = open_memmap(directory / RANKED_SCORES_FILE, mode="w+", dtype=np.float32, shape=(n_users, depth))
    lengths = open_memmap(directory / RANKED_LENGTHS_FILE, mode="w+", dtype=np.int32, shape=(n_users,))
    rank_users_into(
        rows,
        scores,
        lengths,
        searcher,
        user_vectors,
        seen,
        memory_budget=memory_budget,
        workers=workers,
        on_progress=on_progress,
    )
    for array in (rows, scores, lengths):
        array.flush()
    stored_bytes = sum((directory / name).stat().st_size for name in RANKED_FILES)
    del rows, scores, lengths
    return {
        "depth": depth,
        "rule": RANKING_RULE,
        "bytes": stored_bytes,
        "seconds": round(time.perf_counter() - started, 3),
    }


def read_stored(directory: Path, n_users: int, n_items: int) -> RankedPrefixes | None:
    """The prefixes ``directory`` holds, memory-mapped read-only; None for a version without them (or under
    another ranking rule). Files the manifest does not list, a bad ``ranked`` block, or arrays of the wrong
    type, shape or range are a :class:`BundleError` (the checksums were verified when the version was opened)."""
    if not (directory / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(directory, INDEX_KIND, verify=False)
    block = manifest.meta.get("ranked")
    listed = [name in manifest.files for name in RANKED_FILES]
    if block is None and not any(listed):
        present = [name for name in RANKED_FILES if (directory / name).exists()]
        if present:
            raise BundleError(f"{', '.join(present)} present but not listed in the manifest", path=directory)
        return None
    where = directory / MANIFEST_NAME
    if not isinstance(block, dict) or not all(listed):
        raise BundleError(
            f"ranked prefixes half recorded: the manifest needs a ranked block and all of {', '.join(RANKED_FILES)}",
            path=where,
        )
    depth, rule = block.get("depth"), block.get("rule")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1 or not isinstance(rule, int):
        raise BundleError("index manifest: ranked.depth and ranked.rule must be integers, depth >= 1", path=where)
    if rule != RANKING_RULE:
        return None
    rows = read_npy(listed_file(manifest, directory, RANKED_ROWS_FILE), np.int32, 2, mmap=True)
    scores = read_npy(listed_file(manifest, directory, RANKED_SCORES_FILE), np.float32, 2, mmap=True)
    lengths = read_npy(listed_file(manifest, directory, RANKED_LENGTHS_FILE), np.int32, 1, mmap=False)
    if rows.shape != (n_users, depth) or scores.shape != (n_users, depth) or lengths.shape != (n_users,):
        raise BundleError(
            f"ranked prefixes hold shapes {rows.shape}, {scores.shape}, {lengths.shape}; expected "
            f"({n_users}, {depth}) twice and ({n_users},)",
            path=directory,
        )
    if lengths.size and (lengths.min() < 0 or lengths.max() > depth):
        raise BundleError(f"ranked prefix lengths outside [0, {depth}]", path=directory / RANKED_LENGTHS_FILE)
    if rows.size and (rows.min() < -1 or rows.max() >= n_items):
        raise BundleError(f"ranked prefix rows outside [-1, {n_items})", path=directory / RANKED_ROWS_FILE)
    return RankedPrefixes(rows, scores, lengths, depth, n_items, stored=True)
