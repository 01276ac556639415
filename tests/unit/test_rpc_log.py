"""The one log line per RPC: routine calls at debug, failures and slow calls at info; a request
stream's length is how long the device stayed connected, so a long one that ends OK is routine."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from callsight.server.interceptor import SLOW_MS, _Call
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
