"""Batcher: flush by rows, bytes or age; bounded writes in flight; bounded retries of transient
failures; refusals fail fast; close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from callsight.core.errors import InvalidArgument, StorageError, StorageRefused, Unavailable
from callsight.pipeline.batcher import EARLY_ROWS, Batcher
from callsight.pipeline.chunk import RowChunk
from callsight.pipeline.settings import PipelineSettings
from callsight.server.config import Config
from tests.faults import FaultInjectingWriter

LONG_MS = 60_000  # an age limit no test reaches


def settings(**changes: Any) -> PipelineSettings:
    """The server's default pipeline settings with ``changes``."""
    return replace(Config().pipeline_settings(), **changes)


SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def rows(start: int, count: int) -> RowChunk:
    ids = np.arange(start, start + count, dtype=np.int64)
    return RowChunk(SCHEMA, count, (ids, [f"n{i}" for i in range(start, start + count)]))


def ids(table: pa.Table) -> list[int]:
    return list(table.column("id").to_pylist())


class RecordingSink:
    """Keeps every write it got, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, pa.Table, str]] = []

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        self.writes.append((table, rows, token))


class BlockingSink(RecordingSink):
    """Holds every write until ``release`` is set and records the most writes at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.active = 0
        self.max_active = 0
        self.started: list[int] = []

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        self.started.append(rows.column("id")[0].as_py())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        await super().write(table, rows, token)


class TokenSink(FaultInjectingWriter):
    """A FaultInjectingWriter that also remembers the token of every attempt."""

    def __init__(self, inner: RecordingSink) -> None:
        super().__init__(inner)
        self.tokens: list[str] = []

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        self.tokens.append(token)
        await super().write(table, rows, token)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Polls ``condition`` until it holds or the timeout passes (the test's assert then fails)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)


async def done(futures: Sequence[asyncio.Future[None]]) -> None:
    await asyncio.wait_for(asyncio.gather(*futures), 2)


async def test_flush_at_max_rows_resolves_after_the_sink_got_exactly_those_rows() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=LONG_MS))
    first = batcher.add("calls", rows(0, 600))
    await asyncio.sleep(0.01)
    assert len(first) == 1 and not first[0].done()
    assert batcher.stats.rows_buffered == 600
    second = batcher.add("calls", rows(600, 400))
    await done(first + second)
    assert len(sink.writes) == 1
    table, written, _ = sink.writes[0]
    assert table == "calls"
    assert written.equals(rows(0, 1_000).to_arrow())
    stats = batcher.stats
    assert (stats.rows_buffered, stats.flushes_done, stats.rows_written) == (0, 1, 1_000)
    await batcher.close(1)


async def test_flush_at_max_bytes() -> None:
    sink = RecordingSink()
    chunk = rows(0, 100)
    batcher = Batcher(
        sink, settings(max_rows=1_000_000, max_bytes=chunk.nbytes() * 2, max_age_ms=LONG_MS)
    )
    first = batcher.add("calls", chunk)
    await asyncio.sleep(0.01)
    assert not first[0].done()
    second = batcher.add("calls", rows(100, 100))
    await done(first + second)
    assert [ids(w[1]) for w in sink.writes] == [list(range(200))]
    await batcher.close(1)


async def test_flush_at_max_age() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=20))
    await batcher.start()
    futures = batcher.add("calls", rows(0, 10))
    assert not futures[0].done()
    await done(futures)
    assert [ids(w[1]) for w in sink.writes] == [list(range(10))]
    await batcher.close(1)


async def test_rows_that_age_while_every_writer_is_busy_join_one_flush() -> None:
    sink = BlockingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=5, max_in_flight=1))
    first = batcher.add("calls", rows(0, 10))
    await until(lambda: sink.active == 1)  # flushed at age: the one writer was free
    later: list[asyncio.Future[None]] = []
    for i in range(1, 4):  # each add ages past max_age_ms while the writer is busy
        later += batcher.add("calls", rows(i * 10, 10))
        await asyncio.sleep(0.015)
    assert batcher.stats.flushes_pending == 1
    assert batcher.stats.rows_buffered == 30
    sink.release.set()
    await done(first + later)
    # The free writer took the whole buffer: one insert, not one per age.
    assert [ids(w[1]) for w in sink.writes] == [list(range(10)), list(range(10, 40))]
    # Idle again: age flushes as before.
    await done(batcher.add("calls", rows(40, 5)))
    assert ids(sink.writes[-1][1]) == list(range(40, 45))
    await batcher.close(1)


async def test_one_aged_flush_per_table_at_a_time_and_tables_do_not_wait_for_each_other() -> None:
    sink = BlockingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=5, max_in_flight=2))
    first = batcher.add("calls", rows(0, 10))
    await until(lambda: sink.active == 1)
    later = batcher.add("calls", rows(10, 10))
    await asyncio.sleep(0.02)
    later += batcher.add("calls", rows(20, 10))
    telemetry = batcher.add("telemetry", rows(100, 5))
    # A writer is free: telemetry's aged rows go at once; calls' wait for the calls insert.
    await until(lambda: sink.active == 2)
    await asyncio.sleep(0.02)
    assert sorted(sink.started) == [0, 100]
    assert batcher.stats.rows_buffered == 20
    sink.release.set()
    await done(first + later + telemetry)
    calls = [ids(w[1]) for w in sink.writes if w[0] == "calls"]
    assert calls == [list(range(10)), list(range(10, 30))]
    await batcher.close(1)


async def test_an_aged_table_waits_for_a_free_writer_and_keeps_growing() -> None:
    sink = BlockingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=5, max_in_flight=1))
    first = batcher.add("calls", rows(0, 10))
    await until(lambda: sink.active == 1)
    telemetry = batcher.add("telemetry", rows(100, 5))
    await asyncio.sleep(0.02)
    telemetry += batcher.add("telemetry", rows(105, 5))
    assert batcher.stats.flushes_pending == 1
    sink.release.set()
    await done(first + telemetry)
    assert [ids(w[1]) for w in sink.writes if w[0] == "telemetry"] == [list(range(100, 110))]
    await batcher.close(1)


async def test_a_due_buffer_still_flushes_at_max_rows() -> None:
    sink = BlockingSink()
    batcher = Batcher(sink, settings(max_rows=20, max_age_ms=5, max_in_flight=1))
    first = batcher.add("calls", rows(0, 10))
    await until(lambda: sink.active == 1)
    later = batcher.add("calls", rows(10, 10))
    await asyncio.sleep(0.02)
    later += batcher.add("calls", rows(20, 15))  # crosses max_rows: cut at 20 rows
    assert batcher.stats.flushes_pending == 2
    sink.release.set()
    await done(first + later)
    assert [len(ids(w[1])) for w in sink.writes] == [10, 20, 5]
    await batcher.close(1)


async def test_buffers_are_per_table() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_rows=10, max_age_ms=LONG_MS))
    calls = batcher.add("calls", rows(0, 5))
    contacts = batcher.add("contacts", rows(100, 10))
    await done(contacts)
    assert not calls[0].done()
    await batcher.close(1)
    await done(calls)
    assert [(w[0], ids(w[1])) for w in sink.writes] == [
        ("contacts", list(range(100, 110))),
        ("calls", list(range(5))),
    ]


async def test_an_add_that_crosses_max_rows_is_split_across_two_flushes() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_rows=1_000, max_age_ms=LONG_MS))
    first = batcher.add("calls", rows(0, 700))
    second = batcher.add("calls", rows(700, 700))
    assert len(first) == 1 and len(second) == 2
    await done(first + second[:1])
    assert not second[1].done()
    assert [ids(w[1]) for w in sink.writes] == [list(range(1_000))]
    await batcher.close(1)
    await done(second)
    assert [ids(w[1]) for w in sink.writes] == [list(range(1_000)), list(range(1_000, 1_400))]
    # Slices of one parent table share buffers; their tokens must still differ.
    assert sink.writes[0][2] != sink.writes[1][2]


async def test_an_empty_add_has_nothing_to_wait_for() -> None:
    batcher = Batcher(RecordingSink(), settings(max_age_ms=LONG_MS))
    assert batcher.add("calls", rows(0, 0)) == []
    assert batcher.stats.rows_buffered == 0
    await batcher.close(1)


async def test_rows_with_other_columns_than_the_buffer_are_refused() -> None:
    batcher = Batcher(RecordingSink(), settings(max_age_ms=LONG_MS))
    futures = batcher.add("calls", rows(0, 5))
    with pytest.raises(InvalidArgument):
        other = pa.schema([("id", pa.int32())])
        batcher.add("calls", RowChunk(other, 1, (np.array([1], dtype=np.int32),)))
    await batcher.close(1)
    await done(futures)


async def test_at_most_max_in_flight_writes_at_once_and_flushes_keep_their_order() -> None:
    sink = BlockingSink()
    batcher = Batcher(sink, settings(max_rows=10, max_age_ms=LONG_MS, max_in_flight=2))
    futures = [f for i in range(5) for f in batcher.add("calls", rows(i * 10, 10))]
    await until(lambda: sink.active == 2)
    await asyncio.sleep(0.01)
    assert sink.active == 2
    assert sorted(sink.started) == [0, 10]
    assert batcher.stats.flushes_pending == 5
    sink.release.set()
    await done(futures)
    assert sink.max_active == 2
    assert sorted(ids(w[1])[0] for w in sink.writes) == [0, 10, 20, 30, 40]
    await batcher.close(1)


async def test_a_failed_write_is_retried_with_the_same_token_until_it_succeeds() -> None:
    recorder = RecordingSink()
    sink = TokenSink(recorder)
    sink.fail_next(3)
    batcher = Batcher(
        sink, settings(max_rows=100, max_age_ms=LONG_MS, retry_initial_s=0.001, retry_max_s=0.004)
    )
    futures = batcher.add("calls", rows(0, 100))
    await done(futures)
    assert (sink.attempts, sink.failures) == (4, 3)
    assert len(set(sink.tokens)) == 1
    assert len(recorder.writes) == 1
    assert recorder.writes[0][1].equals(rows(0, 100).to_arrow())
    assert recorder.writes[0][2] == sink.tokens[0]
    assert batcher.stats.retries == 3
    assert batcher.stats.flushes_done == 1
    await batcher.close(1)


async def test_no_future_resolves_while_the_sink_keeps_failing() -> None:
    recorder = RecordingSink()
    sink = FaultInjectingWriter(recorder)
    sink.fail_until_cleared()
    batcher = Batcher(
        sink, settings(max_rows=100, max_age_ms=LONG_MS, retry_initial_s=0.001, retry_max_s=0.002)
    )
    futures = batcher.add("calls", rows(0, 100))
    await until(lambda: sink.failures >= 5)
    assert sink.failures >= 5
    assert not futures[0].done()
    assert recorder.writes == []
    sink.clear()
    await done(futures)
    assert len(recorder.writes) == 1
    await batcher.close(1)


async def test_close_flushes_pending_rows() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_age_ms=LONG_MS))
    futures = batcher.add("calls", rows(0, 10)) + batcher.add("calls", rows(10, 5))
    await batcher.close(1)
    assert all(f.done() and f.exception() is None for f in futures)
    assert [ids(w[1]) for w in sink.writes] == [list(range(15))]
    await batcher.close(1)  # idempotent


async def test_close_abandons_unwritten_batches_with_unavailable() -> None:
    recorder = RecordingSink()
    sink = FaultInjectingWriter(recorder)
    sink.fail_until_cleared()
    batcher = Batcher(
        sink, settings(max_rows=10, max_age_ms=LONG_MS, retry_initial_s=0.001, retry_max_s=0.002)
    )
    futures = batcher.add("calls", rows(0, 10)) + batcher.add("calls", rows(10, 3))
    await asyncio.wait_for(batcher.close(timeout_s=0.05), 2)
    for future in futures:
        assert future.done()
        assert isinstance(future.exception(), Unavailable)
    assert recorder.writes == []
    assert batcher.stats.flushes_pending == 0


async def test_add_after_close_raises_unavailable() -> None:
    batcher = Batcher(RecordingSink(), settings(max_age_ms=LONG_MS))
    await batcher.close(1)
    with pytest.raises(Unavailable):
        batcher.add("calls", rows(0, 1))


async def test_equal_content_gets_equal_tokens() -> None:
    tokens = []
    for _ in range(2):
        sink = RecordingSink()
        batcher = Batcher(sink, settings(max_age_ms=LONG_MS))
        batcher.add("calls", rows(0, 10))
        batcher.add("calls", rows(10, 10))
        await batcher.close(1)
        tokens.append(sink.writes[0][2])
    assert tokens[0] == tokens[1]
    assert tokens[0].startswith("calls-")


TOO_MANY_PARTS = 252
TYPE_MISMATCH = 53


async def test_a_transient_error_by_code_is_retried_until_it_succeeds() -> None:
    recorder = RecordingSink()
    sink = FaultInjectingWriter(recorder)
    sink.fail_next(2, code=TOO_MANY_PARTS)
    batcher = Batcher(
        sink, settings(max_rows=10, max_age_ms=LONG_MS, retry_initial_s=0.001, retry_max_s=0.002)
    )
    futures = batcher.add("calls", rows(0, 10))
    await done(futures)
    assert (sink.attempts, sink.failures) == (3, 2)
    assert [ids(w[1]) for w in recorder.writes] == [list(range(10))]
    assert (batcher.stats.retries, batcher.stats.flushes_failed) == (2, 0)
    await batcher.close(1)


async def test_a_refused_write_fails_fast_without_stalling_the_next_flushes() -> None:
    recorder = RecordingSink()
    sink = FaultInjectingWriter(recorder)
    sink.fail_until_cleared(code=TYPE_MISMATCH, tables=["calls"])
    # One writer and retries that would take minutes: only failing fast lets the rest through.
    batcher = Batcher(
        sink,
        settings(
            max_rows=10,
            max_age_ms=LONG_MS,
            max_in_flight=1,
            retry_initial_s=60,
            retry_max_s=60,
            retry_max_elapsed_s=3_600,
        ),
    )
    refused = batcher.add("calls", rows(0, 10))
    contacts = batcher.add("contacts", rows(100, 10))
    telemetry = batcher.add("telemetry", rows(200, 10))
    await done(contacts + telemetry)
    (future,) = refused
    assert future.done()
    error = future.exception()
    assert isinstance(error, StorageRefused)
    assert (error.code, error.name) == (TYPE_MISMATCH, "TYPE_MISMATCH")
    assert sink.failures == 1  # never retried
    assert [w[0] for w in recorder.writes] == ["contacts", "telemetry"]
    stats = batcher.stats
    assert (stats.retries, stats.flushes_failed, stats.flushes_done) == (0, 1, 2)
    assert stats.flushes_pending == 0
    await batcher.close(1)


async def test_retries_stop_at_the_configured_bound() -> None:
    recorder = RecordingSink()
    sink = FaultInjectingWriter(recorder)
    sink.fail_until_cleared(code=TOO_MANY_PARTS)
    batcher = Batcher(
        sink,
        settings(
            max_rows=10,
            max_age_ms=LONG_MS,
            retry_initial_s=0.001,
            retry_max_s=0.002,
            retry_max_elapsed_s=0.05,
        ),
    )
    futures = batcher.add("calls", rows(0, 10))
    await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2)
    error = futures[0].exception()
    assert isinstance(error, StorageError) and not isinstance(error, StorageRefused)
    assert error.code == TOO_MANY_PARTS
    attempts = sink.attempts
    assert attempts >= 2  # it was retried ...
    await asyncio.sleep(0.05)
    assert sink.attempts == attempts  # ... and then left alone
    assert batcher.stats.flushes_failed == 1 and batcher.stats.flushes_pending == 0
    # The writer is free for the next flush.
    sink.clear()
    await done(batcher.add("calls", rows(10, 10)))
    assert [ids(w[1]) for w in recorder.writes] == [list(range(10, 20))]
    await batcher.close(1)


async def test_an_unexpected_error_is_a_bug_and_is_not_retried() -> None:
    class BrokenSink(RecordingSink):
        async def write(self, table: str, rows: pa.Table, token: str) -> None:
            raise TypeError("a bug")

    batcher = Batcher(BrokenSink(), settings(max_rows=10, max_age_ms=LONG_MS))
    futures = batcher.add("calls", rows(0, 10))
    await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2)
    assert isinstance(futures[0].exception(), TypeError)
    assert batcher.stats.retries == 0
    await batcher.close(1)


async def test_a_buffer_filling_fast_is_flushed_at_half_its_age_and_a_trickle_at_its_age() -> None:
    sink = RecordingSink()
    batcher = Batcher(sink, settings(max_rows=50_000, max_age_ms=400))
    await batcher.start()
    started = asyncio.get_running_loop().time()
    fast = batcher.add("calls", rows(0, EARLY_ROWS))
    slow = batcher.add("telemetry", rows(0, EARLY_ROWS - 1))
    await done(fast)
    fast_s = asyncio.get_running_loop().time() - started
    await done(slow)
    slow_s = asyncio.get_running_loop().time() - started
    assert 0.2 <= fast_s < 0.35 and slow_s >= 0.4
    assert [(w[0], w[1].num_rows) for w in sink.writes] == [
        ("calls", EARLY_ROWS),
        ("telemetry", EARLY_ROWS - 1),
    ]
    await batcher.close(1)
