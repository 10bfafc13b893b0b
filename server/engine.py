"""Answer recommendation requests from one loaded index, independent of gRPC plumbing.

The engine validates each request (k range, exclusion limit, known user),
runs the exact top-k through :class:`movierec.index.ServingIndex` and turns
item rows into wire items. Requests are answered in batches so the stream can
fold many users into one matrix product; a request that fails validation
becomes a :class:`RequestError` in its slot and never spoils the others.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from movierec.index import Recommendation, ServingIndex
from movierec.server.errors import RequestError, invalid_argument, not_found
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb


class RecommendQuery(Protocol):
    """The fields RecommendRequest and RecommendStreamRequest share."""

    @property
    def user_id(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def exclude_item_ids(self) -> Sequence[int]: ...


@dataclass(frozen=True)
class _Valid:
    """A validated query: internal user row and excluded item rows."""

    slot: int
    user_row: int
    k: int
    exclude_rows: npt.NDArray[np.int32]


Answer = Recommendation | RequestError
_NO_ROWS: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)
# Largest item id served through a dense id -> row table (64 MiB of int32); beyond it, binary search.
MAX_LOOKUP_IDS = 1 << 24


def model_version(index: ServingIndex) -> str:
    """``<model dir name>@<first 12 hex of its manifest SHA-256>``: readable, and unique per model content."""
    source = index.manifest.meta.get("source_model", {})
    name = PurePath(str(source.get("path", "model"))).name
    return f"{name}@{str(source.get('manifest_sha256', ''))[:12]}"


def _dense_lookup(item_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int32] | None:
    """``table[item_id] = row`` (-1 where no item has that id), or None when ids are too sparse for a table.

    A table lookup is one gather per id, where a binary search (``searchsorted``)
    costs a dozen unpredictable branches per id: it keeps a request with
    thousands of exclusions cheap. MovieLens movie ids are small, dense
    integers, so the table stays small (4 bytes per possible id).
    """
    if item_ids.size == 0 or item_ids.min() < 0 or item_ids.max() >= MAX_LOOKUP_IDS:
        return None
    table = np.full(int(item_ids.max()) + 1, -1, dtype=np.int32)
    table[item_ids] = np.arange(item_ids.size, dtype=np.int32)
    return table


class ServingEngine:
    """Everything one index version needs to answer requests; immutable once built, so swapping is atomic."""

    def __init__(self, index: ServingIndex, limits: Limits) -> None:
        self.index = index
        self.limits = limits
        self.index_version = str(index.version)
        self.model_version = model_version(index)
        self._item_lookup = _dense_lookup(index.model.item_ids)
        # One ready-made wire item per catalogue row (id, title, genres, year): a response copies
        # k of them and sets score and rank, which is cheaper than building each item field by field.
        items = index.model.items
        self._templates = [
            pb.RecommendedItem(item_id=item_id, title=title, genres=genres, year=year)
            for item_id, title, genres, year in zip(
                index.model.item_ids.tolist(), items.titles, items.genres, items.years, strict=True
            )
        ]

    def recommend(self, queries: Sequence[RecommendQuery]) -> list[Answer]:
        """One answer per query, same order; valid queries with the same k share one search."""
        answers: dict[int, Answer] = {}
        by_k: dict[int, list[_Valid]] = defaultdict(list)
        for slot, query in enumerate(queries):
            try:
                valid = self._validate(slot, query)
            except RequestError as error:
                answers[slot] = error
                continue
            by_k[valid.k].append(valid)
        for k, group in by_k.items():
            extra = [v.exclude_rows for v in group]
            results = self.index.recommend(
                [v.user_row for v in group], k, extra_exclude=extra if any(e.size for e in extra) else None
            )
            for valid, result in zip(group, results, strict=True):
                answers[valid.slot] = result
        return [answers[slot] for slot in range(len(queries))]

    def similar_items(self, request: pb.SimilarItemsRequest) -> Recommendation:
        """Nearest items to ``request.item_id``, minus the item, the user's seen items and the exclusions."""
        self._check_k(request.k)
        self._check_exclusions(request.exclude_item_ids)
        item_rows = self.index.item_rows([request.item_id])
        if item_rows.size == 0:
            raise not_found("item", request.item_id)
        excluded = [self._item_rows(request.exclude_item_ids)]
        if request.HasField("user_id"):
            user_row = self._user_row(request.user_id)
            excluded.append(self.index.seen_rows(user_row).astype(np.int32))
        return self.index.similar_items(int(item_rows[0]), request.k, exclude=np.concatenate(excluded))

    def write_items(self, items: RepeatedCompositeFieldContainer[pb.RecommendedItem], result: Recommendation) -> None:
        """Append ``result`` to a response's ``items``, best first, with 1-based ranks."""
        templates = self._templates
        for rank, (row, score) in enumerate(zip(result.item_rows.tolist(), result.scores.tolist(), strict=True), 1):
            item = items.add()
            item.CopyFrom(templates[row])
            item.score = score
            item.rank = rank

    def info(self) -> pb.GetInfoResponse:
        model = self.index.model
        metrics = struct_pb2.Struct()
        metrics.update(model.metrics)
        return pb.GetInfoResponse(
            model_version=self.model_version,
            index_version=self.index_version,
            user_count=model.n_users,
            item_count=model.n_items,
            dimension=model.dim,
            index_kind=str(self.index.kind),
            max_k=self.limits.max_k,
            max_exclude_item_ids=self.limits.max_exclude_item_ids,
            training_metrics=metrics,
        )

    def _validate(self, slot: int, query: RecommendQuery) -> _Valid:
        self._check_k(query.k)
        self._check_exclusions(query.exclude_item_ids)
        user_row = self._user_row(query.user_id)
        exclude_rows = self._item_rows(query.exclude_item_ids)
        return _Valid(slot, user_row, query.k, exclude_rows)

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.limits.max_k:
            raise invalid_argument("k", f"k must be between 1 and {self.limits.max_k}, got {k}")

    def _check_exclusions(self, exclude_item_ids: Sequence[int]) -> None:
        limit = self.limits.max_exclude_item_ids
        if len(exclude_item_ids) > limit:
            raise invalid_argument(
                "exclude_item_ids",
                f"at most {limit} exclude_item_ids are allowed (max_exclude_item_ids), got {len(exclude_item_ids)}",
            )

    def _item_rows(self, item_ids: Sequence[int]) -> npt.NDArray[np.int32]:
        """Rows of the known ids; unknown ids are dropped, as excluding a movie never recommended is a no-op.

        ``np.array`` reads a protobuf repeated field directly, far cheaper than going through a list.
        """
        if not item_ids:  # the common case: skip the id lookup altogether
            return _NO_ROWS
        wanted = np.array(item_ids, dtype=np.int64)
        if self._item_lookup is None:
            return self.index.item_rows(wanted)
        wanted = wanted[(wanted >= 0) & (wanted < self._item_lookup.shape[0])]
        rows = self._item_lookup[wanted]
        return rows[rows >= 0]

    def _user_row(self, user_id: int) -> int:
        row = self.index.user_row(user_id)
        if row is None:
            raise not_found("user", user_id)
        return row
