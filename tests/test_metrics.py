"""Server metrics: the interceptor against a tiny grpc.aio server, and the HTTP exposition endpoint."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from movierec.server.auth import BearerTokenInterceptor
from movierec.server.metrics import MetricsInterceptor, ServerMetrics

SERVICE = "test.Echo"


class Probe:
    """What the handlers saw, so tests can check that a cancelled stream was cleaned up."""

    def __init__(self) -> None:
        self.stream_closed = asyncio.Event()


async def _echo(request: bytes, _context: Any) -> bytes:
    return request


async def _invalid(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be positive")


async def _set_code(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such user")
    return b""


async def _crash(_request: bytes, _context: Any) -> bytes:
    raise RuntimeError("bug")


async def _echo_stream(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
        yield request


async def _abort_after_one(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    yield request
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream limit")


async def _write_twice(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.write(request)
    await context.write(request)


def _endless(probe: Probe) -> Any:
    async def endless(request: bytes, _context: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                yield request
                await asyncio.sleep(0.001)
        finally:
            probe.stream_closed.set()

    return endless


def _handlers(probe: Probe) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Invalid": grpc.unary_unary_rpc_method_handler(_invalid),
            "SetCode": grpc.unary_unary_rpc_method_handler(_set_code),
            "Crash": grpc.unary_unary_rpc_method_handler(_crash),
            "Bidi": grpc.stream_stream_rpc_method_handler(_echo_stream),
            "Written": grpc.unary_stream_rpc_method_handler(_write_twice),
            "AbortAfterOne": grpc.unary_stream_rpc_method_handler(_abort_after_one),
            "Endless": grpc.unary_stream_rpc_method_handler(_endless(probe)),
        },
    )


@asynccontextmanager
async def _channel(
    metrics: ServerMetrics, probe: Probe, *inner: grpc.aio.ServerInterceptor[Any, Any]
) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics), *inner])
    server.add_generic_rpc_handlers([_handlers(probe)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(grace=None)


def _run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def _handled(metrics: ServerMetrics, method: str, code: str, grpc_type: str = "unary") -> float | None:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": grpc_type, "grpc_code": code}
    return metrics.registry.get_sample_value("grpc_server_handled_total", labels)


def _call_labels(method: str, grpc_type: str) -> dict[str, str]:
    return {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": grpc_type}


async def _status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_unary_calls_are_counted_by_code_and_timed() -> None:
    metrics = ServerMetrics()

    async def scenario() -> None:
        async with _channel(metrics, Probe()) as channel:
            for _ in range(3):
                assert await channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=10) == b"x"
            invalid = channel.unary_unary(f"/{SERVICE}/Invalid", None, None)(b"x", timeout=10)
            assert await _status(invalid) == grpc.StatusCode.INVALID_ARGUMENT
            set_code = channel.unary_unary(f"/{SERVICE}/SetCode", None, None)(b"x", timeout=10)
            assert await _status(set_code) == grpc.StatusCode.NOT_FOUND
            crash = channel.unary_unary(f"/{SERVICE}/Crash", None, None)(b"x", timeout=10)
            assert await _status(crash) == grpc.StatusCode.UNKNOWN

    _run(scenario())
    assert _handled(metrics, "Echo", "OK") == 3
    assert _handled(metrics, "Echo", "INVALID_ARGUMENT") is None
    assert _handled(metrics, "Invalid", "INVALID_ARGUMENT") == 1
    assert _handled(metrics, "SetCode", "NOT_FOUND") == 1
    assert _handled(metrics, "Crash", "UNKNOWN") == 1
    sample = metrics.registry.get_sample_value
    assert sample("grpc_server_handling_seconds_count", _call_labels("Echo", "unary")) == 3
    assert 0 < (sample("grpc_server_handling_seconds_sum", _call_labels("Echo", "unary")) or 0) < 3 * 10
    assert sample("grpc_server_started_total", _call_labels("Echo", "unary")) == 3
    assert sample("grpc_server_msg_received_total", _call_labels("Echo", "unary")) == 3
    assert sample("grpc_server_msg_sent_total", _call_labels("Echo", "unary")) == 3


def test_stream_messages_in_and_out_are_counted() -> None:
    metrics = ServerMetrics()

    async def scenario() -> None:
        async with _channel(metrics, Probe()) as channel:
            bidi = channel.stream_stream(f"/{SERVICE}/Bidi", None, None)(iter([b"a", b"b", b"c"]), timeout=10)
            assert [m async for m in bidi] == [b"a", b"a", b"b", b"b", b"c", b"c"]
            written = channel.unary_stream(f"/{SERVICE}/Written", None, None)(b"w", timeout=10)
            assert [m async for m in written] == [b"w", b"w"]
            aborted = channel.unary_stream(f"/{SERVICE}/AbortAfterOne", None, None)(b"z", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                _ = [m async for m in aborted]
            assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    _run(scenario())
    sample = metrics.registry.get_sample_value
    assert sample("grpc_server_msg_received_total", _call_labels("Bidi", "bidi_stream")) == 3
    assert sample("grpc_server_msg_sent_total", _call_labels("Bidi", "bidi_stream")) == 6
    assert _handled(metrics, "Bidi", "OK", "bidi_stream") == 1
    assert _handled(metrics, "Written", "OK", "server_stream") == 1  # context.write() streams pass through
    assert _handled(metrics, "AbortAfterOne", "RESOURCE_EXHAUSTED", "server_stream") == 1
    assert sample("grpc_server_msg_sent_total", _call_labels("AbortAfterOne", "server_stream")) == 1


def test_a_client_that_cancels_a_stream_is_recorded_and_the_handler_is_closed() -> None:
    metrics = ServerMetrics()
    probe = Probe()

    async def scenario() -> None:
        async with _channel(metrics, probe) as channel:
            call = channel.unary_stream(f"/{SERVICE}/Endless", None, None)(b"e", timeout=10)
            received = 0
            async for _ in call:
                received += 1
                if received == 5:
                    break
            call.cancel()
            await asyncio.wait_for(probe.stream_closed.wait(), timeout=5)
            for _ in range(100):  # the status is recorded when the server-side call finishes
                if _handled(metrics, "Endless", "CANCELLED", "server_stream"):
                    break
                await asyncio.sleep(0.01)

    _run(scenario())
    assert _handled(metrics, "Endless", "CANCELLED", "server_stream") == 1
    assert (
        metrics.registry.get_sample_value("grpc_server_msg_sent_total", _call_labels("Endless", "server_stream")) or 0
    ) >= 5


def test_calls_refused_by_an_inner_interceptor_are_counted_with_its_code() -> None:
    metrics = ServerMetrics()

    async def scenario() -> None:
        async with _channel(metrics, Probe(), BearerTokenInterceptor("t0ken")) as channel:
            call = channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=10)
            assert await _status(call) == grpc.StatusCode.UNAUTHENTICATED

    _run(scenario())
    assert _handled(metrics, "Echo", "UNAUTHENTICATED") == 1


def test_serving_state_metrics() -> None:
    metrics = ServerMetrics()
    sample = metrics.registry.get_sample_value
    assert sample("movierec_exclusion_violations_total") == 0
    assert sample("movierec_index_swaps_total", {"outcome": "refused"}) == 0
    metrics.index_loaded("v0001", "m0001")
    metrics.index_loaded("v0002", "m0002")
    metrics.swap("ok")
    metrics.swap("refused")
    metrics.swap("ok")
    metrics.exclusion_violations(0)
    metrics.stream_message_error(f"/{SERVICE}/Bidi", grpc.StatusCode.NOT_FOUND, count=2)
    assert sample("movierec_index_info", {"index_version": "v0002", "model_version": "m0002"}) == 1
    assert sample("movierec_index_info", {"index_version": "v0001", "model_version": "m0001"}) is None
    assert sample("movierec_index_swaps_total", {"outcome": "ok"}) == 2
    assert sample("movierec_index_swaps_total", {"outcome": "refused"}) == 1
    assert sample("movierec_exclusion_violations_total") == 0
    labels = {"grpc_service": SERVICE, "grpc_method": "Bidi", "grpc_code": "NOT_FOUND"}
    assert sample("movierec_stream_message_errors_total", labels) == 2
    metrics.exclusion_violations(3)
    assert sample("movierec_exclusion_violations_total") == 3


def test_registries_are_independent() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.observe(f"/{SERVICE}/Echo", grpc.StatusCode.OK, 0.001)
    assert _handled(first, "Echo", "OK") == 1
    assert _handled(second, "Echo", "OK") is None


@pytest.mark.parametrize("seconds", [0.00005, 0.0003, 0.02, 30.0])
def test_latency_lands_in_the_right_bucket(seconds: float) -> None:
    metrics = ServerMetrics()
    metrics.observe(f"/{SERVICE}/Echo", grpc.StatusCode.OK, seconds)
    for bound in (0.0001, 0.0005, 0.025, 10.0):
        labels = {**_call_labels("Echo", "unary"), "le": str(bound)}
        expected = 1.0 if seconds <= bound else 0.0
        assert metrics.registry.get_sample_value("grpc_server_handling_seconds_bucket", labels) == expected


def test_the_http_endpoint_serves_the_text_format_and_closes() -> None:
    metrics = ServerMetrics()
    metrics.observe(f"/{SERVICE}/Echo", grpc.StatusCode.OK, 0.002)
    metrics.index_loaded("v0007", "m0003")
    endpoint = metrics.serve_http("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        endpoint.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    handled = ("grpc_server_handled_total", tuple(sorted({**_call_labels("Echo", "unary"), "grpc_code": "OK"}.items())))
    assert samples[handled] == 1
    info = ("movierec_index_info", (("index_version", "v0007"), ("model_version", "m0003")))
    assert samples[info] == 1
    assert text == metrics.exposition().decode()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=2)
