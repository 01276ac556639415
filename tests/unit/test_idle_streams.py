"""IdleStreams: one timer ends the streams that wait too long for their next message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from callsight.core.errors import Unavailable
from callsight.server.ingest import IdleStreams


async def messages(gaps_s: list[float]) -> AsyncIterator[int]:
    for i, gap in enumerate(gaps_s):
        await asyncio.sleep(gap)
        yield i


async def read_all(idle: IdleStreams, gaps_s: list[float]) -> list[int]:
    got = []
    source = messages(gaps_s)
    while True:
        try:
            got.append(await idle.next_message(source))
        except StopAsyncIteration:
            return got


async def test_a_stream_that_keeps_sending_is_never_ended() -> None:
    idle = IdleStreams(0.4)
    assert await read_all(idle, [0.2] * 6) == list(range(6))  # 1.2 s in all, 0.2 s gaps


async def test_a_silent_stream_is_ended_with_unavailable_and_others_go_on() -> None:
    idle = IdleStreams(0.2)
    silent = asyncio.create_task(read_all(idle, [0.0, 5.0]))
    busy = asyncio.create_task(read_all(idle, [0.05] * 12))
    with pytest.raises(Unavailable, match=r"^no message on this stream for 0.2 s"):
        await asyncio.wait_for(silent, 2)
    assert await busy == list(range(12))


async def test_other_cancellations_pass_through() -> None:
    idle = IdleStreams(10.0)
    reader = asyncio.create_task(read_all(idle, [5.0]))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
