"""The ingest pipeline, built from the sink backwards.

    decode + validate -> normalise -> encrypt (encode.decode_many: every batch that arrived in
      one event-loop turn together, DecodeQueue)
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
import time
from collections import deque
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.core.errors import Unavailable
from callsight.pipeline.admission import Admission
from callsight.pipeline.batcher import Batcher, FlushObserver
from callsight.pipeline.budget import ANONYMOUS, ByteBudget, Owner
from callsight.pipeline.chunk import RowChunk
from callsight.pipeline.dedup import Deduplicator, Loader, Outcome
from callsight.pipeline.encode import SCHEMAS, Decoded, NumberCodec, Source, decode_many
from callsight.pipeline.policy import NoPolicies, PolicyBook, policy_rows
from callsight.pipeline.settings import PipelineSettings
from callsight.pipeline.stages import StageTimes
from callsight.pipeline.validate import BatchRejected, record_count
from callsight.pipeline.watch import WatchHub
from callsight.storage.writer import Sink
from callsight.v1 import ingest_pb2

RETRY_AFTER_S = 0.5
# Upload while inserts are failing: come back once the database has had time to recover.
FAILING_RETRY_AFTER_S = 2.0
# Decoding runs on the event loop: after this much of it in a row the batches still waiting get
# the next loop turn, so a flood of large batches cannot keep health checks and other devices'
# acks waiting. Each turn decodes up to DECODE_CHUNK_RECORDS records together before checking.
DECODE_SLICE_S = 0.02
DECODE_CHUNK_RECORDS = 2_000


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
    ) -> None:
        """``watch``: told of every acked batch of new call rows (WatchSummary's totals);
        ``flushes``: of every flush written and insert failed (metrics)."""
        self.watch = watch
        self.settings = settings
        self.erasures: Erasures = erasures or _NoErasures()
        self.policies: PolicyBook = policies or NoPolicies()
        self.clock = clock
        self.stages = StageTimes()
        self.batcher = Batcher(sink, settings, self.stages, flushes)
        self.dedup = Deduplicator(loader, max_entries=settings.dedup_max_entries)
        self.admission = Admission(settings.admission_max_queue_ms / 1000)
        self.budget = ByteBudget(
            settings.buffer_max_bytes, self.admission, settings.device_min_share_bytes
        )
        self.codec = NumberCodec()
        self._decoder = DecodeQueue(self.codec, clock, self.stages)
        self.admitted = 0  # batches taken off the wire so far
        self._closed = False

    async def start(self) -> None:
        """Warms the flush path up, then starts the age-based flushing."""
        # pyarrow imports pandas on its first conversion (about 0.5 s idle, seconds under load):
        # pay it here, before serving, not in the first flush a reconnecting fleet waits for.
        for schema in SCHEMAS.values():
            RowChunk(schema, 0, tuple([] for _ in schema)).to_arrow()
        await self.batcher.start()

    async def close(self, timeout_s: float) -> None:
        """Refuses new batches, writes what is buffered (acking it), then wakes every waiter."""
        self._closed = True
        await self.batcher.close(timeout_s)
        self.budget.close()

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
        decoded = await self._decoder.decode(request, source)
        self.stages.add("decode_wait", time.perf_counter() - waiting)
        table, tenant, device = decoded.table, source.tenant_id, source.device_id
        if not self.dedup.loaded(table, tenant, device):
            loading = time.perf_counter()
            await self.dedup.ensure_loaded(table, tenant, device)
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


class DecodeQueue:
    """Decodes the batches that arrive within one event-loop turn together (``decode_many``).

    A batch asks for its decode and waits; the first ask of a turn schedules one drain on the
    loop, which decodes every waiting batch in arrival order, in chunks of about
    DECODE_CHUNK_RECORDS records, and hands each its Decoded (or its BatchRejected). After
    DECODE_SLICE_S of decoding the rest waits for the next turn. A thousand phones' one-sample
    batches thus cost one pass over a thousand samples instead of a thousand passes of one.
    """

    def __init__(self, codec: NumberCodec, clock: Clock, stages: StageTimes) -> None:
        self._codec = codec
        self._clock = clock
        self._stages = stages
        self._waiting: deque[tuple[ingest_pb2.UploadRequest, Source, asyncio.Future[Decoded]]]
        self._waiting = deque()
        self._scheduled = False

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
                self._decode(chunk)
        self._scheduled = bool(waiting)
        if waiting:
            asyncio.get_running_loop().call_soon(self._drain)

    def _decode(
        self, chunk: list[tuple[ingest_pb2.UploadRequest, Source, asyncio.Future[Decoded]]]
    ) -> None:
        started = time.perf_counter()
        try:
            results = decode_many([(r, s) for r, s, _ in chunk], self._codec, self._clock.now_ms())
        except Exception as exc:  # a bug: fail these batches, not the loop's callback
            for _, _, future in chunk:
                future.set_exception(exc)
            return
        share = (time.perf_counter() - started) / len(chunk)
        for (_, _, future), result in zip(chunk, results, strict=True):
            self._stages.add("decode", share)
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
