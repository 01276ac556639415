"""The ingest pipeline, built from the sink backwards.

    decode + validate -> normalise -> encrypt (encode.decode_many: every batch that arrived in
      one event-loop turn together, DecodeQueue; large chunks in worker processes, decode_pool)
      -> deduplicate (dedup.Deduplicator)
      -> buffer per table, flush at rows / bytes / age (batcher.Batcher)
      -> write, at most N inserts in flight, retried with backoff (storage.writer)
      -> ack, only once every row of the batch is in ClickHouse

Memory is bounded by a byte budget taken before a batch is admitted and given back once its rows
are written; latency by admission by time: a batch is admitted only while the work queued ahead
of it would be written within ``admission_max_queue_ms`` at the measured drain rate
(``admission.Admission``). When either says no, streams stop reading (HTTP/2 flow control holds
the device) and Upload waits its turn for at most ``admission_max_queue_ms``, then answers
UNAVAILABLE with a retry delay. Waiting batches are admitted
round-robin over tenants and their devices, and a device's share of the queue is capped while
others use it (``budget.ByteBudget``), so one device flooding does not hold back the rest.

A batch whose write failed (refused by the database, or still failing at the retry limit) fails
its ``ingest`` with that error and gives its budget back; the deduplicator forgets its versions.

Erased numbers stay erased: before deduplication, calls and contacts holding a number the tenant
erased (``Erasures``: client keys, the first 8 bytes of the blind index) are dropped, never
stored, and counted in the ack as ``duplicates`` and ``erased``. A contact goes whole when any of
its numbers is erased, as EraseNumber deleted it whole.

The device policy is a second line of defence beside it (``policy.policy_rows``): records the
policy in force for the sending employee excludes are dropped the same way, never stored nor
remembered, and counted as ``duplicates`` and ``dropped_by_policy``; every ack carries the
tenant's ``policy_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import structlog

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.core.errors import Unavailable
from callsight.pipeline.admission import Admission
from callsight.pipeline.batcher import Batcher, FlushObserver
from callsight.pipeline.budget import ANONYMOUS, ByteBudget, Owner
from callsight.pipeline.chunk import RowChunk
from callsight.pipeline.decode_pool import DecodePool, PoolBroken, add_stats
from callsight.pipeline.dedup import Deduplicator, KeyLoader, Loader, Outcome
from callsight.pipeline.encode import (
    SCHEMAS,
    CodecStats,
    Decoded,
    NumberCodec,
    Source,
    decode_many,
)
from callsight.pipeline.policy import NoPolicies, PolicyBook, policy_rows
from callsight.pipeline.settings import PipelineSettings
from callsight.pipeline.stages import StageTimes
from callsight.pipeline.validate import BatchRejected, record_count
from callsight.pipeline.watch import WatchHub
from callsight.storage.writer import Sink
from callsight.v1 import ingest_pb2

log = structlog.get_logger(__name__)

RETRY_AFTER_S = 0.5
# Start-up loads dedup state for the devices heard from recently (``warm_dedup``): the tables
# their batches come in all the time (an address book is sent rarely, and can be large), this
# many devices a query (10,000 devices' calls or telemetry: about 0.1 s on chDB).
WARM_TABLES = ("calls", "telemetry")
WARM_CHUNK = 5_000
# Upload while inserts are failing: come back once the database has had time to recover.
FAILING_RETRY_AFTER_S = 2.0
# Decoding runs on the event loop: after this much of it in a row the batches still waiting get
# the next loop turn, so a flood of large batches cannot keep health checks and other devices'
# acks waiting. Each turn decodes up to DECODE_CHUNK_RECORDS records together before checking.
DECODE_SLICE_S = 0.02
DECODE_CHUNK_RECORDS = 2_000
# With decode workers, a chunk of at least this many records, in batches of this many on
# average, is decoded by them. A smaller chunk costs the loop about as much to send as to decode.
# Small batches stay too: per batch the workers save the server process ~7-16 us of its ~330 us
# (gRPC's share dominates) and cost a worker more than that, which on 2 cores shared with the
# load tester lowered the saturation of 1-20 record batches from 3,722 to 3,340 batches/s.
POOL_MIN_RECORDS = 256
POOL_MIN_BATCH_RECORDS = 64


class Erasures(Protocol):
    """The numbers each tenant erased, as client keys (see ``storage.identities``)."""

    def erased(self, tenant_id: str) -> AbstractSet[int]:
        """Client keys of the tenant's erased numbers; must not block (ingest asks per batch)."""
        ...


class _NoErasures:
    def erased(self, tenant_id: str) -> AbstractSet[int]:
        return frozenset()


@dataclass(frozen=True)
class Ticket:
    """Budget reserved for one admitted batch, and whose it is."""

    nbytes: int
    owner: Owner = ANONYMOUS


class Ingestor:
    """Turns UploadRequests into durable rows and acks."""

    def __init__(
        self,
        sink: Sink,
        loader: Loader,
        settings: PipelineSettings,
        clock: Clock = SYSTEM_CLOCK,
        erasures: Erasures | None = None,
        policies: PolicyBook | None = None,
        watch: WatchHub | None = None,
        flushes: FlushObserver | None = None,
        key_loader: KeyLoader | None = None,
    ) -> None:
        """``watch``: told of every acked batch of new call rows (WatchSummary's totals);
        ``flushes``: of every flush written and insert failed (metrics); ``key_loader``: looks
        up stored versions by key, for large devices dedup evicted (else they reload whole)."""
        self.watch = watch
        self.settings = settings
        self.erasures: Erasures = erasures or _NoErasures()
        self.policies: PolicyBook = policies or NoPolicies()
        self.clock = clock
        self.stages = StageTimes()
        self.batcher = Batcher(sink, settings, self.stages, flushes)
        self.dedup = Deduplicator(loader, settings.dedup_max_entries, key_loader)
        self.admission = Admission(settings.admission_max_queue_ms / 1000)
        self.budget = ByteBudget(
            settings.buffer_max_bytes, self.admission, settings.device_min_share_bytes
        )
        self.codec = NumberCodec()
        self.pool = DecodePool(settings.decode_workers) if settings.decode_workers else None
        self.decoder = DecodeQueue(self.codec, clock, self.stages, self.pool)
        self.admitted = 0  # batches taken off the wire so far
        self._closed = False

    @staticmethod
    def warm_up() -> None:
        """Pays the flush path's one-time costs now: pyarrow imports pandas on its first
        conversion (0.25-0.5 s idle, 1.5-2 s beside a reconnecting fleet). Call it before the
        port is bound, so that it stalls no call."""
        for schema in SCHEMAS.values():
            RowChunk(schema, 0, tuple([] for _ in schema)).to_arrow()

    async def warm_dedup(self, recent: Mapping[str, Sequence[str]]) -> int:
        """Loads what dedup needs for these devices' calls and telemetry (tenant -> device ids,
        the most recent first), ``WARM_CHUNK`` devices a query; returns how many (device, table)
        pairs it loaded."""
        loaded = 0
        for tenant_id, device_ids in recent.items():
            for start in range(0, len(device_ids), WARM_CHUNK):
                chunk = device_ids[start : start + WARM_CHUNK]
                for table in WARM_TABLES:
                    loaded += await self.dedup.warm(table, tenant_id, chunk)
        return loaded

    async def start(self) -> None:
        """Starts the age-based flushing.

        The decode workers start with the first chunk large enough for them (a backfill), which
        is decoded here while they start (~0.5-1 s): a fleet reconnecting after a restart sends
        small batches that never need them, and spawning them (each imports pyarrow and pandas,
        ~0.85 s of CPU) would take CPU from that storm.
        """
        await self.batcher.start()

    async def close(self, timeout_s: float) -> None:
        """Refuses new batches, writes what is buffered (acking it), then wakes every waiter."""
        self._closed = True
        await self.batcher.close(timeout_s)
        self.budget.close()
        if self.pool is not None:
            self.pool.close()

    def codec_stats(self) -> CodecStats:
        """The number caches' statistics: the server's own codec's plus its decode workers'."""
        own = self.codec.stats()
        workers = self.pool.stats() if self.pool is not None else None
        return own if workers is None else add_stats([own, workers])

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the server is shutting down; re-send to another server", 1.0)

    async def admit(self, request: ingest_pb2.UploadRequest, owner: Owner = ANONYMOUS) -> Ticket:
        """Waits for buffer space for ``request`` and ``owner``'s turn at it (streams: the wait
        holds the sender)."""
        self._check_open()
        ticket = Ticket(request.ByteSize(), owner)
        await self.budget.acquire(ticket.nbytes, owner)
        self.admitted += 1
        return ticket

    async def admit_unary(self, request: ingest_pb2.UploadRequest, owner: Owner) -> Ticket:
        """Buffer space for ``request`` within the admission target, or Unavailable with a retry
        delay (Upload). The wait is a fair turn like a stream's, so a device flooding from
        streams cannot keep another device's Upload out; it is bounded so a unary caller is
        answered instead of held."""
        self._check_open()
        if self.batcher.failing:
            # Admitted now, it would wait out the write retries; the device can send it later.
            raise Unavailable(
                f"the database is failing writes; retry in {FAILING_RETRY_AFTER_S:g} s",
                FAILING_RETRY_AFTER_S,
            )
        ticket = Ticket(request.ByteSize(), owner)
        if self.budget.try_acquire(ticket.nbytes, owner):
            return ticket
        try:
            await asyncio.wait_for(
                self.budget.acquire(ticket.nbytes, owner), self.admission.max_queue_s
            )
        except TimeoutError:
            if not self.budget.fits_bytes(ticket.nbytes):
                raise Unavailable(
                    f"ingest buffers are full; retry in {RETRY_AFTER_S} s", RETRY_AFTER_S
                ) from None
            delay = round(self.admission.retry_after_s(self.budget.used, ticket.nbytes), 1)
            raise Unavailable(
                f"the server is at capacity (its write queue is full); retry in {delay} s", delay
            ) from None
        self.admitted += 1
        return ticket

    async def ingest(
        self, request: ingest_pb2.UploadRequest, source: Source, ticket: Ticket
    ) -> ingest_pb2.UploadAck:
        """Processes an admitted batch; returns its ack once all of it is durable.

        Raises ``BatchRejected`` for a batch refused whole (the caller decides how to answer).
        """
        try:
            return await self._ingest(request, source)
        finally:
            self.budget.release(ticket.nbytes, ticket.owner)

    async def _ingest(
        self, request: ingest_pb2.UploadRequest, source: Source
    ) -> ingest_pb2.UploadAck:
        self._check_open()
        waiting = time.perf_counter()
        decoded = await self.decoder.decode(request, source)
        self.stages.add("decode_wait", time.perf_counter() - waiting)
        table, tenant, device = decoded.table, source.tenant_id, source.device_id
        if not self.dedup.ready(table, tenant, device, decoded.keys):
            loading = time.perf_counter()
            await self.dedup.ensure_loaded(table, tenant, device, decoded.keys)
            self.stages.add("dedup_load", time.perf_counter() - loading)
            self._check_open()
        # No await from here to record(): classification and recording are atomic.
        rows, keys, versions = decoded.rows, decoded.keys, decoded.versions.tolist()
        policy = self.policies.in_force(tenant, source.employee_id)
        erasures = self.erasures.erased(tenant)
        dropped = by_policy = 0
        # Telemetry holds no numbers; calls and contacts are checked only where something could
        # drop them.
        if table != "telemetry" and (erasures or policy.policy is not None):
            erased = erased_rows(decoded, erasures)
            # A record both erased and outside the policy counts as erased.
            excluded = self.policies.excluded(tenant)
            outside = policy_rows(decoded, policy.policy, excluded) & ~erased
            dropped = int(np.count_nonzero(erased))
            by_policy = int(np.count_nonzero(outside))
            if dropped or by_policy:
                # Never stored, never remembered: once the erasure is lifted (or the policy
                # changed) a re-send is stored.
                kept = ~(erased | outside)
                rows = rows.filter(kept)
                keys = [k for k, e in zip(keys, kept.tolist(), strict=True) if e]
                versions = [v for v, e in zip(versions, kept.tolist(), strict=True) if e]
        verdict = self.dedup.classify(table, tenant, device, keys, versions)
        stored = rows
        if not verdict.all_new:
            new = verdict.new_rows
            stored = rows.filter(new)
            keys = [k for k, n in zip(keys, new, strict=True) if n]
            versions = [v for v, n in zip(versions, new, strict=True) if n]
        written = _all_of(self.batcher.add(table, stored)) if stored.num_rows else None
        self.dedup.record(table, tenant, device, keys, versions, written)
        buffered = time.perf_counter()
        if written is not None:
            await asyncio.shield(written)
        for wait in verdict.waits:
            await asyncio.shield(wait)
        self.stages.add("write", time.perf_counter() - buffered)
        ack_ms = self.clock.now_ms()
        if self.watch is not None and table == "calls":
            outcomes = verdict.outcomes[verdict.new_rows]
            self.watch.calls_acked(tenant, source.employee_id, stored, outcomes, ack_ms)
        return ingest_pb2.UploadAck(
            seq=request.seq,
            batch_id=request.batch_id,
            result=ingest_pb2.UPLOAD_RESULT_ACCEPTED,
            accepted=verdict.count(Outcome.ACCEPTED),
            updated=verdict.count(Outcome.UPDATED),
            duplicates=verdict.count(Outcome.DUPLICATE) + dropped + by_policy,
            rejected=len(decoded.errors),
            erased=dropped,
            dropped_by_policy=by_policy,
            policy_version=policy.version,
            errors=[ingest_pb2.RecordError(index=i, reason=r) for i, r in decoded.errors],
            server_time_ms=ack_ms,
        )


@dataclass(eq=False, slots=True)
class _Chunk:
    """Batches decoded together, and their results once known (settled in arrival order)."""

    jobs: list[tuple[ingest_pb2.UploadRequest, Source, asyncio.Future[Decoded]]]
    results: list[Decoded | BatchRejected] | None = None
    error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self.results is not None or self.error is not None


class DecodeQueue:
    """Decodes the batches that arrive within one event-loop turn together (``decode_many``).

    A batch asks for its decode and waits; the first ask of a turn schedules one drain on the
    loop, which takes every waiting batch in arrival order, in chunks of about
    DECODE_CHUNK_RECORDS records. A chunk of at least POOL_MIN_RECORDS records, in batches of
    POOL_MIN_BATCH_RECORDS on average, goes to the decode workers when there are any (``pool``;
    until they answer, and whenever one is lost, it is decoded here, and the first such chunk
    starts a pool not yet started); a smaller one is decoded on the loop. After DECODE_SLICE_S
    of this the rest waits for the next turn. A thousand phones' one-sample batches thus cost
    one pass over a thousand samples instead of a thousand passes of one. Results are handed
    out in arrival order, wherever they were decoded, so a device's batches reach deduplication
    in the order they came.
    """

    def __init__(
        self,
        codec: NumberCodec,
        clock: Clock,
        stages: StageTimes,
        pool: DecodePool | None = None,
    ) -> None:
        self._codec = codec
        self._clock = clock
        self._stages = stages
        self._pool = pool
        self._waiting: deque[tuple[ingest_pb2.UploadRequest, Source, asyncio.Future[Decoded]]]
        self._waiting = deque()
        self._order: deque[_Chunk] = deque()
        self._scheduled = False
        self.decoded_here = 0  # batches decoded on the loop
        self.decoded_by_workers = 0

    def decode(self, request: ingest_pb2.UploadRequest, source: Source) -> asyncio.Future[Decoded]:
        """The batch's Decoded once decoded; raises its BatchRejected when it is refused whole."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decoded] = loop.create_future()
        self._waiting.append((request, source, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return future

    def _drain(self) -> None:
        started = time.perf_counter()
        waiting = self._waiting
        while waiting and time.perf_counter() - started < DECODE_SLICE_S:
            chunk = []
            records = 0
            while waiting and records < DECODE_CHUNK_RECORDS:
                job = waiting.popleft()
                if not job[2].done():  # a cancelled waiter needs no decode
                    chunk.append(job)
                    records += record_count(job[0])
            if chunk:
                self._dispatch(_Chunk(chunk), records)
        self._scheduled = bool(waiting)
        if waiting:
            asyncio.get_running_loop().call_soon(self._drain)

    def _dispatch(self, chunk: _Chunk, records: int) -> None:
        self._order.append(chunk)
        pool = self._pool
        large = records >= max(POOL_MIN_RECORDS, POOL_MIN_BATCH_RECORDS * len(chunk.jobs))
        if pool is not None and large:
            if pool.ready:
                uploads = [(request, source) for request, source, _ in chunk.jobs]
                task = asyncio.ensure_future(pool.decode(uploads, self._clock.now_ms()))
                task.add_done_callback(functools.partial(self._decoded_by_pool, chunk))
                return
            if not pool.started:
                with contextlib.suppress(PoolBroken):  # shut down: decode here
                    pool.start()
        self._decode(chunk)
        self._settle()

    def _decoded_by_pool(
        self,
        chunk: _Chunk,
        task: asyncio.Future[tuple[list[Decoded | BatchRejected], float]],
    ) -> None:
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or isinstance(error, PoolBroken):
            reason = "the job was cancelled" if error is None else str(error)
            log.warning("decode worker lost; decoding its batches here", error=reason)
            self._decode(chunk)
        elif error is not None:  # a bug: fail these batches, not the loop's callback
            chunk.error = error
        else:
            chunk.results, seconds = task.result()
            self.decoded_by_workers += len(chunk.jobs)
            self._stages.add_many("decode", seconds / len(chunk.jobs), len(chunk.jobs))
        self._settle()

    def _decode(self, chunk: _Chunk) -> None:
        started = time.perf_counter()
        uploads = [(request, source) for request, source, _ in chunk.jobs]
        try:
            chunk.results = decode_many(uploads, self._codec, self._clock.now_ms())
        except Exception as exc:  # a bug: fail these batches, not the loop's callback
            chunk.error = exc
            return
        self.decoded_here += len(chunk.jobs)
        share = (time.perf_counter() - started) / len(chunk.jobs)
        self._stages.add_many("decode", share, len(chunk.jobs))

    def _settle(self) -> None:
        """Hands out the results of the oldest chunks, as far as they are known."""
        order = self._order
        while order and order[0].settled:
            chunk = order.popleft()
            if chunk.error is not None:
                for _, _, future in chunk.jobs:
                    if not future.done():
                        future.set_exception(chunk.error)
                continue
            assert chunk.results is not None
            for (_, _, future), result in zip(chunk.jobs, chunk.results, strict=True):
                if future.done():  # its waiter was cancelled
                    continue
                if isinstance(result, BatchRejected):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def erased_rows(decoded: Decoded, erased: AbstractSet[int]) -> npt.NDArray[np.bool_]:
    """Mask of the decoded calls and contacts that hold a number whose client key is erased."""
    mask = np.zeros(decoded.rows.num_rows, dtype=np.bool_)
    if not erased or decoded.table == "telemetry":
        return mask
    rows = decoded.rows
    if decoded.table == "calls":
        client_keys = rows.columns[rows.schema.get_field_index("client_key")]
        return np.isin(client_keys, np.fromiter(erased, dtype=np.uint64, count=len(erased)))
    numbers = rows.columns[rows.schema.get_field_index("numbers_bidx")]
    for i, bidxs in enumerate(numbers):
        mask[i] = any(int.from_bytes(bidx[:8], "little") in erased for bidx in bidxs)
    return mask


def _all_of(futures: Sequence[asyncio.Future[None]]) -> asyncio.Future[None] | None:
    if not futures:
        return None
    if len(futures) == 1:
        return futures[0]
    return asyncio.ensure_future(_gather(futures))


async def _gather(futures: Sequence[asyncio.Future[None]]) -> None:
    await asyncio.gather(*futures)
