"""Every callsight RPC passes through here: authenticate, decode, run, map errors, log one line
and count it (``grpc_server_*`` metrics).

Authentication happens on the raw call, before any request bytes are decoded: a request without a
valid token gets ``UNAUTHENTICATED`` whatever its bytes. The original handler's deserializer is
then applied by us, so undecodable bytes get ``INVALID_ARGUMENT`` rather than grpc.aio's
``UNKNOWN``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from callsight.core.errors import CallsightError, InvalidArgument, Unavailable
from callsight.server.auth import (
    Access,
    Authenticator,
    Caller,
    access_for,
    reset_caller,
    set_caller,
)
from callsight.server.errors import client_message, redact, status_code, trailing_metadata
from callsight.server.metrics import RpcMetrics

log = structlog.get_logger("callsight.rpc")
# A unary or server-streaming RPC that took longer is logged at info even when it succeeded. A
# request stream's duration is how long the device stayed connected, not slowness: a fleet ending
# its streams together wrote 10,000 info lines (7% of the event loop while 10,000 phones synced).
SLOW_MS = 1000.0
# The longest a call arriving while the server starts waits for it to be ready.
STARTUP_HOLD_S = 10.0

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Deserializer = Callable[[bytes], Any]


class CallsightInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, decodes and logs callsight RPCs; other services pass through untouched."""

    def __init__(
        self, authenticator: Authenticator, ready: asyncio.Event, metrics: RpcMetrics
    ) -> None:
        self._auth = authenticator
        self._ready = ready
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        access = access_for(method)
        if handler is None or access is None:
            return handler
        call = _Call(method, time.perf_counter(), self._metrics, handler)
        try:
            if not self._ready.is_set():
                await self._until_ready()
            metadata = {
                k.lower(): v
                for k, v in handler_call_details.invocation_metadata or ()
                if isinstance(v, str)
            }
            call.caller = await self._auth.authenticate(access, metadata)
        except CallsightError as exc:
            return _refusal(handler, call, exc)
        return _wrap(handler, call)

    async def _until_ready(self) -> None:
        """Holds a call that arrived while the server starts until it is ready (for at most
        STARTUP_HOLD_S), then UNAVAILABLE: a fleet reconnecting during a restart is served the
        moment the server is ready instead of being refused and backing off further."""
        try:
            await asyncio.wait_for(self._ready.wait(), STARTUP_HOLD_S)
        except TimeoutError:
            raise Unavailable(
                "the server is starting (migrations running); retry shortly"
            ) from None


class _Call:
    """Per-RPC state for the log line and the metrics; counts the RPC as started."""

    def __init__(self, method: str, started: float, metrics: RpcMetrics, handler: Handler) -> None:
        self.method = method
        self.started = started
        self.caller = Caller(Access.PUBLIC)
        self._metrics = metrics
        self._type = metrics.started(method, handler.request_streaming, handler.response_streaming)
        self._connection = bool(handler.request_streaming)  # its duration is not its speed
        self._done = False

    def done(self, code: grpc.StatusCode, error: str = "") -> None:
        if self._done:  # one status per RPC, however its end is reported
            return
        self._done = True
        seconds = time.perf_counter() - self.started
        self._metrics.handled(self.method, self._type, code, seconds)
        fields: dict[str, Any] = {
            "method": self.method,
            "status": code.name,
            "duration_ms": round(seconds * 1000, 2),
        }
        if self.caller.tenant_id:
            fields["tenant"] = self.caller.tenant_id
        if self.caller.device_id:
            fields["device"] = self.caller.device_id
        if error:
            fields["error"] = redact(error)
        # A fleet makes thousands of RPCs a second: the routine ones are debug lines (formatting
        # them cost 14% of the server's CPU while 10,000 phones enrolled); failures and slow
        # calls are info.
        quick = self._connection or fields["duration_ms"] < SLOW_MS
        # A phone hanging up its stream (network change, app closed) is routine too: a fleet
        # reconnecting every batch logged a line per stream (14% of the event loop).
        hung_up = self._connection and code == grpc.StatusCode.CANCELLED
        routine = (code == grpc.StatusCode.OK and quick) or hung_up
        (log.debug if routine else log.info)("rpc", **fields)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], call: _Call, exc: Exception) -> None:
    if isinstance(exc, CallsightError):
        code = status_code(exc)
        call.done(code, str(exc))
        await context.abort(code, client_message(exc), trailing_metadata(exc))
    log.exception("unhandled error", method=call.method)
    call.done(grpc.StatusCode.INTERNAL, type(exc).__name__)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")


def _decode(deserializer: Deserializer | None, raw: Any) -> Any:
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except DecodeError as exc:
        raise InvalidArgument(f"request bytes do not decode as the RPC's message: {exc}") from exc


def _refusal(handler: Handler, call: _Call, exc: CallsightError) -> Handler:
    """A handler of the same shape that refuses without reading the request."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _abort(context, call, exc)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _abort(context, call, exc)
        yield  # pragma: no cover - makes this an async generator

    return _handler(handler, streaming if handler.response_streaming else unary)


def _wrap(handler: Handler, call: _Call) -> Handler:
    # The servicer's coroutine or async generator; grpc's stubs type it for the sync API.
    behavior: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    deserializer = handler.request_deserializer

    def decoded(request: Any) -> Any:
        if not handler.request_streaming:
            return _decode(deserializer, request)

        async def each() -> AsyncIterator[Any]:
            # A streaming servicer gets undecodable messages as InvalidArgument items, so it
            # can answer them in-stream (a REJECTED ack) and keep the stream open.
            async for raw in request:
                try:
                    yield _decode(deserializer, raw)
                except InvalidArgument as exc:
                    yield exc

        return each()

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = set_caller(call.caller)
        try:
            response = await behavior(decoded(request), context)
        except grpc.aio.AbortError:
            call.done(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            call.done(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _abort(context, call, exc)
        finally:
            reset_caller(token)
        call.done(grpc.StatusCode.OK)
        return response

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = set_caller(call.caller)
        try:
            async for response in behavior(decoded(request), context):
                yield response
        except grpc.aio.AbortError:
            call.done(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: grpc stopped consuming the responses (the client went away) and
            # the generator is closed later, by asyncio's finaliser, in a context of its own.
            call.done(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _abort(context, call, exc)
        finally:
            reset_caller(token)
        call.done(grpc.StatusCode.OK)

    return _handler(handler, streaming if handler.response_streaming else unary)


def _handler(original: Handler, behavior: Callable[..., Any]) -> Handler:
    """A method handler like ``original`` with ``behavior`` and raw (undecoded) requests."""
    serializer = original.response_serializer
    if original.request_streaming and original.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, None, serializer)
    if original.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, None, serializer)
    if original.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, None, serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, None, serializer)
