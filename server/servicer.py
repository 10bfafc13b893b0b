"""``movierec.v1.RecommenderService`` on ``grpc.aio``.

Why asyncio: one event loop serves many long-lived streams without a thread
per connection (a sync server's pool caps concurrent streams), and
``benchmarks/serve_bench.py`` measures it against a sync thread-pool server
and against no-op servers (the gRPC floor). Searches run on the loop: a k=10
search over a MovieLens-sized catalogue costs less than a hop to a thread
and back. Streams are pipelined (read -> batched search -> write) so
requests that arrive while a batch is being answered join the next batch,
which the engine answers with one search per distinct k: throughput grows
with load instead of paying one search per message.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_status import rpc_status

from movierec.index import Recommendation
from movierec.server.admission import (
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_BUFFER_BYTES,
    ByteBudget,
    StreamShare,
    request_id_error,
    size_error,
)
from movierec.server.engine import Answer, ServingEngine
from movierec.server.errors import RequestError, client_safe, invalid_argument, not_ready, resource_exhausted
from movierec.server.interaction_log import (
    InteractionLogError,
    InvalidInteractions,
    LiveEventCapExceeded,
    check_interactions,
)
from movierec.server.limits import Limits
from movierec.server.live_events import LiveEventStore
from movierec.server.metrics import ServerMetrics
from movierec.server.reload import IndexReloader, ReloadStatus
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_MAX_STREAM_BATCH = 64
# Most requests one RecommendBatch call may carry: 1,000 k=10 answers are ~0.5 MB and ~10 ms of the event loop.
DEFAULT_MAX_BATCH_SIZE = 1000
# Ranked items one stream answers per event-loop turn (64 messages of k=10, or one message of k >= 640):
# a stream asking for k=1000 answers cannot hold the loop for a whole batch of them.
STREAM_TURN_ITEMS = 640

_END_OF_STREAM = object()
_RELOAD_OUTCOMES = {
    ReloadStatus.SWAPPED: pb.RELOAD_OUTCOME_SWAPPED,
    ReloadStatus.ALREADY_SERVING: pb.RELOAD_OUTCOME_ALREADY_SERVING,
    ReloadStatus.REFUSED: pb.RELOAD_OUTCOME_REFUSED,
    ReloadStatus.ERROR_AFTER_SWAP: pb.RELOAD_OUTCOME_ERROR_AFTER_SWAP,
}
STREAM_METHOD = f"/{pb.DESCRIPTOR.services_by_name['RecommenderService'].full_name}/RecommendStream"
_reload_fanout: list[Callable[[], None]] = []
"""Run after every ``ReloadIndex`` this process answers (see :func:`fan_out_reloads`)."""


def fan_out_reloads(notify: Callable[[], None]) -> None:
    """Have ``notify`` run after each ``ReloadIndex`` call this process answers.

    A worker of ``recctl serve --workers N`` answers a call for the whole
    server, so it asks its parent (SIGHUP) to have every worker look at CURRENT
    too; the parent's SIGHUP reaches the workers as a reload, never as this
    call, so the fan-out does not loop.
    """
    _reload_fanout.append(notify)


# Every response that carries ranked items (and the versions that produced them).
ItemsResponse = TypeVar(
    "ItemsResponse",
    pb.RecommendResponse,
    pb.RecommendStreamResponse,
    pb.SimilarItemsResponse,
    pb.RecommendForItemsResponse,
)


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Stateless request handling over the engine that :class:`ServingState` holds right now."""

    def __init__(
        self,
        state: ServingState,
        *,
        max_stream_batch: int = DEFAULT_MAX_STREAM_BATCH,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        metrics: ServerMetrics | None = None,
        limits: Limits | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES,
    ) -> None:
        """``metrics`` hears of stream messages answered with an error (the call itself still succeeds);
        ``max_batch_size`` caps the requests of one RecommendBatch call; ``max_streams`` the streams open at
        once (RESOURCE_EXHAUSTED beyond); ``stream_buffer_bytes`` what each stream holds per direction
        (:mod:`movierec.server.admission`); ``limits`` refuse an oversized stream message as it arrives."""
        if max_stream_batch < 1:
            raise ValueError("max_stream_batch must be >= 1")
        if max_streams < 1 or stream_buffer_bytes < 1:
            raise ValueError("max_streams and stream_buffer_bytes must be >= 1")
        self._limits = limits if limits is not None else Limits()
        self._max_streams = max_streams
        self._stream_buffer_bytes = stream_buffer_bytes
        # Streams yield the loop to unary calls (movierec.server.admission.StreamShare).
        self._stream_share = StreamShare()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._max_batch_size = max_batch_size
        self._state = state
        self._max_stream_batch = max_stream_batch
        self._metrics = metrics
        self.active_streams = 0
        # Set by the server once the first index is loaded (the log replays from that index's offset).
        self.log: LiveEventStore | None = None
        self.reloader: IndexReloader | None = None

    @property
    def metrics(self) -> ServerMetrics | None:
        """Where this server counts its calls (None: not counted); the HTTP API counts its requests there too."""
        return self._metrics

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext[pb.RecommendRequest, pb.RecommendResponse]
    ) -> pb.RecommendResponse:
        return await self._answer(
            context, request.request_id, pb.RecommendResponse, lambda engine: engine.recommend([request])[0]
        )

    async def RecommendStream(
        self,
        request_iterator: AsyncIterator[pb.RecommendStreamRequest],
        context: grpc.aio.ServicerContext[pb.RecommendStreamRequest, pb.RecommendStreamResponse],
    ) -> AsyncIterator[pb.RecommendStreamResponse]:
        """Three tasks joined by queues bounded in bytes: read -> answer in batches -> write.

        While this handler waits for gRPC to take a response, the answerer
        searches the next batch and the reader collects more requests. The
        byte budgets (requests read but not answered, answers not yet taken)
        make a client that sends without reading its answers stall on HTTP/2
        flow control instead of growing the server's memory; when the call
        ends or is cancelled, both helper tasks are cancelled with it. Beyond
        ``max_streams`` open streams a new one is refused (RESOURCE_EXHAUSTED).
        """
        if self.active_streams >= self._max_streams:
            await _abort(
                context,
                resource_exhausted(
                    "RecommendStream",
                    f"{self.active_streams} streams are open, the most this server allows (max_streams): "
                    "retry later, or use Recommend/RecommendBatch",
                ),
            )
        self.active_streams += 1
        inbox: asyncio.Queue[object] = asyncio.Queue()
        outbox: asyncio.Queue[object] = asyncio.Queue()
        unanswered = ByteBudget(self._stream_buffer_bytes)
        unsent = ByteBudget(self._stream_buffer_bytes)
        reader = asyncio.create_task(_read_all(request_iterator, inbox, unanswered, self._limits))
        answerer = asyncio.create_task(self._answer_all(inbox, unanswered, outbox, unsent))
        try:
            while (sent := await outbox.get()) is not _END_OF_STREAM:
                assert isinstance(sent, _Queued)
                yield sent.message
                unsent.release(sent.nbytes)
            await answerer
            await reader  # surfaces a read failure instead of ending the call as if all went well
        finally:
            reader.cancel()
            answerer.cancel()
            self.active_streams -= 1

    async def _answer_all(
        self, inbox: asyncio.Queue[object], unanswered: ByteBudget, outbox: asyncio.Queue[object], unsent: ByteBudget
    ) -> None:
        """Answer what has arrived, batch by batch, until the client half-closes; a batch's bytes are
        released from ``unanswered`` once its answers are queued (within ``unsent``).

        The search runs on the event loop: on the benchmark machine a search
        thread pool cost ~20% more server CPU per message for no throughput gain.
        """
        failure: Exception | None = None
        try:
            ended = False
            while not ended:
                batch, ended = await _next_batch(inbox, self._max_stream_batch, STREAM_TURN_ITEMS)
                await self._stream_share.turn()
                started = time.perf_counter()
                responses = self._answer_stream_batch([received.message for received in batch]) if batch else []
                sizes = [response.ByteSize() for response in responses]
                self._stream_share.spent(time.perf_counter() - started)
                for response, nbytes in zip(responses, sizes, strict=True):
                    await unsent.acquire(nbytes)
                    outbox.put_nowait(_Queued(response, nbytes))
                unanswered.release(sum(received.nbytes for received in batch))
                if not inbox.empty():  # more is waiting: let other calls and streams have the loop first
                    await asyncio.sleep(0)
        except Exception as exc:  # a bug, not a bad request: end the call (INTERNAL) rather than hang it
            failure = exc
        await outbox.put(_END_OF_STREAM)
        if failure is not None:
            raise failure

    async def RecommendBatch(
        self,
        request: pb.RecommendBatchRequest,
        context: grpc.aio.ServicerContext[pb.RecommendBatchRequest, pb.RecommendBatchResponse],
    ) -> pb.RecommendBatchResponse:
        """Every request through one ``engine.recommend`` (one search per distinct k and filter); a bad request
        gets its own error status in its slot, as in the stream."""
        engine = await self._engine_or_abort(context)
        await _abort_if_expired(context)
        queries = request.requests
        if len(queries) > self._max_batch_size:
            await _abort(
                context,
                invalid_argument(
                    "requests",
                    f"at most {self._max_batch_size} requests per RecommendBatch call (max_batch_size), "
                    f"got {len(queries)}: split the batch",
                ),
            )
        response = pb.RecommendBatchResponse(model_version=engine.model_version, index_version=engine.index_version)
        for query, answer in zip(queries, engine.recommend(queries), strict=True):
            result = response.results.add(request_id=query.request_id)
            if isinstance(answer, RequestError):
                result.error.CopyFrom(answer.to_status())
            else:
                engine.write_items(result.items, answer)
        return response

    async def SimilarItems(
        self,
        request: pb.SimilarItemsRequest,
        context: grpc.aio.ServicerContext[pb.SimilarItemsRequest, pb.SimilarItemsResponse],
    ) -> pb.SimilarItemsResponse:
        return await self._answer(
            context, request.request_id, pb.SimilarItemsResponse, lambda engine: engine.similar_items(request)
        )

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext[pb.GetInfoRequest, pb.GetInfoResponse]
    ) -> pb.GetInfoResponse:
        engine = await self._engine_or_abort(context)
        info = engine.info()
        info.swap_count = self._state.swap_count
        info.last_reload_error = client_safe(self._state.last_reload_error)  # no server paths to clients
        info.last_refused_version = self._state.last_refused_version
        info.max_batch_size = self._max_batch_size
        if self.log is not None:
            info.events_last_offset = self.log.last_offset
        return info

    async def RecordInteractions(
        self,
        request: pb.RecordInteractionsRequest,
        context: grpc.aio.ServicerContext[pb.RecordInteractionsRequest, pb.RecordInteractionsResponse],
    ) -> pb.RecordInteractionsResponse:
        """Answers only after the events are committed (fsync'd); a worker thread waits for the disk.

        Item ids the served catalogue does not know are refused (INVALID_ARGUMENT, nothing stored); a user at
        the live-event cap gets RESOURCE_EXHAUSTED; a retry with the same ``request_id`` stores nothing and
        gets the first call's acknowledgement (the store remembers ids for a day).
        """
        log = self.log
        if log is None:
            await _abort(context, not_ready())
        engine = await self._engine_or_abort(context)
        ratings = list(request.ratings) if request.ratings else None
        times = list(request.times) if request.times else None
        oversized_id = request_id_error(request.request_id, self._limits)  # stored for a day: bounded first
        if oversized_id is not None:
            await _abort(context, oversized_id)
        try:  # the call's shape first (the field at fault), then whether the catalogue knows its movies
            check_interactions(request.user_id, request.item_ids, ratings, times)
            engine.check_recordable(request.item_ids)
        except InvalidInteractions as error:
            await _abort(context, invalid_argument(error.field, str(error)))
        except RequestError as error:
            await _abort(context, error)
        record = functools.partial(log.record, request_id=request.request_id or None)
        try:
            offset = await asyncio.to_thread(record, request.user_id, list(request.item_ids), ratings, times)
        except InvalidInteractions as error:
            await _abort(context, invalid_argument(error.field, str(error)))
        except LiveEventCapExceeded as error:
            await _abort(context, resource_exhausted(f"user:{request.user_id}", str(error)))
        except InteractionLogError as error:
            await _abort(context, RequestError(grpc.StatusCode.UNAVAILABLE, f"events not stored: {error}"))
        return pb.RecordInteractionsResponse(
            request_id=request.request_id, offset=offset, recorded=len(request.item_ids)
        )

    async def RecommendForItems(
        self,
        request: pb.RecommendForItemsRequest,
        context: grpc.aio.ServicerContext[pb.RecommendForItemsRequest, pb.RecommendForItemsResponse],
    ) -> pb.RecommendForItemsResponse:
        return await self._answer(
            context,
            request.request_id,
            pb.RecommendForItemsResponse,
            lambda engine: engine.recommend_for_items(request),
        )

    async def ReloadIndex(
        self,
        request: pb.ReloadIndexRequest,
        context: grpc.aio.ServicerContext[pb.ReloadIndexRequest, pb.ReloadIndexResponse],
    ) -> pb.ReloadIndexResponse:
        """Look at CURRENT now and say what happened (``outcome``); a version refused before is retried only if
        its files changed since (the operator may have repaired it), so asking again never re-hashes it."""
        await self._engine_or_abort(context)
        if self.reloader is None:
            await _abort(
                context,
                RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this server serves one fixed index version, not a store: there is nothing to reload",
                ),
            )
        outcome = await self.reloader.reload()
        for notify in _reload_fanout:
            notify()
        engine = self._state.require_engine()
        return pb.ReloadIndexResponse(
            swapped=outcome.swapped,
            index_version=engine.index_version,
            model_version=engine.model_version,
            error=client_safe(outcome.error),
            outcome=_RELOAD_OUTCOMES[outcome.status],
            cached=outcome.cached,
        )

    def _answer_stream_batch(
        self, batch: Sequence[pb.RecommendStreamRequest | _Refused]
    ) -> list[pb.RecommendStreamResponse]:
        """One response per request, in order; the engine is read once so a batch never mixes versions.
        Messages refused as they arrived keep their place with their error."""
        try:
            engine = self._state.require_engine()
        except RequestError as error:
            return [pb.RecommendStreamResponse(request_id=r.request_id, error=error.to_status()) for r in batch]
        searched = iter(engine.recommend([r for r in batch if isinstance(r, pb.RecommendStreamRequest)]))
        answers: list[Answer | RequestError] = [r.error if isinstance(r, _Refused) else next(searched) for r in batch]
        responses = []
        for request, answer in zip(batch, answers, strict=True):
            if isinstance(answer, RequestError):
                responses.append(pb.RecommendStreamResponse(request_id=request.request_id, error=answer.to_status()))
                if self._metrics is not None:
                    self._metrics.stream_message_error(STREAM_METHOD, answer.code)
                continue
            responses.append(_items_response(engine, pb.RecommendStreamResponse, request.request_id, answer))
        return responses

    async def _answer(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        request_id: str,
        response_type: type[ItemsResponse],
        search: Callable[[ServingEngine], Recommendation | RequestError],
    ) -> ItemsResponse:
        """Every unary call that answers with items: the engine serving now (UNAVAILABLE while none), no search
        for a caller whose deadline has passed, a bad request aborted with its status (returned or raised by
        ``search``), and the answer with the versions that produced it."""
        engine = await self._engine_or_abort(context)
        await _abort_if_expired(context)
        try:
            result = search(engine)
        except RequestError as error:
            result = error
        if isinstance(result, RequestError):
            await _abort(context, result)
        return _items_response(engine, response_type, request_id, result)

    async def _engine_or_abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> ServingEngine:
        """The engine serving now (UNAVAILABLE while none); every unary handler starts here, so it is also
        where streams hear that another call wants the loop."""
        self._stream_share.other_call()
        try:
            return self._state.require_engine()
        except RequestError as error:
            await _abort(context, error)


def _items_response(
    engine: ServingEngine, response_type: type[ItemsResponse], request_id: str, result: Recommendation
) -> ItemsResponse:
    response = response_type(
        request_id=request_id, model_version=engine.model_version, index_version=engine.index_version
    )
    engine.write_items(response.items, result)
    return response


@dataclass(frozen=True)
class _Refused:
    """A stream message refused as it arrived (:func:`~movierec.server.admission.size_error`): only its
    request_id (when not itself the problem) and error are kept."""

    request_id: str
    error: RequestError


@dataclass(frozen=True)
class _Received:
    """A stream message read and not yet answered, the bytes it holds and the ranked items it asks for."""

    message: pb.RecommendStreamRequest | _Refused
    nbytes: int
    items: int = 1


@dataclass(frozen=True)
class _Queued:
    """An answer waiting for the client, and the bytes it holds."""

    message: pb.RecommendStreamResponse
    nbytes: int


def _received(request: pb.RecommendStreamRequest, limits: Limits) -> _Received:
    """Memory a message holds, roughly: its wire size, plus 8 bytes per exclusion (an id takes 1-10 bytes on
    the wire, 8 once parsed). An oversized message is dropped at once and only its error kept."""
    error = size_error(request, limits)
    if error is not None:
        request_id = request.request_id if len(request.request_id) <= limits.max_request_id_length else ""
        return _Received(_Refused(request_id, error), len(request_id) + len(error.message) + 256)
    items = min(max(request.k, 1), limits.max_k)
    return _Received(request, request.ByteSize() + 8 * len(request.exclude_item_ids), items)


async def _read_all(
    requests: AsyncIterator[pb.RecommendStreamRequest], inbox: asyncio.Queue[object], budget: ByteBudget, limits: Limits
) -> None:
    """Move every incoming message into ``inbox`` as it arrives, then the end marker; while ``budget`` is
    full, stop reading (the sender then waits on HTTP/2 flow control).

    The marker is queued even when reading fails, so the consumer stops; it
    then awaits this task, which re-raises the failure.
    """
    failure: Exception | None = None
    try:
        async for request in requests:
            received = _received(request, limits)
            del request  # an oversized message is freed now, not when the next one arrives
            await budget.acquire(received.nbytes)
            inbox.put_nowait(received)
    except Exception as exc:  # handed to whoever awaits this task, after the marker
        failure = exc
    await inbox.put(_END_OF_STREAM)
    if failure is not None:
        raise failure


async def _next_batch(inbox: asyncio.Queue[object], max_batch: int, max_items: int) -> tuple[list[_Received], bool]:
    """Wait for one message, then gather what else has arrived (up to ``max_batch`` messages asking for
    ``max_items`` ranked items in all: the work of one event-loop turn).

    gRPC hands the reader one message per event-loop turn, so "what is queued
    right now" is usually a single message; giving the loop a turn whenever
    the queue runs dry lets messages already received join this batch. It
    stops at the first turn that brings nothing new, so an idle stream pays
    one loop turn of latency, not a timer.

    Returns the batch and whether the client has half-closed the stream.
    """
    batch: list[_Received] = []
    items = 0
    item = await inbox.get()
    while True:
        if item is _END_OF_STREAM:
            return batch, True
        assert isinstance(item, _Received)
        batch.append(item)
        items += item.items
        if len(batch) >= max_batch or items >= max_items:
            return batch, False
        if inbox.empty():
            await asyncio.sleep(0)
            if inbox.empty():
                return batch, False
        item = inbox.get_nowait()


async def _abort_if_expired(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Skip the search for a caller that has already given up (the deadline passed while queued)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before the search started")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: RequestError) -> NoReturn:
    """End the call with ``error``'s code and message plus google.rpc details in the trailers."""
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)
