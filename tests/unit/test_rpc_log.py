"""The one log line per RPC: routine calls at debug, failures and slow calls at info; a request
stream's length is how long the device stayed connected, so a long one that ends OK is routine."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from callsight.server.auth import Access, Caller
from callsight.server.interceptor import SLOW_MS, _Call, _wrap
from callsight.server.metrics import RpcMetrics


async def _noop(request: Any, context: Any) -> None:
    return None


HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "unary": grpc.unary_unary_rpc_method_handler(_noop),
    "server_stream": grpc.unary_stream_rpc_method_handler(_noop),
    "stream": grpc.stream_stream_rpc_method_handler(_noop),
}


def _level(shape: str, seconds: float, code: grpc.StatusCode) -> str:
    started = time.perf_counter() - seconds  # it began ``seconds`` ago
    call = _Call("/callsight.v1.X/Y", started, RpcMetrics(CollectorRegistry()), HANDLERS[shape])
    with capture_logs() as logs:
        call.done(code)
    (line,) = [entry for entry in logs if entry["event"] == "rpc"]
    return str(line["log_level"])


@pytest.mark.parametrize("shape", ["unary", "server_stream", "stream"])
def test_a_quick_ok_call_is_debug(shape: str) -> None:
    assert _level(shape, 0.001, grpc.StatusCode.OK) == "debug"


@pytest.mark.parametrize("shape", ["unary", "server_stream"])
def test_a_slow_call_is_info(shape: str) -> None:
    assert _level(shape, 2 * SLOW_MS / 1000, grpc.StatusCode.OK) == "info"


def test_a_long_request_stream_that_ends_ok_is_routine() -> None:
    assert _level("stream", 60.0, grpc.StatusCode.OK) == "debug"


@pytest.mark.parametrize("shape", ["unary", "stream"])
def test_a_failed_call_is_info(shape: str) -> None:
    assert _level(shape, 0.001, grpc.StatusCode.UNAVAILABLE) == "info"


def test_a_request_stream_the_client_hung_up_is_routine() -> None:
    assert _level("stream", 5.0, grpc.StatusCode.CANCELLED) == "debug"
    assert _level("unary", 0.001, grpc.StatusCode.CANCELLED) == "info"


async def test_a_response_stream_closed_in_another_context_counts_as_cancelled() -> None:
    """grpc stops consuming a stream's responses when its client goes away; asyncio's finaliser
    then closes the generator in a context of its own: no error, and the RPC is counted ended."""

    async def forever(requests: Any, context: Any) -> AsyncIterator[int]:
        while True:
            yield 1
            await asyncio.sleep(0)

    handler = grpc.stream_stream_rpc_method_handler(forever)
    registry = CollectorRegistry()
    call = _Call("/callsight.v1.X/Y", time.perf_counter(), RpcMetrics(registry), handler)
    call.caller = Caller(Access.DEVICE, tenant_id="t", device_id="d")
    responses = _wrap(handler, call).stream_stream(_requests(), None)
    assert await anext(responses) == 1
    with capture_logs() as logs:
        await asyncio.create_task(responses.aclose(), context=contextvars.Context())
    (line,) = [entry for entry in logs if entry["event"] == "rpc"]
    assert (line["status"], line["log_level"]) == ("CANCELLED", "debug")
    labels = {"grpc_service": "callsight.v1.X", "grpc_method": "Y", "grpc_type": "bidi_stream"}
    ended = registry.get_sample_value(
        "grpc_server_handled_total", {**labels, "grpc_code": "CANCELLED"}
    )
    assert ended == 1


async def _requests() -> AsyncIterator[bytes]:
    yield b""
