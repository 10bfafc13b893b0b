"""Answer recommendation requests from one loaded index, independent of gRPC plumbing.

The engine validates each request (k range, exclusion limit, filter, known
user), runs the exact top-k through :class:`movierec.index.ServingIndex` and
turns item rows into wire items. Requests are answered in batches so the
stream can fold many users into one matrix product; a request that fails
validation becomes a :class:`RequestError` in its slot and never spoils the
others.

Live events (the interaction log) are read per request, not baked into the
engine: the log is shared by every index version the server swaps in, and an
event recorded a moment ago must already be excluded from the next answer. A
user the model never saw but who has liked items (live or compacted events)
is answered from a fold-in vector (:mod:`movierec.index.fold_in`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from movierec.index import FilterError, ItemFilter, Recommendation, ServingIndex
from movierec.index.diversify import check_diversity
from movierec.server.admission import count_error, size_error
from movierec.server.errors import RequestError, invalid_argument, not_found
from movierec.server.limits import Limits
from movierec.server.live_events import LiveEventStore
from movierec.v1 import recommender_pb2 as pb


class RecommendQuery(Protocol):
    """The fields RecommendRequest and RecommendStreamRequest share."""

    @property
    def request_id(self) -> str: ...
    @property
    def user_id(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def exclude_item_ids(self) -> Sequence[int]: ...
    @property
    def filter(self) -> pb.ItemFilter: ...
    @property
    def explain(self) -> bool: ...
    @property
    def diversity(self) -> float: ...


@dataclass(frozen=True)
class Answer(Recommendation):
    """The server's answer to one query: a :class:`Recommendation` plus, when the request asked (``explain``),
    the user's item behind each recommended one (-1: none)."""

    because: npt.NDArray[np.int32] | None = None


@dataclass(frozen=True)
class _Valid:
    """A validated query: a model user (``user_row``) or a fold-in user (``liked_rows``), and its exclusions."""

    slot: int
    k: int
    item_filter: ItemFilter | None
    exclude_rows: npt.NDArray[np.int32]
    user_row: int | None
    liked_rows: npt.NDArray[np.int32]
    explain: bool
    diversity: float = 0.0


_NO_ROWS: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)
_NO_IDS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)


def item_filter_of(message: pb.ItemFilter, max_genres: int) -> ItemFilter | None:
    """The index filter a request asks for (None: no condition); INVALID_ARGUMENT for an impossible one.

    A genre list longer than ``max_genres`` is refused by its length, before a set is built of it.
    """
    if not message.ByteSize():  # the common case: no filter at all
        return None
    for name, names in (("include_genres", message.include_genres), ("exclude_genres", message.exclude_genres)):
        if len(names) > max_genres:
            raise invalid_argument(
                "filter",
                f"filter.{name} has {len(names):,} names; at most {max_genres} are allowed "
                "(the catalog's genres, GetInfo lists them)",
            )
    try:
        return ItemFilter(
            include_genres=frozenset(message.include_genres),
            exclude_genres=frozenset(message.exclude_genres),
            min_year=message.min_year if message.HasField("min_year") else None,
            max_year=message.max_year if message.HasField("max_year") else None,
        )
    except FilterError as error:
        raise invalid_argument("filter", str(error)) from None


class ServingEngine:
    """Everything one index version needs to answer requests; immutable once built, so swapping is atomic."""

    def __init__(self, index: ServingIndex, limits: Limits, live: LiveEventStore | None = None) -> None:
        """``live``: the store of events not yet compacted into ``index`` (None: the server keeps none)."""
        self.index = index
        self.limits = limits
        self.live = live
        self.index_version = index.index_version
        self.model_version = index.model_version
        # Genre names one filter list may carry: never more than the catalog has (duplicates are pointless).
        self._max_filter_genres = min(limits.max_filter_genres, len(index.genres))
        # One ready-made wire item per catalogue row (id, title, genres, year): a response copies
        # k of them and sets score and rank, which is cheaper than building each item field by field.
        self._templates = [
            pb.RecommendedItem(item_id=item.item_id, title=item.title, genres=item.genres, year=item.year)
            for item in index.catalog()
        ]

    def recommend(self, queries: Sequence[RecommendQuery]) -> list[Answer | RequestError]:
        """One answer per query, same order; valid queries with the same k, filter and diversity share one search."""
        answers: dict[int, Answer | RequestError] = {}
        groups: dict[tuple[int, ItemFilter | None, bool, float], list[_Valid]] = defaultdict(list)
        for slot, query in enumerate(queries):
            try:
                valid = self._validate(slot, query)
            except RequestError as error:
                answers[slot] = error
                continue
            groups[valid.k, valid.item_filter, valid.user_row is None, valid.diversity].append(valid)
        for (k, item_filter, folded, diversity), group in groups.items():
            search = self._fold_in_search if folded else self._model_search
            results = search(group, k, item_filter, diversity)
            for valid, result in zip(group, results, strict=True):
                answers[valid.slot] = Answer(result.item_rows, result.scores, self._because(valid, result))
        return [answers[slot] for slot in range(len(queries))]

    def recommend_for_items(self, request: pb.RecommendForItemsRequest) -> Answer:
        """Cold start: fold the liked items into a user vector; never recommends them back."""
        self._check_sizes(request)
        self._check_k(request.k)
        if not request.item_ids:
            raise invalid_argument("item_ids", "item_ids is empty: give at least one liked movie")
        error = count_error("item_ids", len(request.item_ids), self.limits.max_exclude_item_ids, "max_exclude_item_ids")
        if error is not None:
            raise error
        item_filter = self._filter(request.filter)
        liked = self.index.item_rows(request.item_ids)
        if liked.size == 0:
            raise RequestError(grpc.StatusCode.NOT_FOUND, "none of the item_ids is a movie the model knows")
        exclude = np.concatenate([liked, self.index.item_rows(request.exclude_item_ids)])
        valid = _Valid(0, request.k, item_filter, exclude, None, liked, request.explain)
        (result,) = self._fold_in_search([valid], request.k, item_filter)
        return Answer(result.item_rows, result.scores, self._because(valid, result))

    def similar_items(self, request: pb.SimilarItemsRequest) -> Recommendation:
        """Nearest items to ``request.item_id``, minus the item, the user's seen items and the exclusions."""
        self._check_sizes(request)
        self._check_k(request.k)
        item_filter = self._filter(request.filter)
        item_rows = self.index.item_rows([request.item_id])
        if item_rows.size == 0:
            raise not_found("item", request.item_id)
        excluded = [self.index.item_rows(request.exclude_item_ids)]
        if request.HasField("user_id"):
            user_row = self.index.user_row(request.user_id)
            if user_row is not None:
                excluded.append(self.index.seen_rows(user_row).astype(np.int32))
            elif not self._known_by_events(request.user_id):
                raise not_found("user", request.user_id)
            excluded.append(self._live_seen_rows(request.user_id, user_row))
        return self.index.similar_items(
            int(item_rows[0]), request.k, exclude=np.concatenate(excluded), item_filter=item_filter
        )

    def write_items(
        self,
        items: RepeatedCompositeFieldContainer[pb.RecommendedItem],
        result: Recommendation,
    ) -> None:
        """Append ``result`` to a response's ``items``, best first, with 1-based ranks (and ``because``)."""
        templates = self._templates
        rows = result.item_rows.tolist()
        for rank, (row, score) in enumerate(zip(rows, result.scores.tolist(), strict=True), 1):
            item = items.add()
            item.CopyFrom(templates[row])
            item.score = score
            item.rank = rank
        if isinstance(result, Answer) and result.because is not None:
            item_ids = self.index.item_ids
            for item, because in zip(items[len(items) - len(rows) :], result.because.tolist(), strict=True):
                if because >= 0:
                    item.because_item_id = int(item_ids[because])

    def check_recordable(self, item_ids: Sequence[int]) -> None:
        """INVALID_ARGUMENT naming a few of ``item_ids`` the served catalogue does not know (O(len) lookups):
        a watched event for a movie no version can recommend is a client's mistake, not something to store."""
        named = 5  # the message names this many of the unknown ids, so it stays short whatever was sent
        unknown = self.index.unknown_item_ids(item_ids)
        if unknown.size:
            shown = ", ".join(str(i) for i in unknown[:named].tolist())
            more = f" and {unknown.size - named} more" if unknown.size > named else ""
            raise invalid_argument(
                "item_ids",
                f"{unknown.size} item id(s) not in the served catalogue ({self.index_version}): {shown}{more}",
            )

    def info(self) -> pb.GetInfoResponse:
        index = self.index
        metrics = struct_pb2.Struct()
        metrics.update(index.metrics)
        return pb.GetInfoResponse(
            model_version=self.model_version,
            index_version=self.index_version,
            user_count=index.n_users,
            item_count=index.n_items,
            dimension=index.dim,
            index_kind=index.meta.kind,
            max_k=self.limits.max_k,
            max_exclude_item_ids=self.limits.max_exclude_item_ids,
            training_metrics=metrics,
            genres=index.genres,
            events_through=index.events_through,
        )

    def _model_search(
        self, group: list[_Valid], k: int, item_filter: ItemFilter | None, diversity: float = 0.0
    ) -> list[Recommendation]:
        extra = [v.exclude_rows for v in group]
        return self.index.recommend(
            [v.user_row for v in group if v.user_row is not None],
            k,
            extra_exclude=extra if any(e.size for e in extra) else None,
            item_filter=item_filter,
            diversity=diversity,
        )

    def _fold_in_search(
        self, group: list[_Valid], k: int, item_filter: ItemFilter | None, diversity: float = 0.0
    ) -> list[Recommendation]:
        vectors = np.stack([self.index.fold_in_vector(v.liked_rows) for v in group])
        exclude = [v.exclude_rows for v in group]
        return self.index.recommend_vectors(vectors, k, exclude, item_filter=item_filter, diversity=diversity)

    def _because(self, valid: _Valid, result: Recommendation) -> npt.NDArray[np.int32] | None:
        if not valid.explain:
            return None
        if valid.user_row is None:
            return self.index.because_of(valid.liked_rows, result.item_rows)
        return self.index.because(valid.user_row, result.item_rows)

    def _validate(self, slot: int, query: RecommendQuery) -> _Valid:
        self._check_sizes(query)
        self._check_k(query.k)
        diversity = self._check_diversity(query.diversity)
        item_filter = self._filter(query.filter)
        exclude_rows = self.index.item_rows(query.exclude_item_ids)
        user_id = query.user_id
        user_row = self.index.user_row(user_id)
        live_rows = self._live_seen_rows(user_id, user_row)
        if live_rows.size:
            exclude_rows = np.concatenate([exclude_rows, live_rows]) if exclude_rows.size else live_rows
        if user_row is not None:
            return _Valid(slot, query.k, item_filter, exclude_rows, user_row, _NO_ROWS, query.explain, diversity)
        liked = self.index.item_rows(self._liked_ids(user_id))
        if liked.size == 0:
            if self._known_by_events(user_id):
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"user id {user_id} is not in the model and has no liked movie the model knows to start from",
                    not_found("user", user_id).details,
                )
            raise not_found("user", user_id)
        return _Valid(slot, query.k, item_filter, exclude_rows, None, liked, query.explain, diversity)

    def _live_seen_rows(self, user_id: int, user_row: int | None) -> npt.NDArray[np.int32]:
        """Rows of the user's live events, plus their compacted ones when the model cannot hold them."""
        seen = _NO_IDS if self.live is None else self.live.extra_seen(user_id)
        if user_row is None:
            compacted = self.index.new_user_events(user_id)
            if compacted is not None:
                seen = np.concatenate([seen, compacted])
        return self.index.item_rows(seen)

    def _liked_ids(self, user_id: int) -> npt.NDArray[np.int64]:
        """Fold-in input of an unknown user: compacted events (no ratings survive compaction) and live likes."""
        liked = _NO_IDS if self.live is None else self.live.liked(user_id)
        compacted = self.index.new_user_events(user_id)
        return liked if compacted is None else np.union1d(liked, compacted)

    def _known_by_events(self, user_id: int) -> bool:
        if self.index.new_user_events(user_id) is not None:
            return True
        return self.live is not None and self.live.extra_seen(user_id).size > 0

    def _filter(self, message: pb.ItemFilter) -> ItemFilter | None:
        """The request's filter, checked against this catalogue (an unknown genre is INVALID_ARGUMENT)."""
        item_filter = item_filter_of(message, self._max_filter_genres)
        if item_filter is not None:
            try:
                self.index.allowed_items(item_filter)
            except FilterError as error:
                raise invalid_argument("filter", str(error)) from None
        return item_filter

    def _check_diversity(self, diversity: float) -> float:
        try:
            return check_diversity(diversity)
        except ValueError:
            raise invalid_argument("diversity", f"diversity must be between 0 and 1, got {diversity}") from None

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.limits.max_k:
            raise invalid_argument("k", f"k must be between 1 and {self.limits.max_k}, got {k}")

    def _check_sizes(self, query: RecommendQuery | pb.SimilarItemsRequest | pb.RecommendForItemsRequest) -> None:
        """Lists and request_id within the limits, checked by length alone (O(1)) before any other work."""
        error = size_error(query, self.limits)
        if error is not None:
            raise error
