"""A small synchronous client for ``movierec.v1.RecommenderService``.

Callers get plain frozen dataclasses (no protobuf types leak out) and
exceptions named after what went wrong, each carrying the gRPC status code;
every call has a deadline, so a dead server never hangs a caller.

    with RecommenderClient("127.0.0.1:50051") as client:
        for item in client.recommend(user_id=1, k=10).items:
            print(item.rank, item.title)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RecommendedItem:
    item_id: int
    score: float
    rank: int
    title: str
    genres: tuple[str, ...]
    year: int | None


@dataclass(frozen=True)
class Recommendations:
    """One answer, best item first, with the versions that produced it."""

    request_id: str
    items: tuple[RecommendedItem, ...]
    model_version: str
    index_version: str


@dataclass(frozen=True)
class StreamQuery:
    """One request on :meth:`RecommenderClient.recommend_stream`; ``request_id`` pairs it with its answer."""

    request_id: str
    user_id: int
    k: int = 10
    exclude_item_ids: Sequence[int] = ()


@dataclass(frozen=True)
class ServerInfo:
    model_version: str
    index_version: str
    user_count: int
    item_count: int
    dimension: int
    index_kind: str
    max_k: int
    max_exclude_item_ids: int
    training_metrics: dict[str, Any] = field(default_factory=dict)


class RecommenderError(Exception):
    """A call failed; ``code`` is the gRPC status, ``field`` the request field blamed by the server, if any."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id


class InvalidArgumentError(RecommenderError):
    """The request was malformed (k out of range, too many exclusions)."""


class NotFoundError(RecommenderError):
    """The user or item id is not in the served model."""


class ServerUnavailableError(RecommenderError):
    """No connection, or the server is still loading its index: retrying may help."""


class DeadlineExceededError(RecommenderError):
    """No answer within the timeout."""


_ERROR_TYPES: dict[grpc.StatusCode, type[RecommenderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def error_for(
    code: grpc.StatusCode, message: str, *, field: str | None = None, request_id: str = ""
) -> RecommenderError:
    """The most specific :class:`RecommenderError` subclass for ``code``."""
    return _ERROR_TYPES.get(code, RecommenderError)(code, message, field=field, request_id=request_id)


class RecommenderClient:
    """Blocking client over one channel; thread-safe, like the gRPC channel under it.

    ``timeout`` (seconds) is the default deadline of every unary call; each
    method accepts its own. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: int,
        k: int = 10,
        exclude_item_ids: Iterable[int] = (),
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Recommendations:
        request = pb.RecommendRequest(
            request_id=request_id, user_id=user_id, k=k, exclude_item_ids=list(exclude_item_ids)
        )
        response = self._call(self._stub.Recommend, request, timeout)
        return _recommendations(response)

    def recommend_stream(
        self, queries: Iterable[StreamQuery], *, timeout: float | None = None
    ) -> Iterator[Recommendations | RecommenderError]:
        """Send ``queries`` over one stream, yielding one result per query in order.

        A query the server rejects yields a :class:`RecommenderError` (with its
        ``request_id``) and the stream continues; a failure of the stream itself
        raises. ``timeout`` bounds the whole stream (default: none).
        """
        requests = (
            pb.RecommendStreamRequest(
                request_id=q.request_id, user_id=q.user_id, k=q.k, exclude_item_ids=list(q.exclude_item_ids)
            )
            for q in queries
        )
        responses = self._stub.RecommendStream(requests, timeout=timeout)
        try:
            for response in responses:
                if response.HasField("error") and response.error.code != grpc.StatusCode.OK.value[0]:
                    yield _error_from_status(response.error, response.request_id)
                else:
                    yield _recommendations(response)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        finally:
            responses.cancel()  # type: ignore[no-untyped-call]  # stops the call if the caller stops early

    def similar_items(
        self,
        item_id: int,
        k: int = 10,
        *,
        user_id: int | None = None,
        exclude_item_ids: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Recommendations:
        request = pb.SimilarItemsRequest(item_id=item_id, k=k, exclude_item_ids=list(exclude_item_ids))
        if user_id is not None:
            request.user_id = user_id
        return _recommendations(self._call(self._stub.SimilarItems, request, timeout))

    def info(self, *, timeout: float | None = None) -> ServerInfo:
        response: pb.GetInfoResponse = self._call(self._stub.GetInfo, pb.GetInfoRequest(), timeout)
        return ServerInfo(
            model_version=response.model_version,
            index_version=response.index_version,
            user_count=response.user_count,
            item_count=response.item_count,
            dimension=response.dimension,
            index_kind=response.index_kind,
            max_k=response.max_k,
            max_exclude_item_ids=response.max_exclude_item_ids,
            training_metrics=json_format.MessageToDict(response.training_metrics),
        )

    def is_serving(self, *, timeout: float | None = None) -> bool:
        """Whether the server's health service says SERVING (False while it loads or drains)."""
        response: health_pb2.HealthCheckResponse = self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=""), timeout
        )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_until_serving(self, timeout: float, *, poll_seconds: float = 0.05) -> None:
        """Block until SERVING; raises :class:`ServerUnavailableError` when ``timeout`` runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnavailableError(
                    grpc.StatusCode.UNAVAILABLE, f"server at {self.target} not SERVING after {timeout:g}s"
                )
            try:
                if self.is_serving(timeout=min(remaining, 1.0)):
                    return
            except (ServerUnavailableError, DeadlineExceededError):
                pass
            time.sleep(poll_seconds)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: grpc.RpcError) -> RecommenderError:
        """The typed error for a failed call, with the field named by google.rpc BadRequest details."""
        assert isinstance(exc, grpc.Call)  # every RpcError raised by a channel call is also a Call
        status = rpc_status.from_call(exc)
        if status is not None:
            return _error_from_status(status, "")
        return error_for(exc.code(), exc.details() or "")


def _error_from_status(status: status_pb2.Status, request_id: str) -> RecommenderError:
    """A :class:`RecommenderError` from a ``google.rpc.Status`` (call trailers or a stream message)."""
    field_name = None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            field_name = bad_request.field_violations[0].field
    return error_for(_status_code(status.code), status.message, field=field_name, request_id=request_id)


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _item(item: pb.RecommendedItem) -> RecommendedItem:
    return RecommendedItem(
        item_id=item.item_id,
        score=item.score,
        rank=item.rank,
        title=item.title,
        genres=tuple(item.genres),
        year=item.year if item.HasField("year") else None,
    )


def _recommendations(response: Any) -> Recommendations:
    return Recommendations(
        request_id=response.request_id,
        items=tuple(_item(item) for item in response.items),
        model_version=response.model_version,
        index_version=response.index_version,
    )
