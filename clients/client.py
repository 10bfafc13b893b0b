"""A small synchronous client for ``movierec.v1.RecommenderService``.

Callers get plain frozen dataclasses (no protobuf types leak out) and
exceptions named after what went wrong, each carrying the gRPC status code;
every call has a deadline, so a dead server never hangs a caller. It speaks
only the wire: it imports the generated messages and :mod:`movierec.security`,
never the server, index or trainer (a test checks it in a fresh interpreter).

    with RecommenderClient("127.0.0.1:50051") as client:
        for item in client.recommend(user_id=1, k=10).items:
            print(item.rank, item.title)

Replicas: give several addresses (``["10.0.0.1:50051", "10.0.0.2:50051"]``) or
one DNS name that resolves to all of them (``dns:///recommender:50051``, e.g.
a Kubernetes headless service). The channel spreads calls over every replica
(gRPC's ``round_robin``) and retries a call that failed with UNAVAILABLE (a
replica killed or draining) on another, from the gRPC service config
(:func:`service_config`): no code of ours decides where a call goes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from movierec.item_filter import ItemFilter as ItemFilter  # re-exported: the client API keeps the name
from movierec.security import bearer_metadata, channel_credentials
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 5.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_RETRY_ATTEMPTS = 5
# Answers of a RecommendBatch at its cap (1,000 users x k items) outgrow gRPC's 4 MiB default.
MAX_RECEIVE_BYTES = 64 * 2**20
QueryMessage = TypeVar("QueryMessage", pb.RecommendRequest, pb.RecommendStreamRequest)


@dataclass(frozen=True)
class RecommendedItem:
    item_id: int
    score: float
    rank: int
    title: str
    genres: tuple[str, ...]
    year: int | None
    # Asked with explain: the user's movie that contributes most to this score (None: none / not asked).
    because_item_id: int | None = None


@dataclass(frozen=True)
class Recorded:
    """Acknowledgement of :meth:`RecommenderClient.record_interactions`: the events are durable."""

    offset: int
    recorded: int


@dataclass(frozen=True)
class ReloadResult:
    swapped: bool
    index_version: str
    model_version: str
    error: str


@dataclass(frozen=True)
class Recommendations:
    """One answer, best item first, with the versions that produced it."""

    request_id: str
    items: tuple[RecommendedItem, ...]
    model_version: str
    index_version: str


@dataclass(frozen=True)
class StreamQuery:
    """One recommend query: each request of :meth:`RecommenderClient.recommend_stream` (and what
    :meth:`~RecommenderClient.recommend` sends); ``request_id`` pairs it with its answer."""

    request_id: str
    user_id: int
    k: int = 10
    exclude_item_ids: Sequence[int] = ()
    item_filter: ItemFilter | None = None
    explain: bool = False
    diversity: float = 0.0
    """0..1: re-rank for movies unlike each other (the server's MMR re-ranking); 0 = the exact top-k."""


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
    swap_count: int = 0
    last_reload_error: str = ""
    last_refused_version: str = ""
    genres: tuple[str, ...] = ()
    events_through: int = 0
    events_last_offset: int = 0
    max_batch_size: int = 0


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


class UnauthenticatedError(RecommenderError):
    """The server wants a bearer token (``token``) and got none or a wrong one."""


_ERROR_TYPES: dict[grpc.StatusCode, type[RecommenderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_for(
    code: grpc.StatusCode, message: str, *, field: str | None = None, request_id: str = ""
) -> RecommenderError:
    """The most specific :class:`RecommenderError` subclass for ``code``."""
    return _ERROR_TYPES.get(code, RecommenderError)(code, message, field=field, request_id=request_id)


class RecommenderClient:
    """Blocking client over one channel; thread-safe, like the gRPC channel under it.

    ``target`` is one ``HOST:PORT``, a gRPC target URI (``dns:///NAME:PORT``
    resolving to every replica), or a list of ``HOST:PORT`` replicas; calls
    are spread round-robin and a call that fails with UNAVAILABLE is retried
    up to ``retry_attempts`` times in all (see :func:`service_config`).
    ``timeout`` (seconds) is the default deadline of every unary call,
    retries included; each method accepts its own. ``tls_ca`` (a PEM file)
    makes the channel TLS, trusting that CA; ``token`` is sent as
    ``authorization: Bearer`` on every call. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls_ca: Path | None = None,
        token: str | None = None,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
    ) -> None:
        self.target = target if isinstance(target, str) else ",".join(target)
        self.timeout = timeout
        self._metadata = bearer_metadata(token) if token is not None else None
        channel_target, authority = channel_target_of(target)
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(retry_attempts)),
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ]
        if authority is not None:  # TLS checks the certificate against the name the caller gave, not an address
            options.append(("grpc.default_authority", authority))
        if tls_ca is None:
            self._channel = grpc.insecure_channel(channel_target, options=options)
        else:
            self._channel = grpc.secure_channel(channel_target, channel_credentials(tls_ca), options=options)
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: int,
        k: int = 10,
        exclude_item_ids: Iterable[int] = (),
        *,
        item_filter: ItemFilter | None = None,
        explain: bool = False,
        diversity: float = 0.0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Recommendations:
        """Top-``k`` unseen movies; ``explain`` fills each item's ``because_item_id``; ``diversity`` in [0, 1]
        trades relevance for movies unlike each other (0: the exact top-k; outside [0, 1]: INVALID_ARGUMENT)."""
        query = StreamQuery(request_id, user_id, k, tuple(exclude_item_ids), item_filter, explain, diversity)
        return _recommendations(self._call(self._stub.Recommend, _query_request(pb.RecommendRequest, query), timeout))

    def recommend_for_items(
        self,
        liked_item_ids: Iterable[int],
        k: int = 10,
        exclude_item_ids: Iterable[int] = (),
        *,
        item_filter: ItemFilter | None = None,
        explain: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Recommendations:
        """Cold start: recommendations for someone known only by the movies they liked (never those movies)."""
        request = pb.RecommendForItemsRequest(
            request_id=request_id,
            item_ids=list(liked_item_ids),
            k=k,
            exclude_item_ids=list(exclude_item_ids),
            filter=_filter_message(item_filter),
            explain=explain,
        )
        return _recommendations(self._call(self._stub.RecommendForItems, request, timeout))

    def record_interactions(
        self,
        user_id: int,
        item_ids: Iterable[int],
        *,
        ratings: Iterable[float] = (),
        times: Iterable[int] = (),
        request_id: str = "",
        timeout: float | None = None,
    ) -> Recorded:
        """Store watched events; when this returns they are durable and excluded from the user's next answer."""
        request = pb.RecordInteractionsRequest(
            request_id=request_id, user_id=user_id, item_ids=list(item_ids), ratings=list(ratings), times=list(times)
        )
        response: pb.RecordInteractionsResponse = self._call(self._stub.RecordInteractions, request, timeout)
        return Recorded(offset=response.offset, recorded=response.recorded)

    def reload_index(self, *, timeout: float | None = None) -> ReloadResult:
        """Ask the server to load its store's CURRENT version now (a refused version is retried)."""
        response: pb.ReloadIndexResponse = self._call(self._stub.ReloadIndex, pb.ReloadIndexRequest(), timeout)
        return ReloadResult(response.swapped, response.index_version, response.model_version, response.error)

    def recommend_stream(
        self, queries: Iterable[StreamQuery], *, timeout: float | None = None
    ) -> Iterator[Recommendations | RecommenderError]:
        """Send ``queries`` over one stream, yielding one result per query in order.

        A query the server rejects yields a :class:`RecommenderError` (with its
        ``request_id``) and the stream continues; a failure of the stream itself
        raises. ``timeout`` bounds the whole stream (default: none).
        """
        requests = (_query_request(pb.RecommendStreamRequest, query) for query in queries)
        responses = self._stub.RecommendStream(requests, timeout=timeout, metadata=self._metadata)
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

    def recommend_batch(
        self, queries: Iterable[StreamQuery], *, timeout: float | None = None
    ) -> list[Recommendations | RecommenderError]:
        """Many users in one call (at most the server's ``max_batch_size``): one result per query, in order.

        A query the server rejects is a :class:`RecommenderError` (with its
        ``request_id``) in its slot; a refused call (too many queries, no
        index yet) raises.
        """
        request = pb.RecommendBatchRequest(requests=[_query_request(pb.RecommendRequest, query) for query in queries])
        response: pb.RecommendBatchResponse = self._call(self._stub.RecommendBatch, request, timeout)
        return [
            _error_from_status(result.error, result.request_id)
            if result.HasField("error") and result.error.code != grpc.StatusCode.OK.value[0]
            else Recommendations(
                request_id=result.request_id,
                items=tuple(_item(item) for item in result.items),
                model_version=response.model_version,
                index_version=response.index_version,
            )
            for result in response.results
        ]

    def similar_items(
        self,
        item_id: int,
        k: int = 10,
        *,
        user_id: int | None = None,
        exclude_item_ids: Iterable[int] = (),
        item_filter: ItemFilter | None = None,
        timeout: float | None = None,
    ) -> Recommendations:
        request = pb.SimilarItemsRequest(
            item_id=item_id,
            k=k,
            exclude_item_ids=list(exclude_item_ids),
            filter=_filter_message(item_filter),
        )
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
            swap_count=response.swap_count,
            last_reload_error=response.last_reload_error,
            last_refused_version=response.last_refused_version,
            genres=tuple(response.genres),
            events_through=response.events_through,
            events_last_offset=response.events_last_offset,
            max_batch_size=response.max_batch_size,
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
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: grpc.RpcError) -> RecommenderError:
        """The typed error for a failed call, with the field named by google.rpc BadRequest details."""
        assert isinstance(exc, grpc.Call)  # every RpcError raised by a channel call is also a Call
        status = rpc_status.from_call(exc)
        if status is not None:
            return _error_from_status(status, "")
        return error_for(exc.code(), exc.details() or "")


def service_config(retry_attempts: int = DEFAULT_RETRY_ATTEMPTS) -> str:
    """The gRPC service config: ``round_robin`` over every resolved address, and UNAVAILABLE retried.

    UNAVAILABLE is what a call gets from a replica that died or drains before
    answering; gRPC retries it on the next replica after a short jittered
    backoff, within the call's own deadline. Other codes are answers, not
    retried. A RecordInteractions retried after a lost reply may store its
    events twice, which changes nothing a user sees (an event is "seen").
    """
    if not 2 <= retry_attempts <= 5:  # gRPC caps maxAttempts at 5
        raise ValueError("retry_attempts must be in 2..5")
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}, {"service": "grpc.health.v1.Health"}],
                    "retryPolicy": {
                        "maxAttempts": retry_attempts,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def channel_target_of(target: str | Sequence[str]) -> tuple[str, str | None]:
    """The gRPC target for one address or a list of replicas, and the authority to present (None: the default).

    gRPC takes a static list only as ``ipv4:A:P,B:P`` (or ``ipv6:``), so the
    replicas' host names are resolved here, once; a name whose addresses
    change belongs in one ``dns:///NAME:PORT`` target instead, which gRPC
    re-resolves itself.
    """
    if isinstance(target, str):
        return target, None
    if not target:
        raise ValueError("no replica address given")
    addresses: list[str] = []
    families: set[int] = set()
    for replica in target:
        host, _, port = replica.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT for a replica, got {replica!r}")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve replica {replica!r}: {exc}") from None
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            families.add(family)
            ip = ipaddress.ip_address(sockaddr[0])
            address = f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
            if address not in addresses:
                addresses.append(address)
    if len(families) != 1:
        raise ValueError(f"replicas {list(target)} resolve to a mix of IPv4 and IPv6 addresses (or to none)")
    scheme = "ipv4" if families == {socket.AF_INET} else "ipv6"
    first_host = target[0].rpartition(":")[0].strip("[]")
    return f"{scheme}:{','.join(addresses)}", first_host


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


def _query_request(message_type: type[QueryMessage], query: StreamQuery) -> QueryMessage:
    """The wire message for one recommend query: the unary and the streaming call carry the same fields."""
    return message_type(
        request_id=query.request_id,
        user_id=query.user_id,
        k=query.k,
        exclude_item_ids=list(query.exclude_item_ids),
        filter=_filter_message(query.item_filter),
        explain=query.explain,
        diversity=query.diversity or None,  # 0 is not sent: the request is byte for byte the one before the knob
    )


def _filter_message(item_filter: ItemFilter | None) -> pb.ItemFilter | None:
    """The wire form of the shared :class:`~movierec.item_filter.ItemFilter` (genres sorted: one filter, one
    message)."""
    if item_filter is None:
        return None
    message = pb.ItemFilter(
        include_genres=sorted(item_filter.include_genres), exclude_genres=sorted(item_filter.exclude_genres)
    )
    if item_filter.min_year is not None:
        message.min_year = int(item_filter.min_year)
    if item_filter.max_year is not None:
        message.max_year = int(item_filter.max_year)
    return message


def _item(item: pb.RecommendedItem) -> RecommendedItem:
    return RecommendedItem(
        item_id=item.item_id,
        score=item.score,
        rank=item.rank,
        title=item.title,
        genres=tuple(item.genres),
        year=item.year if item.HasField("year") else None,
        because_item_id=item.because_item_id if item.HasField("because_item_id") else None,
    )


def _recommendations(response: Any) -> Recommendations:
    return Recommendations(
        request_id=response.request_id,
        items=tuple(_item(item) for item in response.items),
        model_version=response.model_version,
        index_version=response.index_version,
    )
