"""Reduce by size or age, then write with a bounded number of inserts in flight.

Many small chunks of rows (``RowChunk``: plain columns, one per device upload) are buffered per
ClickHouse table and flushed as one insert when the buffer reaches ``max_rows`` or ``max_bytes``
or turns ``max_age_ms`` old, whichever comes first. A flush concatenates its chunks column by
column and builds one Arrow table, in a thread, so Arrow's fixed cost per array is paid once per
flush, not once per upload. ``max_bytes`` counts ``RowChunk.nbytes()``, an estimate of the Arrow
size from the columns (numpy ``nbytes``, characters of str and bytes values) taken at ``add()``.

A buffer that holds ``EARLY_ROWS`` rows or more when half its age has passed is cut then, as if
aged: rows arriving that fast (500-call batches at 36k calls/s) fill an insert whose fixed cost is
shared enough, and waiting the full age only delays their acks (ack p99 300-400 ms instead of
650-720 ms, for up to a fifth more CPU in that fleet). A trickle of small batches (phones
syncing a few calls) still waits the full age for company, so it makes no more inserts.

Age says when rows may wait no longer for company; it cuts a buffer only when the table has no
flush queued or being written and a writer is free. Otherwise the buffer stays open, keeps
growing (up to ``max_rows`` or ``max_bytes``) and is due: the writer that finishes the table's
flush, or the next one free, takes it whole. Under load (a backfill) a table's inserts therefore
grow with the load, one after another, instead of staying at what ``max_age_ms`` collects: an
insert's fixed cost in ClickHouse (parts, deduplication log, materialised views: ~40-70 ms of
CPU measured in chDB) is most of a small insert's. An aged row waits at most for the table's
insert in flight on top of its age; an idle table still flushes at its age, as before.

Flushes queue in order for at most ``max_in_flight`` concurrent writes. A write that fails
transiently is retried with backoff, under the same deduplication token, for at most
``retry_max_elapsed_s``; one the database refuses for good (``StorageRefused``: a type error, an
unknown column) or an unexpected error (a bug) is not retried. Either way the flush's futures then
fail with the error, so its batches are answered and give their budget back instead of stalling
every other device. Nothing is acknowledged before it is written. An optional ``FlushObserver``
(the server's metrics) is told of each flush written and each failed insert attempt.

The batcher does not bound memory itself: buffers and the flush queue grow only through
``add()``, and the ingest stage bounds those with a ``ByteBudget`` it acquires before ``add()``
and releases once the futures ``add()`` returned are done.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import structlog

from callsight.core.errors import InvalidArgument, StorageError, StorageRefused, Unavailable
from callsight.pipeline.chunk import RowChunk, concat
from callsight.pipeline.settings import PipelineSettings
from callsight.pipeline.stages import StageTimes
from callsight.storage.writer import Sink

log = structlog.get_logger(__name__)

# A buffer with at least this many rows at half its age is flushed then (see the module's doc).
EARLY_ROWS = 2_000


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot for progress output and metrics."""

    rows_buffered: int
    bytes_buffered: int
    flushes_pending: int
    flushes_done: int
    rows_written: int
    retries: int
    flushes_failed: int
    inserts_in_flight: int  # flushes a writer is preparing or inserting now


class FlushObserver(Protocol):
    """Told of every flush's outcome, on the event loop; must not block (metrics)."""

    def written(self, table: str, rows: int, seconds: float) -> None:
        """A flush of ``rows`` rows was written ``seconds`` after a writer took it."""
        ...

    def write_failed(self, table: str, error_class: str) -> None:
        """An insert attempt failed: ``error_class`` is "transient" (retried unless out of time),
        "refused" (never retried) or "unexpected" (a bug)."""
        ...


class _NoObserver:
    def written(self, table: str, rows: int, seconds: float) -> None:
        pass

    def write_failed(self, table: str, error_class: str) -> None:
        pass


@dataclass
class _Buffer:
    schema: pa.Schema
    started: float
    parts: list[RowChunk] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # aged while its table's flush or every writer was busy: taken next


@dataclass
class _Flush:
    table: str
    parts: list[RowChunk]
    waiters: list[asyncio.Future[None]]
    rows: int
    queued: float = field(default_factory=time.perf_counter)


class _Hasher:
    """A write-only file that feeds SHA-256, so hashing a table's IPC stream copies nothing."""

    closed = False

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _prepare(flush: _Flush) -> tuple[pa.Table, str]:
    """The flush's one Arrow table and its deduplication token."""
    rows = concat(flush.parts).to_arrow()
    hasher = _Hasher()
    # The IPC stream encodes exactly the logical content, so equal tokens mean equal rows and
    # a deduplicated insert can never drop different data.
    with pa.ipc.new_stream(pa.PythonFile(hasher, mode="w"), rows.schema) as stream:
        stream.write_table(rows)
    return rows, f"{flush.table}-{hasher.digest.hexdigest()}"


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        # A caller that stopped waiting cancelled only its own future.
        if not waiter.done():
            waiter.set_result(None)


def _fail(waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
            # Callers that already gave up need not retrieve it; asyncio would log it otherwise.
            waiter.exception()


def _transient(exc: Exception) -> bool:
    """Whether the same insert may succeed if sent again."""
    if isinstance(exc, StorageRefused):
        return False
    # No answer, or an overloaded or briefly unavailable database; anything else is a bug.
    return isinstance(exc, StorageError | Unavailable | OSError | TimeoutError)


def error_class(exc: Exception) -> str:
    """The class of a failed insert, as ``FlushObserver.write_failed`` reports it."""
    if isinstance(exc, StorageRefused):
        return "refused"
    return "transient" if _transient(exc) else "unexpected"


def _abandon(waiters: list[asyncio.Future[None]]) -> None:
    _fail(waiters, Unavailable("shutting down before the batch was written; re-send it"))


class Batcher:
    """Buffers rows per ClickHouse table and writes them in large deduplicated Arrow inserts."""

    def __init__(
        self,
        sink: Sink,
        settings: PipelineSettings,
        stages: StageTimes | None = None,
        observer: FlushObserver | None = None,
    ) -> None:
        self._sink = sink
        self._stages = stages or StageTimes()
        self._observer: FlushObserver = observer or _NoObserver()
        self._max_rows = settings.max_rows
        self._max_bytes = settings.max_bytes
        self._max_age_s = settings.max_age_ms / 1000
        self._max_in_flight = settings.max_in_flight
        self._backoff_initial_s = settings.retry_initial_s
        self._backoff_max_s = settings.retry_max_s
        self._retry_max_elapsed_s = settings.retry_max_elapsed_s
        self._buffers: dict[str, _Buffer] = {}
        # Unbounded by design: its contents are bounded by the ingest stage's ByteBudget.
        self._queue: asyncio.Queue[_Flush | None] = asyncio.Queue()
        self._pending: dict[int, _Flush] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._rows_buffered = 0
        self._bytes_buffered = 0
        self._flushes_done = 0
        self._rows_written = 0
        self._retries = 0
        # When the oldest insert failure since the last success happened (None: writes succeed).
        self._failing_since: float | None = None
        self._flushes_failed = 0
        self._writing = 0
        self._flights: dict[str, int] = {}  # flushes queued or being written, per table

    @property
    def failing(self) -> bool:
        """Whether inserts are failing now: one failed since the last that succeeded."""
        return self._failing_since is not None

    @property
    def stats(self) -> BatcherStats:
        """Buffered and pending now; flushes, rows written and retries since creation."""
        return BatcherStats(
            rows_buffered=self._rows_buffered,
            bytes_buffered=self._bytes_buffered,
            flushes_pending=len(self._pending),
            flushes_done=self._flushes_done,
            rows_written=self._rows_written,
            retries=self._retries,
            flushes_failed=self._flushes_failed,
            inserts_in_flight=self._writing,
        )

    async def start(self) -> None:
        """Starts the writer tasks; ``add()`` and ``close()`` also start them if needed."""
        self._start_workers()

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"batcher-writer-{i}")
                for i in range(self._max_in_flight)
            ]

    def add(self, table: str, rows: RowChunk) -> list[asyncio.Future[None]]:
        """Buffers ``rows`` for ``table``; returns the futures of the flushes that will hold them.

        Each future resolves once its flush is committed, or fails with ``Unavailable`` if the
        batcher closed first, or with the write's error if the flush failed for good. Rows past
        ``max_rows`` spill into the next flush, so one add may get several futures. Never waits:
        a full buffer is handed to the writers at once. Raises ``Unavailable`` after ``close()``
        and ``InvalidArgument`` if the columns differ from those already buffered for ``table``.
        """
        if self._closed:
            raise Unavailable("shutting down; re-send the batch")
        buffer = self._buffers.get(table)
        if (
            buffer is not None
            and rows.schema is not buffer.schema
            and not rows.schema.equals(buffer.schema)
        ):
            raise InvalidArgument(f"rows for {table!r} do not have the buffered columns")
        futures: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        rest: RowChunk | None = rows if rows.num_rows > 0 else None
        while rest is not None:
            buffer = self._buffers.get(table)
            if buffer is None:
                buffer = self._new_buffer(loop, table, rest.schema)
            take = min(rest.num_rows, self._max_rows - buffer.rows)
            if take == rest.num_rows:  # the common case: no slicing
                part, rest = rest, None
            else:
                part, rest = rest.slice(0, take), rest.slice(take, rest.num_rows)
            nbytes = part.nbytes()
            buffer.parts.append(part)
            buffer.rows += take
            buffer.nbytes += nbytes
            self._rows_buffered += take
            self._bytes_buffered += nbytes
            # One future per add and flush: a caller that cancels its wait affects no one else.
            future = loop.create_future()
            buffer.waiters.append(future)
            futures.append(future)
            if buffer.rows >= self._max_rows or buffer.nbytes >= self._max_bytes:
                self._flush(table)
        return futures

    def _new_buffer(
        self, loop: asyncio.AbstractEventLoop, table: str, schema: pa.Schema
    ) -> _Buffer:
        buffer = _Buffer(schema=schema, started=time.monotonic())
        # Age is measured from the buffer's first row; the timer is dropped if size flushes first.
        buffer.timer = loop.call_later(self._max_age_s / 2, self._half_aged, table, buffer)
        self._buffers[table] = buffer
        return buffer

    def _half_aged(self, table: str, buffer: _Buffer) -> None:
        if self._buffers.get(table) is not buffer:
            return
        if buffer.rows >= EARLY_ROWS:
            self._flush_if_current(table, buffer)
        else:
            loop = asyncio.get_running_loop()
            half = self._max_age_s / 2
            buffer.timer = loop.call_later(half, self._flush_if_current, table, buffer)

    def _flush_if_current(self, table: str, buffer: _Buffer) -> None:
        if self._buffers.get(table) is not buffer:
            return
        buffer.timer = None
        writer_free = self._writing + self._queue.qsize() < self._max_in_flight
        if writer_free and not self._flights.get(table):
            self._flush(table)
        else:
            buffer.due = True

    def _flush_due(self) -> None:
        """Hands the oldest due buffer whose table has no flush in flight to a free writer."""
        due = [
            (buffer.started, table)
            for table, buffer in self._buffers.items()
            if buffer.due and not self._flights.get(table)
        ]
        if due:
            self._flush(min(due)[1])

    def _flush(self, table: str) -> None:
        buffer = self._buffers.pop(table)
        if buffer.timer is not None:
            buffer.timer.cancel()
        self._rows_buffered -= buffer.rows
        self._bytes_buffered -= buffer.nbytes
        flush = _Flush(table, buffer.parts, buffer.waiters, buffer.rows)
        self._pending[id(flush)] = flush
        self._flights[table] = self._flights.get(table, 0) + 1
        self._start_workers()
        self._queue.put_nowait(flush)

    async def _work(self) -> None:
        while True:
            if self._queue.empty():
                self._flush_due()
            flush = await self._queue.get()
            if flush is None:
                return
            self._writing += 1
            try:
                await self._write(flush)
            finally:
                self._writing -= 1
                self._flights[flush.table] -= 1

    async def _write(self, flush: _Flush) -> None:
        started = time.perf_counter()
        self._stages.add("flush_queue", started - flush.queued)
        try:
            # Hashing a large batch takes milliseconds; keep it off the event loop.
            rows, token = await asyncio.to_thread(_prepare, flush)
            prepared = time.perf_counter()
            self._stages.add("prepare", prepared - started)
        except Exception as exc:
            # Retrying cannot fix rows Arrow cannot combine; fail them and keep the writer alive.
            log.error("batch cannot be prepared", table=flush.table, error=type(exc).__name__)
            del self._pending[id(flush)]
            self._flushes_failed += 1
            _fail(flush.waiters, exc)
            return
        delay = self._backoff_initial_s
        attempt = 1
        deadline = time.monotonic() + self._retry_max_elapsed_s
        while True:
            try:
                await self._sink.write(flush.table, rows, token)
                self._stages.add("insert", time.perf_counter() - prepared)
                break
            except Exception as exc:
                self._observer.write_failed(flush.table, error_class(exc))
                pause = random.uniform(delay / 2, delay)
                if not _transient(exc) or time.monotonic() + pause > deadline:
                    self._give_up(flush, exc, attempt)
                    return
                self._retries += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                # Only the error's type and code: a message could quote row values.
                log.warning(
                    "insert failed; retrying",
                    table=flush.table,
                    rows=flush.rows,
                    attempt=attempt,
                    retry_in_s=round(pause, 3),
                    error=type(exc).__name__,
                    code=getattr(exc, "code", None),
                )
                await asyncio.sleep(pause)
                delay = min(delay * 2, self._backoff_max_s)
                attempt += 1
        del self._pending[id(flush)]
        self._flushes_done += 1
        self._failing_since = None
        self._rows_written += flush.rows
        self._observer.written(flush.table, flush.rows, time.perf_counter() - started)
        _resolve(flush.waiters)

    def _give_up(self, flush: _Flush, exc: Exception, attempts: int) -> None:
        # Only the error's type and code: a message could quote row values.
        log.error(
            "insert failed for good; failing its batches"
            if not _transient(exc)
            else "insert still failing at the retry limit; failing its batches",
            table=flush.table,
            rows=flush.rows,
            attempts=attempts,
            error=type(exc).__name__,
            code=getattr(exc, "code", None),
        )
        del self._pending[id(flush)]
        self._flushes_failed += 1
        _fail(flush.waiters, exc)

    async def close(self, timeout_s: float) -> None:
        """Stops adds, flushes every buffer and waits up to ``timeout_s`` for the writes.

        Flushes still unwritten then are abandoned: their futures fail with ``Unavailable`` and
        are never resolved as written. Idempotent; a second call waits for the first.
        """
        if self._closing is None:
            self._closing = asyncio.create_task(self._shutdown(timeout_s))
        await asyncio.shield(self._closing)

    async def _shutdown(self, timeout_s: float) -> None:
        self._closed = True
        for table in list(self._buffers):
            self._flush(table)
        self._start_workers()
        # One stop marker per writer, queued behind every flush.
        for _ in self._workers:
            self._queue.put_nowait(None)
        _, unfinished = await asyncio.wait(self._workers, timeout=timeout_s)
        for worker in unfinished:
            worker.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        abandoned = list(self._pending.values())
        self._pending.clear()
        for flush in abandoned:
            _abandon(flush.waiters)
        if abandoned:
            log.warning(
                "batcher closed with unwritten batches",
                flushes=len(abandoned),
                rows=sum(f.rows for f in abandoned),
            )
