"""IdleStreams: one timer ends the streams that wait too long for their next message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from callsight.core.errors import ResourceExhausted, Unavailable
from callsight.server.ingest import IdleStreams, OpenStreams, StreamLimits


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


async def test_silent_streams_behind_busy_ones_are_all_ended_in_their_turn() -> None:
    # The sweep walks the streams from the longest waiting and stops at the first within its
    # timeout: streams that went silent at different moments, between busy ones that re-enter
    # on every message, are each ended once their own timeout passes.
    idle = IdleStreams(0.2)
    busy = [asyncio.create_task(read_all(idle, [0.03] * 40))]
    first = asyncio.create_task(read_all(idle, [0.0, 5.0]))
    await asyncio.sleep(0.3)
    busy.append(asyncio.create_task(read_all(idle, [0.03] * 20)))
    second = asyncio.create_task(read_all(idle, [0.0, 5.0]))
    for silent in (first, second):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(silent, 2)
    assert [await b for b in busy] == [list(range(40)), list(range(20))]


async def test_other_cancellations_pass_through() -> None:
    idle = IdleStreams(10.0)
    reader = asyncio.create_task(read_all(idle, [5.0]))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_the_longest_idle_stream_gives_up_its_slot_on_demand() -> None:
    idle = IdleStreams(300.0)
    oldest = asyncio.create_task(read_all(idle, [0.0, 5.0]))
    await asyncio.sleep(0.1)
    newer = asyncio.create_task(read_all(idle, [0.0, 5.0]))
    busy = asyncio.create_task(read_all(idle, [0.02] * 20))
    await asyncio.sleep(0.1)
    assert not idle.end_longest_idle(1.0)  # nobody has been idle that long
    assert idle.end_longest_idle(0.15)
    with pytest.raises(Unavailable, match=r"gave its slot to a device with something to send"):
        await asyncio.wait_for(oldest, 1)
    assert idle.yielded == 1 and not newer.done()
    assert not idle.end_longest_idle(0.15)  # the next one has waited only 0.1 s
    assert await busy == list(range(20))
    newer.cancel()


def test_a_full_server_admits_a_stream_only_if_an_idle_one_makes_room() -> None:
    limits = StreamLimits(max_streams=2, max_per_device=2, idle_timeout_s=300.0)
    streams = OpenStreams(limits)
    streams.enter(("t", "a"))
    streams.enter(("t", "b"))
    with pytest.raises(ResourceExhausted, match="2 streams open, its limit"):
        streams.enter(("t", "c"), lambda: False)
    made: list[bool] = []
    streams.enter(("t", "c"), lambda: made.append(True) or True)
    assert made == [True] and streams.open == 3  # until the idle one has ended
    streams.leave(("t", "a"))
    streams.enter(("t", "b"), lambda: made.append(True) or True)
    assert made == [True, True] and streams.of(("t", "b")) == 2
    # A device at its own limit gets no room made for it.
    with pytest.raises(ResourceExhausted, match="this device already has 2 streams"):
        streams.enter(("t", "b"), lambda: made.append(True) or True)
    assert made == [True, True]
