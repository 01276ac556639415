"""Several outstanding accepts per busy gRPC method, so new calls do not queue in gRPC core.

grpc.aio (1.85) takes the new calls of each registered method one at a time: it asks core for
the next call, waits for it to arrive through its completion queue, starts the handler, and only
then asks for the one after it. Every accept so costs a few turns of the event loop, and a loop
busy with thousands of streams turns slowly: 10,000 phones syncing got 250-350 new streams/s
into callsight while the rest waited in core's queue of unrequested calls for up to 25 s, with
the pipeline answering in well under a second (the stage log). Standalone (a stream-echo server
beside 1,500 callbacks/s of 0.5 ms Python work on its loop, 1,500 streams opened at once): one
accept at a time took 339-569 new streams/s, eight more accepts per method 956-998/s, 32 more
1,118-1,256/s.

``Acceptors`` keeps ``per_method`` more requests outstanding for each method it is given, and
runs the calls they receive exactly as grpc.aio's own accept loop does (the same handler lookup,
interceptors and cancellation handling, from grpc's Cython module). Those are grpc's private
names: grpcio is pinned, and where one is missing ``Acceptors`` logs a warning and leaves
accepting to grpc alone (correct, only slower). Calls taken here do not count against grpc's own
``maximum_concurrent_rpcs`` limiter; callsight does not set it (it bounds streams itself).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import grpc
import structlog

log = structlog.get_logger("callsight.server")

# Requests kept outstanding per method beside grpc's own (see the figures above).
PER_METHOD = 16

_cygrpc: Any
try:
    _cygrpc = importlib.import_module("grpc._cython.cygrpc")
except ImportError:  # every grpcio has it; without it grpc accepts alone
    _cygrpc = None

_NEEDED = ("_MethodResolver", "_handle_rpc", "_schedule_rpc_coro")


class Acceptors:
    """Extra accept loops for some methods of one started grpc.aio server (its event loop)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        per_method: int = PER_METHOD,
    ) -> None:
        """``handlers``: fully qualified method name ("/package.Service/Method") to the handler
        registered for it; ``interceptors``: the server's, in its order."""
        self._core: Any = getattr(server, "_server", None)
        self._handlers = dict(handlers)
        self._interceptors = tuple(interceptors)
        self._per_method = per_method
        self._loops: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[None]] = set()
        self.accepted = 0  # calls these loops took (the rest grpc's own loop took)
        self.missing = _missing(self._core)

    def start(self) -> None:
        """Starts the loops; call after ``server.start()``."""
        if self.missing:
            log.warning(
                "grpc accepts one new call at a time per method here",
                missing=self.missing,
                grpc_version=grpc.__version__,
            )
            return
        assert _cygrpc is not None
        resolver = _cygrpc._MethodResolver([], self._handlers)
        loop = asyncio.get_running_loop()
        for method in self._handlers:
            for i in range(self._per_method):
                self._loops.append(
                    loop.create_task(self._accept(method, resolver), name=f"accept{i}:{method}")
                )

    async def _accept(self, method: str, resolver: Any) -> None:
        assert _cygrpc is not None
        core, loop, key = self._core, asyncio.get_running_loop(), method.encode()
        while core.is_running():
            try:
                state = await core._request_registered_call(key)
            except Exception:  # the server shutting down fails the requests it still holds
                return
            self.accepted += 1
            handling = _cygrpc._handle_rpc(method, resolver, self._interceptors, state, loop, False)
            call = loop.create_task(
                _cygrpc._schedule_rpc_coro(handling, state, loop, method), name="rpc_task"
            )
            # The loop holds tasks weakly; these are the calls' only strong references.
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def stop(self) -> None:
        """Ends the loops; call after ``server.stop()`` (whose shutdown fails their requests)."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()


def _missing(core: Any) -> list[str]:
    """The private grpc names ``Acceptors`` needs that this grpcio lacks."""
    if _cygrpc is None:
        return ["grpc._cython.cygrpc"]
    missing = [name for name in _NEEDED if not hasattr(_cygrpc, name)]
    for name in ("_request_registered_call", "is_running"):
        if not hasattr(core, name):
            missing.append(f"AioServer.{name}")
    return missing


class MethodHandlers:
    """Passes a generated ``add_*Servicer_to_server`` function's registration on to the server,
    keeping the handlers it registers by method, so each servicer is registered once."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Registers them with the server (the same handlers as one generic handler)."""
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Registers them with the server and keeps each under its fully qualified name."""
        self._server.add_registered_method_handlers(service, handlers)
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def as_server(self) -> grpc.aio.Server:
        """This object where the generated function wants a server (it calls only the two
        methods above)."""
        return cast(grpc.aio.Server, self)
