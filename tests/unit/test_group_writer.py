"""GroupWriter: concurrent writers share one insert per table; bounded queue; close drains."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from callsight.core.errors import StorageError, Unavailable
from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter


class FakeDb:
    """Records inserts; each waits for ``gate`` so a test can hold them in flight."""

    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[tuple[Any, ...]], list[str]]] = []
        self.started: list[float] = []  # loop time at which each insert began
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def insert_rows(
        self, table: str, rows: Sequence[tuple[Any, ...]], column_names: Sequence[str]
    ) -> None:
        self.started.append(asyncio.get_running_loop().time())
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.inserts.append((table, list(rows), list(column_names)))


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def writer(db: FakeDb, busy_gap_s: float = 0.0, **kwargs: Any) -> GroupWriter:
    return GroupWriter(cast(Database, db), busy_gap_s=busy_gap_s, **kwargs)


async def test_concurrent_callers_share_one_insert_per_table() -> None:
    db = FakeDb()
    w = writer(db, linger_s=0.01)
    versions = await asyncio.gather(
        *(w.insert("devices", ("id",), [(f"d{i}",)], stamp_version=True) for i in range(200)),
        *(w.insert("claims", ("id",), [(f"c{i}",)]) for i in range(50)),
    )
    assert sorted(t for t, _, _ in db.inserts) == ["claims", "devices"]
    devices = next(rows for t, rows, _ in db.inserts if t == "devices")
    assert len(devices) == 200
    # Every row of the shared insert carries the version its caller was told.
    assert {row[1] for row in devices} == set(versions[:200])
    assert next(cols for t, _, cols in db.inserts if t == "devices") == ["id", "version"]
    assert (w.stats.inserts, w.stats.rows, w.stats.callers) == (2, 250, 250)
    assert w.pending_rows == 0


async def test_next_batch_gathers_while_an_insert_runs() -> None:
    db = FakeDb()
    w = writer(db, linger_s=0.0)
    db.gate.clear()
    first = asyncio.create_task(w.insert("t", ("id",), [(0,)]))
    await settle()
    rest = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(1, 100)]
    await settle()
    db.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(rows) for _, rows, _ in db.inserts] == [1, 99]


async def test_under_load_inserts_of_a_table_start_at_most_every_busy_gap() -> None:
    db = FakeDb()
    w = writer(db, linger_s=0.0, busy_gap_s=0.2)
    db.gate.clear()
    first = asyncio.create_task(w.insert("t", ("id",), [(0,)]))
    await settle()
    rest = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(1, 50)]
    await settle()
    db.gate.set()
    await asyncio.gather(first, *rest)
    # The backlog waited for the gap and went as one insert.
    assert [len(rows) for _, rows, _ in db.inserts] == [1, 49]
    assert db.started[1] - db.started[0] >= 0.19


async def test_an_idle_writer_does_not_wait_the_gap() -> None:
    db = FakeDb()
    w = writer(db, linger_s=0.0, busy_gap_s=30.0)
    for i in range(3):
        await asyncio.wait_for(w.insert("t", ("id",), [(i,)]), timeout=5.0)
    assert [rows for _, rows, _ in db.inserts] == [[(0,)], [(1,)], [(2,)]]


async def test_close_writes_a_backlog_without_waiting_the_gap() -> None:
    db = FakeDb()
    w = writer(db, linger_s=0.0, busy_gap_s=30.0)
    db.gate.clear()
    first = asyncio.create_task(w.insert("t", ("id",), [(0,)]))
    await settle()
    rest = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(1, 5)]
    await settle()
    closing = asyncio.create_task(w.close())
    await settle()
    db.gate.set()
    await asyncio.wait_for(closing, timeout=5.0)
    await asyncio.gather(first, *rest)
    assert [len(rows) for _, rows, _ in db.inserts] == [1, 4]


async def test_queue_is_bounded_and_callers_past_it_wait() -> None:
    db = FakeDb()
    w = writer(db, max_pending_rows=10, max_batch_rows=4, linger_s=0.0)
    db.gate.clear()
    admitted = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(10)]
    await settle()
    assert w.pending_rows == 10
    late = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(10, 15)]
    await settle()
    # Past the bound nothing more is queued: the late callers wait for room.
    assert w.pending_rows == 10
    assert not any(t.done() for t in late)
    db.gate.set()
    await asyncio.gather(*admitted, *late)
    assert sorted(r[0] for _, rows, _ in db.inserts for r in rows) == list(range(15))
    # No insert is larger than max_batch_rows.
    assert max(len(rows) for _, rows, _ in db.inserts) <= 4
    assert w.pending_rows == 0


async def test_a_request_larger_than_the_bound_goes_alone() -> None:
    db = FakeDb()
    w = writer(db, max_pending_rows=3, linger_s=0.0)
    await w.insert("t", ("id",), [(i,) for i in range(5)])
    assert [len(rows) for _, rows, _ in db.inserts] == [5]


async def test_a_failed_insert_fails_every_caller_of_it_and_frees_room() -> None:
    db = FakeDb()
    db.fail = StorageError("boom", code=241)
    w = writer(db, max_pending_rows=5, linger_s=0.0)
    results = await asyncio.gather(
        *(w.insert("t", ("id",), [(i,)]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in results)
    assert w.pending_rows == 0
    db.fail = None
    await w.insert("t", ("id",), [(9,)])
    assert db.inserts[-1][1] == [(9,)]


async def test_close_writes_what_is_queued_and_refuses_waiters() -> None:
    db = FakeDb()
    w = writer(db, max_pending_rows=2, linger_s=0.0)
    db.gate.clear()
    queued = [asyncio.create_task(w.insert("t", ("id",), [(i,)])) for i in range(2)]
    await settle()
    waiting = asyncio.create_task(w.insert("t", ("id",), [(2,)]))
    await settle()
    closing = asyncio.create_task(w.close())
    await settle()
    with pytest.raises(Unavailable):
        await waiting
    db.gate.set()
    await closing
    await asyncio.gather(*queued)
    assert sorted(r[0] for _, rows, _ in db.inserts for r in rows) == [0, 1]
    with pytest.raises(Unavailable):
        await w.insert("t", ("id",), [(3,)])
