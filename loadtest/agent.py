"""One simulated Android agent per device, and the client process that runs thousands of them.

A ``DeviceAgent`` streams its pre-serialised batches on one ``IngestService/Stream`` as the app
does: at most ``window`` un-acked, and on any error, stall or forced reconnect the un-acked
batches go again on a new stream (same seq and batch_id). Injected re-sends go out only once the
original is acked (a lost ack). A ``ClientProcess`` runs its devices over a few channels on one
event loop; ``worker_main`` is a spawned client process, driven over a pipe by ``loadtest.fleet``,
with live figures in shared counters (one row per process) and a ``WorkerResult`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import resource
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import grpc
import uvloop

from callsight.loadtest.bootstrap import DeviceIdentity
from callsight.loadtest.common import (
    MAX_MESSAGE_BYTES,
    STREAM_IDLE,
    auth,
    cpu_s,
    error_reason,
)
from callsight.loadtest.histogram import Histogram
from callsight.loadtest.workload import DeviceTruth, DeviceWorkload, WorkloadSpec, device_workload
from callsight.v1 import ingest_pb2

STREAM_METHOD = "/callsight.v1.IngestService/Stream"
# Columns of a process's row in the shared counters.
RECORDS, BATCHES, IN_FLIGHT, ERRORS, STREAMS, DONE = range(6)
SLOTS = 6


class Counters(Protocol):
    """Indexable int64 cells: a multiprocessing RawArray, or a list in-process."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How every device behaves on the wire."""

    window: int = 4  # un-acked batches per stream
    reconnect_every: int = 0  # drop and reopen the stream after this many batches; 0: never
    stall_s: float = 60.0  # no ack for this long with batches un-acked: drop and re-send
    max_attempts: int = 30  # streams in a row without an ack before the device gives up
    backoff_s: float = 0.2  # first retry delay, doubled up to backoff_max_s, with jitter
    backoff_max_s: float = 30.0
    channels: int = 4  # gRPC channels (TCP connections) per client process
    ramp_s: float = 0.0  # devices start spread over this many seconds, in device order


@dataclass(slots=True)
class Second:
    """What completed within one second of the run."""

    records: int = 0
    batches: int = 0
    errors: int = 0
    latency_us: Histogram = field(default_factory=Histogram)
    loop_lag_us: int = 0  # the longest the client's event loop ran late in this second


@dataclass(slots=True)
class WorkerResult:
    """What one client process (or the in-process client) saw."""

    devices: int = 0
    records: int = 0
    batches: int = 0
    accepted: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latency_us: Histogram = field(default_factory=Histogram)
    # How late the client's event loop ran a 100 ms timer: an ack read late is measured late, so
    # this says how much of an ack latency could be the simulator's own.
    loop_lag_us: Histogram = field(default_factory=Histogram)
    timeline: dict[int, Second] = field(default_factory=dict)
    first_send: float = float("inf")  # time.monotonic(): one clock for every process
    last_ack: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    generation_s: float = 0.0
    sessions: int = 0
    reconnects: int = 0  # forced by --reconnect-every
    idle_ends: int = 0  # streams the server ended as idle (STREAM_IDLE): routine, not errors
    resent: int = 0  # batches sent again after an error, stall or reconnect
    peak_streams: int = 0
    devices_failed: int = 0
    # (first failed stream, first ack after it) per outage of a device: a server restart's
    # recovery as each device saw it.
    outages: list[tuple[float, float]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        """First send to last ack, seconds (NaN when nothing was acked)."""
        wall = self.last_ack - self.first_send
        return wall if wall > 0 else float("nan")

    @classmethod
    def merged(cls, results: Sequence[WorkerResult]) -> WorkerResult:
        """One result for every client process: sums, merged histograms and timelines."""
        out = cls()
        for r in results:
            for name in SUMMED:
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.errors.update(r.errors)
            out.failures += r.failures[: max(0, Recorder.MAX_FAILURES - len(out.failures))]
            out.outages += r.outages
            out.latency_us.merge(r.latency_us)
            out.loop_lag_us.merge(r.loop_lag_us)
            for key, second in r.timeline.items():
                mine = out.timeline.setdefault(key, Second())
                mine.records += second.records
                mine.batches += second.batches
                mine.errors += second.errors
                mine.latency_us.merge(second.latency_us)
                mine.loop_lag_us = max(mine.loop_lag_us, second.loop_lag_us)
            out.first_send = min(out.first_send, r.first_send)
            out.last_ack = max(out.last_ack, r.last_ack)
            out.peak_rss_mb = max(out.peak_rss_mb, r.peak_rss_mb)
            out.generation_s = max(out.generation_s, r.generation_s)
        return out


# The fields of WorkerResult that add up across processes.
# fmt: off
SUMMED = [
    "devices", "records", "batches", "accepted", "updated", "duplicates", "rejected", "cpu_s",
    "sessions", "reconnects", "resent", "peak_streams", "devices_failed", "idle_ends",
]
# fmt: on


class Recorder:
    """Tallies one process's acks and errors, and mirrors the live ones into ``counters``."""

    MAX_FAILURES = 50

    def __init__(self, counters: Counters, row: int, start: float) -> None:
        self.result = WorkerResult()
        self._counters = counters
        self._base = row * SLOTS
        self.start = start
        self._streams = 0

    def bump(self, column: int, by: int = 1) -> None:
        """Adds ``by`` to a live figure of this process (read by loadtest.report_out)."""
        self._counters[self._base + column] += by

    def _second(self, now: float) -> Second:
        key = int(now - self.start)
        second = self.result.timeline.get(key)
        if second is None:
            second = self.result.timeline[key] = Second()
        return second

    def sent(self, now: float) -> None:
        """A batch went out."""
        self.result.first_send = min(self.result.first_send, now)
        self.bump(IN_FLIGHT)

    def acked(self, batch_records: int, ack: ingest_pb2.UploadAck, latency_s: float) -> None:
        """A batch's ack arrived ``latency_s`` after it was sent."""
        now = time.monotonic()
        r = self.result
        micros = max(0, int(latency_s * 1e6))
        for tally in (r, self._second(now)):
            tally.records += batch_records
            tally.batches += 1
            tally.latency_us.record(micros)
        r.accepted += ack.accepted
        r.updated += ack.updated
        r.duplicates += ack.duplicates
        r.rejected += ack.rejected
        r.last_ack = max(r.last_ack, now)
        self.bump(RECORDS, batch_records)
        self.bump(BATCHES)
        self.bump(IN_FLIGHT, -1)

    def loop_lag(self, lag_s: float) -> None:
        """The client's event loop ran a timer ``lag_s`` late."""
        micros = max(0, int(lag_s * 1e6))
        self.result.loop_lag_us.record(micros)
        second = self._second(time.monotonic())
        second.loop_lag_us = max(second.loop_lag_us, micros)

    def error(self, code: str, detail: str = "", times: int = 1) -> None:
        """Counts an error under ``code`` (a gRPC status name or a client-side reason)."""
        self.result.errors[code] += times
        self._second(time.monotonic()).errors += times
        self.bump(ERRORS, times)
        # A few of each code, so that a rare one is not hidden behind a common one.
        few = self.result.errors[code] <= self.MAX_FAILURES // 5
        if detail and few and len(self.result.failures) < self.MAX_FAILURES:
            self.result.failures.append(f"{code}: {detail}")

    def stream(self, opened: bool) -> None:
        """A stream opened or closed."""
        step = 1 if opened else -1
        self._streams += step
        self.bump(STREAMS, step)
        if opened:
            self.result.sessions += 1
            self.result.peak_streams = max(self.result.peak_streams, self._streams)

    def device_done(self, failed: bool) -> None:
        """A device finished (all acked) or gave up."""
        self.bump(DONE)
        self.result.devices_failed += failed


def _check(ack: ingest_pb2.UploadAck, records: int) -> tuple[str, str] | None:
    """Why an ack is not a clean ACCEPTED for ``records`` records, as (code, detail)."""
    reason = "; ".join(e.reason for e in ack.errors[:2])
    if ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED:
        return "REJECTED", f"batch {ack.batch_id} refused: {reason}"
    if ack.rejected:
        return "RECORDS_REJECTED", f"{ack.rejected} records of {ack.batch_id}: {reason}"
    if ack.accepted + ack.updated + ack.duplicates != records:
        return "ACK_COUNT_MISMATCH", (
            f"{ack.batch_id}: accepted {ack.accepted} + updated {ack.updated} + duplicates "
            f"{ack.duplicates} != {records} records"
        )
    return None


StreamMethod = grpc.aio.StreamStreamMultiCallable[bytes, ingest_pb2.UploadAck]


class _Drop(Exception):
    """Ends a stream on the client's side (a forced reconnect or a stall)."""


class DeviceAgent:
    """One device: streams its batches until every one is acked, re-sending on failures."""

    def __init__(
        self,
        identity: DeviceIdentity,
        workload: DeviceWorkload,
        method: StreamMethod,
        options: AgentOptions,
        spec: WorkloadSpec,
        recorder: Recorder,
        delay_s: float = 0.0,
    ) -> None:
        self.identity = identity
        self.batches = workload.batches
        self._method = method
        self._options = options
        self._recorder = recorder
        self._metadata = auth(identity.token)
        start = recorder.start + delay_s + workload.phase_s
        self._due = [start + b.tick * spec.sync_interval_s for b in self.batches]
        self._acked = [False] * len(self.batches)
        self._remaining = len(self.batches)
        self._next = 0  # first batch not yet due
        self._todo: deque[int] = deque()  # due, not acked, not in flight
        self._waiting: dict[int, list[int]] = {}  # original -> re-sends waiting for its ack
        self._last_progress = 0.0
        self._broken_at: float | None = None  # the first failed stream since the last ack
        self._idle = True  # no stream yet, or the server ended the last one as idle

    async def run(self) -> None:
        """Streams until everything is acked or the device gives up; never raises."""
        try:
            await self._run()
        except Exception as exc:  # one broken device must not take its process down
            self._recorder.error(
                "CLIENT_ERROR", f"device {self.identity.device_id}: {type(exc).__name__}: {exc}"
            )
            self._recorder.device_done(failed=True)

    async def _run(self) -> None:
        failures = 0
        delay = self._options.backoff_s
        while self._remaining:
            self._release(time.monotonic())
            if self._idle and not self._todo and self._next < len(self.batches):
                # As an agent's sync job: a stream opens when there is something to send. (After
                # a failure the device reconnects at once: a restart storm stays a storm.)
                await asyncio.sleep(max(0.0, self._due[self._next] - time.monotonic()))
            self._idle = False
            progressed = await self._session()
            if not self._remaining:
                break
            failures = 0 if progressed else failures + 1
            if failures >= self._options.max_attempts:
                self._recorder.error(
                    "GAVE_UP",
                    f"device {self.identity.device_id}: {failures} streams in a row without an "
                    f"ack, {self._remaining} batches un-acked",
                )
                self._recorder.device_done(failed=True)
                return
            if progressed:
                delay = self._options.backoff_s
            else:
                # Jitter keeps a fleet that lost its streams together from retrying in lockstep.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self._options.backoff_max_s)
        self._recorder.device_done(failed=False)

    def _release(self, now: float) -> None:
        while self._next < len(self.batches) and self._due[self._next] <= now:
            self._todo.append(self._next)
            self._next += 1

    def _take(self) -> int | None:
        """The next batch to send; a re-send whose original is un-acked waits for that ack."""
        while self._todo:
            index = self._todo.popleft()
            original = self.batches[index].resend_of
            if original < 0 or self._acked[original]:
                return index
            self._waiting.setdefault(original, []).append(index)
        return None

    def _on_ack(self, ack: ingest_pb2.UploadAck, in_flight: dict[int, tuple[int, float]]) -> None:
        sent = in_flight.pop(ack.seq, None)
        if sent is None:
            self._recorder.error("UNEXPECTED_ACK", f"seq {ack.seq} was not in flight")
            return
        index, sent_at = sent
        now = time.monotonic()
        batch = self.batches[index]
        self._recorder.acked(batch.records, ack, now - sent_at)
        problem = _check(ack, batch.records)
        if problem is not None:
            self._recorder.error(*problem)
        self._last_progress = now
        if self._broken_at is not None:
            self._recorder.result.outages.append((self._broken_at, now))
            self._broken_at = None
        self._acked[index] = True
        self._remaining -= 1
        self._todo.extend(self._waiting.pop(index, ()))

    def _broke(self) -> None:
        if self._broken_at is None:
            self._broken_at = time.monotonic()

    async def _session(self) -> bool:
        """One stream: sends what is due, reads acks; True if any ack came back."""
        options, recorder = self._options, self._recorder
        call = self._method(metadata=self._metadata)
        in_flight: dict[int, tuple[int, float]] = {}  # seq -> (batch index, sent at)
        wake = asyncio.Event()
        acks = 0

        async def read() -> None:
            nonlocal acks
            while True:
                ack = await call.read()
                if not isinstance(ack, ingest_pb2.UploadAck):
                    return  # end of stream
                self._on_ack(ack, in_flight)
                acks += 1
                wake.set()

        reader = asyncio.create_task(read())
        reader.add_done_callback(_retrieved)
        reader.add_done_callback(lambda _: wake.set())
        recorder.stream(opened=True)
        self._last_progress = time.monotonic()
        sent_here = 0
        try:
            while True:
                if reader.done():
                    reader.result()  # raises the stream's error, if it failed
                    self._broke()
                    recorder.error(
                        "EARLY_END",
                        f"device {self.identity.device_id}: the server ended the stream with"
                        f" {len(in_flight)} batches un-acked",
                    )
                    raise _Drop()
                now = time.monotonic()
                self._release(now)
                # A forced drop waits for one ack on this stream, so that every stream progresses.
                if (
                    options.reconnect_every
                    and sent_here >= options.reconnect_every
                    and acks
                    and (self._todo or in_flight or self._next < len(self.batches))
                ):
                    recorder.result.reconnects += 1
                    raise _Drop()
                if self._todo and len(in_flight) < options.window:
                    index = self._take()
                    if index is not None:
                        batch = self.batches[index]
                        if not in_flight:
                            self._last_progress = now
                        in_flight[batch.seq] = (index, now)
                        recorder.sent(now)
                        sent_here += 1
                        await call.write(batch.payload)
                        continue
                if not self._remaining:
                    await call.done_writing()
                    await asyncio.wait_for(reader, options.stall_s)
                    code = await call.code()
                    if code != grpc.StatusCode.OK:
                        recorder.error(code.name, await call.details())
                    return acks > 0
                if in_flight:
                    timeout = self._last_progress + options.stall_s - now
                    if timeout <= 0:
                        recorder.error(
                            "STALLED",
                            f"device {self.identity.device_id}: no ack for {options.stall_s:.0f}"
                            f" s, {len(in_flight)} batches un-acked",
                        )
                        raise _Drop()
                elif self._next < len(self.batches):
                    timeout = self._due[self._next] - now
                else:
                    timeout = options.stall_s  # waiting re-sends need an ack that is in flight
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(timeout, 0.0))
        except _Drop:
            pass
        except grpc.aio.AioRpcError as exc:
            if not in_flight and error_reason(exc) == STREAM_IDLE:
                # The server freed an idle stream's slot: a new one opens when a batch is due.
                recorder.result.idle_ends += 1
                self._idle = True
                return True
            self._broke()
            recorder.error(exc.code().name, f"device {self.identity.device_id}: {exc.details()}")
        except asyncio.InvalidStateError:
            # A write or half-close raced the end of the RPC: its status says why it ended.
            self._broke()
            status, details = await _final_status(call)
            recorder.error(status, f"device {self.identity.device_id}: {details}")
        except TimeoutError:
            recorder.error("STALLED", f"device {self.identity.device_id}: stream did not end")
        finally:
            reader.cancel()
            call.cancel()
            recorder.stream(opened=False)
            if in_flight:
                # Un-acked batches go out again first, in their original order.
                recorder.bump(IN_FLIGHT, -len(in_flight))
                recorder.result.resent += len(in_flight)
                self._todo.extendleft(sorted((i for i, _ in in_flight.values()), reverse=True))
        return acks > 0


def _retrieved(task: asyncio.Task[None]) -> None:
    # The stream's failure is recorded where it is noticed; this keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


async def _final_status(
    call: grpc.aio.StreamStreamCall[bytes, ingest_pb2.UploadAck],
) -> tuple[str, str]:
    """The status of a call that has ended (or CLIENT_STATE if even that is unavailable)."""
    try:
        code = await asyncio.wait_for(call.code(), 5.0)
        return code.name, await call.details()
    except Exception as exc:  # the status itself is lost: say what the client saw
        return "CLIENT_STATE", f"{type(exc).__name__}: {exc}"


class ClientProcess:
    """A few gRPC channels and the devices that stream over them, on the running loop."""

    def __init__(self, address: str, options: AgentOptions, counters: Counters, row: int) -> None:
        self._address = address
        self._options = options
        self._counters = counters
        self._row = row
        self._channels: list[grpc.aio.Channel] = []

    async def connect(self) -> None:
        """Opens the channels and waits until each is connected."""
        for i in range(max(1, self._options.channels)):
            channel = grpc.aio.insecure_channel(
                self._address,
                options=[
                    # Its own connection: channels with equal arguments would share one.
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.channel_id", i),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            self._channels.append(channel)
        await asyncio.gather(*(channel.channel_ready() for channel in self._channels))

    async def close(self) -> None:
        """Closes the channels."""
        await asyncio.gather(*(channel.close() for channel in self._channels))
        self._channels.clear()

    async def run(
        self,
        devices: Sequence[tuple[DeviceIdentity, DeviceWorkload]],
        spec: WorkloadSpec,
        start: float,
        fleet_size: int = 0,
    ) -> WorkerResult:
        """Runs every device to completion from ``start`` (time.monotonic()); with ``ramp_s``,
        device ``d`` of ``fleet_size`` starts ``ramp_s * d / fleet_size`` s later."""
        size = max(fleet_size, len(devices), 1)
        ramp = self._options.ramp_s
        recorder = Recorder(self._counters, self._row, start)
        methods: list[StreamMethod] = [
            # No request serialiser: the batches go out as the bytes they already are.
            channel.stream_stream(
                STREAM_METHOD, response_deserializer=ingest_pb2.UploadAck.FromString
            )
            for channel in self._channels
        ]
        agents = [
            DeviceAgent(
                identity,
                workload,
                methods[i % len(methods)],
                self._options,
                spec,
                recorder,
                delay_s=ramp * identity.index / size,
            )
            for i, (identity, workload) in enumerate(devices)
        ]
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu = cpu_s()
        probe = asyncio.create_task(_probe_loop_lag(recorder))
        try:
            await asyncio.gather(*(agent.run() for agent in agents))
        finally:
            probe.cancel()
        result = recorder.result
        result.cpu_s = cpu_s() - cpu
        result.devices = len(agents)
        result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
        return result


LAG_PROBE_S = 0.1


async def _probe_loop_lag(recorder: Recorder) -> None:
    """Records how late the loop wakes from each ``LAG_PROBE_S`` sleep, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        recorder.loop_lag(loop.time() - due)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a client process is told at spawn: its row, its devices and how to behave."""

    row: int
    address: str
    devices: list[int]
    spec: WorkloadSpec
    options: AgentOptions
    fleet_size: int


def generate(spec: WorkloadSpec, devices: Sequence[int]) -> tuple[list[DeviceWorkload], float]:
    """The workloads of ``devices`` and the seconds it took."""
    started = time.perf_counter()
    workloads = [device_workload(spec, d) for d in devices]
    return workloads, time.perf_counter() - started


async def _worker(plan: WorkerPlan, conn: Connection, counters: Counters) -> None:
    loop = asyncio.get_running_loop()
    # Not before the fleet is set up: on a small machine generating would take the CPU that the
    # enrollment being measured needs (5,000 devices: about 10 s of CPU per process).
    await loop.run_in_executor(None, conn.recv)
    workloads, generation_s = generate(plan.spec, plan.devices)
    truths: list[DeviceTruth] = [w.truth for w in workloads]
    conn.send(("generated", truths, generation_s))
    message = await loop.run_in_executor(None, conn.recv)
    identities: list[DeviceIdentity] = message[1]
    client = ClientProcess(plan.address, plan.options, counters, plan.row)
    await client.connect()
    conn.send(("ready",))
    message = await loop.run_in_executor(None, conn.recv)
    start: float = message[1]
    # The simulator's own collector stopped all its phones at once, and every ack that arrived
    # meanwhile was read late: full collections of 390-740 ms every 2-3 s while 10,000 streams
    # opened (the workloads and the streams' state are hundreds of thousands of objects), which
    # put the fleet's ack p99 at 688-823 ms while the server's own was under 400 ms. What set-up
    # made lives for the run; collect young garbage less often and full collections rarely:
    # p99 381-492 ms in alternating 10,000-phone runs, the longest pause 46-84 ms.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        result = await client.run(
            list(zip(identities, workloads, strict=True)), plan.spec, start, plan.fleet_size
        )
    finally:
        await client.close()
    result.generation_s = generation_s
    conn.send(("done", result))


def worker_main(plan: WorkerPlan, conn: Connection, counters: Counters) -> None:
    """Entry point of a spawned client process: generate, connect, stream, report."""
    try:
        uvloop.run(_worker(plan, conn, counters))
    except BaseException as exc:  # reported, not raised: the parent decides
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
