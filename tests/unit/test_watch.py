"""WatchHub: updates built once per set for the watchers that saw the same, batches counted at
once, a set's changes coalesced within its interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from callsight.pipeline.chunk import RowChunk
from callsight.pipeline.dedup import Outcome
from callsight.pipeline.watch import FIELDS, Loaded, Watcher, WatchFilter, WatchHub
from callsight.storage.filters import INCOMING
from callsight.storage.summaries import Totals
from callsight.v1 import report_pb2

FILTER = WatchFilter(tenant_id="t", from_ms=0, timezone="UTC")
SCHEMA = pa.schema(
    [
        ("started_at", pa.int64()),
        ("type", pa.uint8()),
        ("client_key", pa.uint64()),
        ("duration_s", pa.uint32()),
    ]
)
NOW_MS = 1_000_000
# Bounds a hung test only: every wait below ends as soon as the hub publishes.
WAIT_S = 10.0
NEVER_S = 3600.0  # a tick or interval no test reaches


async def load_nothing(_: WatchFilter) -> Loaded:
    return Loaded(Totals(**dict.fromkeys(FIELDS, 0)), {})


def no_excluded(_: str) -> npt.NDArray[np.uint64]:
    return np.zeros(0, dtype=np.uint64)


def hub(*, tick_s: float = NEVER_S, interval_s: float = 0.0) -> WatchHub:
    # A clock that stands still: sharing never depends on how fast the test runs.
    return WatchHub(load_nothing, no_excluded, lambda: NOW_MS, tick_s=tick_s, interval_s=interval_s)


def ack(h: WatchHub, employee_id: str, calls: int, seconds: int = 30) -> None:
    rows = RowChunk(
        SCHEMA,
        calls,
        (
            np.full(calls, NOW_MS, dtype=np.int64),
            np.full(calls, INCOMING, dtype=np.uint8),
            np.arange(calls, dtype=np.uint64),
            np.full(calls, seconds, dtype=np.uint32),
        ),
    )
    outcomes = np.full(calls, Outcome.ACCEPTED, dtype=np.uint8)
    h.calls_acked(FILTER.tenant_id, employee_id, rows, outcomes, NOW_MS)


def employees(update: report_pb2.WatchSummaryUpdate) -> list[str]:
    return [e.employee_id for e in update.employees]


@asynccontextmanager
async def running(h: WatchHub) -> AsyncIterator[None]:
    task = asyncio.ensure_future(h.run())
    try:
        yield
    finally:
        task.cancel()


async def next_update(watcher: Watcher) -> report_pb2.WatchSummaryUpdate:
    await asyncio.wait_for(watcher.changed.wait(), WAIT_S)
    return watcher.update()


async def test_watchers_that_saw_the_same_share_one_update() -> None:
    h = hub()
    async with h.watch(FILTER) as a, h.watch(FILTER) as b:
        assert a.update() is b.update()  # both first updates: every employee
        ack(h, "e1", 3)
        h.tick()
        assert a.changed.is_set() and b.changed.is_set()
        shared = a.update()
        assert b.update() is shared
        assert shared.summary.total_calls == 3
        assert shared.summary.incoming_duration_s == 90
        assert employees(shared) == ["e1"]
        assert h.stats.publishes == 1

        async with h.watch(FILTER) as late:
            first = late.update()
            assert first is not shared  # it has seen nothing: every employee
            assert employees(first) == ["e1"] and first.summary == shared.summary

        # b keeps up, a falls behind: a's next update holds both changes, b's only the last.
        ack(h, "e2", 1)
        h.tick()
        assert employees(b.update()) == ["e2"]
        ack(h, "e3", 2)
        h.tick()
        caught_up, behind = b.update(), a.update()
        assert caught_up is not behind
        assert employees(caught_up) == ["e3"]
        assert employees(behind) == ["e2", "e3"]
        assert behind.summary == caught_up.summary
        assert behind.summary.total_calls == 6


async def test_an_ack_is_counted_and_published_at_once_when_changes_are_rare() -> None:
    h = hub(tick_s=NEVER_S, interval_s=0.5)
    async with h.watch(FILTER) as watcher, running(h):
        watcher.update()
        ack(h, "e1", 4)
        # No tick is due for an hour: the ack itself brings the publish.
        update = await next_update(watcher)
        assert update.summary.total_calls == 4


async def test_changes_inside_the_interval_wait_for_its_end_and_go_out_together() -> None:
    h = hub(interval_s=NEVER_S)
    async with h.watch(FILTER) as watcher:
        watcher.update()
        ack(h, "e1", 1)
        h.tick()
        assert watcher.changed.is_set()  # nothing published for an interval: at once
        watcher.update()
        ack(h, "e2", 2)
        h.tick()
        ack(h, "e1", 3)
        h.tick()
        assert not watcher.changed.is_set()  # counted, held for the interval's end
        assert h.stats.batches == 3 and h.stats.publishes == 1
        watcher.counters.published_at -= NEVER_S  # the interval ends
        h.tick()
        assert watcher.changed.is_set()
        update = watcher.update()
        assert update.summary.total_calls == 6
        assert employees(update) == ["e1", "e2"]


async def test_a_held_change_goes_out_when_the_interval_ends_without_a_tick() -> None:
    h = hub(tick_s=NEVER_S, interval_s=0.05)
    async with h.watch(FILTER) as watcher, running(h):
        watcher.update()
        ack(h, "e1", 1)
        await next_update(watcher)
        ack(h, "e1", 2)  # inside the interval: the hub wakes at its end, not after tick_s
        update = await next_update(watcher)
        assert update.summary.total_calls == 3
        assert h.stats.publishes == 2
