"""Calls that arrive while the server starts are held until it is ready, for a bounded time:
a fleet reconnecting during a restart is served the moment the server is ready, instead of
being refused and backing off further."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from callsight.server import interceptor
from callsight.server.app import Service
from tests.integration.helpers import new_tenant


async def test_a_call_arriving_while_starting_is_served_once_ready(
    service: Service, channel: grpc.aio.Channel
) -> None:
    service._ready.clear()
    try:
        started = time.perf_counter()
        call = asyncio.ensure_future(new_tenant(channel))
        await asyncio.sleep(0.3)
        assert not call.done()  # held, not refused
    finally:
        service._ready.set()
    tenant = await asyncio.wait_for(call, 10)
    assert tenant.tenant_id
    assert time.perf_counter() - started >= 0.3


async def test_a_call_held_too_long_is_unavailable_naming_the_start(
    service: Service, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interceptor, "STARTUP_HOLD_S", 0.2)
    service._ready.clear()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await new_tenant(channel)
    finally:
        service._ready.set()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the server is starting" in (refused.value.details() or "")
    assert (await new_tenant(channel)).tenant_id  # and serves again once ready
