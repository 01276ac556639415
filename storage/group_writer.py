"""Group commit for the small directory tables: concurrent writers share one insert per table.

Every chDB insert costs a fixed 13-34 ms of CPU whatever its size (15 rows or 1,000), so a fleet
enrolling hundreds of devices a second cannot afford an insert each. ``GroupWriter.insert`` queues
its rows with the table's current batch and waits for that batch's insert: the first writer of a
batch starts a drain task that lingers a few milliseconds, writes everything queued for the table
in one insert (while it runs, the next batch gathers) and resolves every waiter with the outcome.
Under sustained load (rows queued again as soon as an insert ends) inserts of a table start at
most every ``busy_gap_s``: a burst then costs a few large inserts a second instead of as many
small ones as the database can take, which would spend the CPU the callers need. The rows queued
and in flight are bounded; a writer past the bound waits for room, and ``close`` writes what is
queued and then refuses new rows, waking every waiter.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.core.errors import Unavailable
from callsight.storage.database import Database

VERSION = "version"

_Key = tuple[str, tuple[str, ...], bool]
_Item = tuple[Sequence[tuple[Any, ...]], "asyncio.Future[int]"]


@dataclass
class _Batch:
    items: list[tuple[Sequence[tuple[Any, ...]], asyncio.Future[int]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass
class GroupWriterStats:
    """Totals, for tests and metrics."""

    inserts: int = 0
    rows: int = 0
    callers: int = 0


class GroupWriter:
    """Writes rows of many concurrent callers as one insert per table."""

    def __init__(
        self,
        db: Database,
        clock: Clock = SYSTEM_CLOCK,
        max_pending_rows: int = 20_000,
        max_batch_rows: int = 5_000,
        linger_s: float = 0.005,
        busy_gap_s: float = 0.4,
    ) -> None:
        self._db = db
        self._clock = clock
        self._max_pending = max_pending_rows
        self._max_batch = max_batch_rows
        self._linger_s = linger_s
        self._busy_gap_s = busy_gap_s
        self._batches: dict[_Key, _Batch] = {}
        self._pending = 0  # rows queued or being inserted
        self._room = asyncio.Condition()
        self._closed = False
        self.stats = GroupWriterStats()

    @property
    def pending_rows(self) -> int:
        """Rows queued or being inserted now."""
        return self._pending

    async def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        stamp_version: bool = False,
    ) -> int:
        """Inserts ``rows`` with the next insert into ``table``; returns once it is committed.

        With ``stamp_version`` every row gets a ``version`` column of clock nanoseconds taken just
        before the insert (returned), so a version is never much older than the row's visibility:
        readers that poll for versions newer than the newest seen do not miss it.
        """
        if not rows:
            return self._clock.now_ns()
        size = len(rows)
        async with self._room:
            # An oversized request still goes alone once nothing else is queued.
            await self._room.wait_for(
                lambda: (
                    self._closed or self._pending == 0 or self._pending + size <= self._max_pending
                )
            )
            if self._closed:
                raise Unavailable("the server is shutting down; retry against another process")
            self._pending += size
        key = (table, tuple(columns), stamp_version)
        batch = self._batches.setdefault(key, _Batch())
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume)
        batch.items.append((rows, done))
        if batch.task is None:
            batch.task = asyncio.create_task(self._drain(key, batch))
        # A caller that gives up does not take its rows back: they are written all the same.
        return await asyncio.shield(done)

    async def _drain(self, key: _Key, batch: _Batch) -> None:
        table, columns, stamp = key
        loop = asyncio.get_running_loop()
        started = -math.inf  # when this drain's previous insert started
        try:
            while batch.items:
                # Closing writes at once; a close that finds a drain asleep waits out its gap.
                gap = 0.0 if self._closed else self._busy_gap_s - (loop.time() - started)
                await asyncio.sleep(max(self._linger_s, gap))
                started = loop.time()
                taken: list[_Item] = []
                count = 0
                while batch.items and (
                    not taken or count + len(batch.items[0][0]) <= self._max_batch
                ):
                    item = batch.items.pop(0)
                    taken.append(item)
                    count += len(item[0])
                await self._write(table, columns, stamp, taken, count)
        finally:
            batch.task = None
            if not batch.items and self._batches.get(key) is batch:
                del self._batches[key]

    async def _write(
        self,
        table: str,
        columns: tuple[str, ...],
        stamp: bool,
        taken: list[_Item],
        count: int,
    ) -> None:
        version = self._clock.now_ns()
        if stamp:
            rows = [(*row, version) for part, _ in taken for row in part]
            names = [*columns, VERSION]
        else:
            rows = [row for part, _ in taken for row in part]
            names = list(columns)
        try:
            await self._db.insert_rows(table, rows, names)
        except Exception as exc:  # every waiter of this insert gets its failure
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
        else:
            self.stats.inserts += 1
            self.stats.rows += count
            self.stats.callers += len(taken)
            for _, done in taken:
                if not done.done():
                    done.set_result(version)
        finally:
            async with self._room:
                self._pending -= count
                self._room.notify_all()

    async def close(self) -> None:
        """Writes what is queued, then refuses new rows; wakes every caller waiting for room."""
        async with self._room:
            self._closed = True
            self._room.notify_all()
        tasks = [b.task for b in self._batches.values() if b.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _consume(future: asyncio.Future[int]) -> None:
    # The caller may have been cancelled; its failure is still reported to whoever awaits.
    if not future.cancelled():
        future.exception()
