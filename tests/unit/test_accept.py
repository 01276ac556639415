"""Extra accept loops: the calls they take are served like grpc's own (interceptors included),
many new calls are taken while handlers are busy, stopping ends them, and a grpcio without the
private names they use falls back to grpc's own accepting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from callsight.server.accept import Acceptors, MethodHandlers, _missing
from callsight.server.app import BUSY_METHODS
from callsight.v1 import admin_pb2, ingest_pb2

SERVICE = "test.Echo"
METHOD = f"/{SERVICE}/Stream"


def _ident(data: bytes) -> bytes:
    return data


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "Stream": grpc.stream_stream_rpc_method_handler(
        _echo, request_deserializer=_ident, response_serializer=_ident
    )
}


class _NeedsToken(grpc.aio.ServerInterceptor):
    """Refuses calls without a ``token`` header, as callsight's interceptor does."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if ("token", "yes") in tuple(details.invocation_metadata or ()):
            return await continuation(details)

        async def refuse(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")

        return grpc.stream_stream_rpc_method_handler(refuse)


async def _serve(per_method: int) -> tuple[grpc.aio.Server, Acceptors, int]:
    interceptors = [_NeedsToken()]
    server = grpc.aio.server(interceptors=interceptors)
    # Registered only through the collector: the calls below are served only if it passes the
    # handlers on.
    collected = MethodHandlers(server)
    collected.as_server().add_registered_method_handlers(SERVICE, HANDLERS)
    port = server.add_insecure_port("127.0.0.1:0")
    acceptors = Acceptors(server, collected.handlers, interceptors, per_method=per_method)
    await server.start()
    acceptors.start()
    return server, acceptors, port


async def _call(channel: grpc.aio.Channel, payload: bytes, token: bool) -> bytes:
    stream = channel.stream_stream(METHOD, request_serializer=_ident, response_deserializer=_ident)
    call = stream(metadata=(("token", "yes"),) if token else ())
    await call.write(payload)
    reply = await call.read()
    await call.done_writing()
    await call.code()
    assert isinstance(reply, bytes)
    return reply


async def test_the_handlers_of_a_generated_registration_are_collected() -> None:
    server = grpc.aio.server()
    collected = MethodHandlers(server)
    collected.as_server().add_registered_method_handlers(SERVICE, HANDLERS)
    assert collected.handlers == {METHOD: HANDLERS["Stream"]}
    await server.stop(None)


async def test_calls_taken_by_the_extra_loops_are_served_and_intercepted() -> None:
    server, acceptors, port = await _serve(per_method=4)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = await asyncio.gather(*(_call(channel, b"%d" % i, True) for i in range(60)))
            assert replies == [b"%d" % i for i in range(60)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                for _ in range(20):  # most land on the extra loops (4 of 5 requests are theirs)
                    await _call(channel, b"x", False)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # grpc's own loop holds one request and these four: they took most of the calls.
        assert acceptors.accepted > 30
    finally:
        await server.stop(None)
        await acceptors.stop()


async def test_stopping_the_server_ends_the_loops() -> None:
    server, acceptors, port = await _serve(per_method=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await _call(channel, b"a", True) == b"a"
    loops = list(acceptors._loops)
    assert len(loops) == 8
    await server.stop(1.0)
    # The shutdown fails the requests they hold: they end by themselves, not by cancellation.
    done, pending = await asyncio.wait(loops, timeout=5)
    assert not pending
    assert not any(task.cancelled() for task in done)
    await acceptors.stop()


async def test_a_grpcio_without_the_private_names_falls_back_with_a_warning() -> None:
    assert _missing(object()) == ["AioServer._request_registered_call", "AioServer.is_running"]
    # A server object without the core one these loops need, as another grpcio might have.
    acceptors = Acceptors(object(), {METHOD: HANDLERS["Stream"]}, [])  # type: ignore[arg-type]
    with capture_logs() as logs:
        acceptors.start()
    assert [entry["event"] for entry in logs] == [
        "grpc accepts one new call at a time per method here"
    ]
    assert acceptors._loops == []
    await acceptors.stop()


def test_the_busy_methods_name_methods_of_the_contract() -> None:
    # A misspelt name would leave its method to grpc's one accept at a time, silently.
    methods = [
        f"/{service.full_name}/{method.name}"
        for module in (admin_pb2, ingest_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    for busy in BUSY_METHODS:
        assert any(m.startswith(busy) for m in methods), busy
    assert f"/{ingest_pb2.DESCRIPTOR.services_by_name['IngestService'].full_name}/Stream" in [
        m for m in methods if m.startswith(BUSY_METHODS)
    ]
