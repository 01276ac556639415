"""End-to-end ingest throughput of one server process on embedded chDB, next to raw chDB inserts.

Run ``python -m callsight.loadtest.bench_ingest [--devices 50] [--batches-per-device 20]
[--client-processes 1] [--out loadtest/results/ingest.json]``.

1. Starts ``callsight serve`` on a fresh data directory and enrolls one tenant with ``--devices``
   employees and devices through AdminService and RegisterDevice.
2. Generates every batch (500 calls each) and serialises it; this is timed but not measured.
3. Each device opens one IngestService/Stream and, one device at a time, has an empty batch
   acked on it (``--no-warm-up`` skips this): the server has then accepted every stream and
   loaded every device's dedup state before the clock starts, as for agents that keep their
   streams open. Then every device sends its batches with at most ``--window`` un-acked and
   checks every ack (ACCEPTED, nothing rejected, counts adding up to the batch). Records/s is
   records acked over the time from the first send to the last ack. Devices are spread over
   ``--client-processes`` processes, each with its own event loop and channel.
4. Stops the server, then decodes the same requests with ``pipeline.encode.decode`` and inserts
   the rows straight into chDB in this process (its own path), in 50,000-row Arrow tables as the
   server's batcher does: the raw insert rate the server is compared with.

Progress goes to stderr once a second; the summary goes to stdout and, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Lock
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import structlog
from callsight.loadtest.generate import FleetSpec, fleet_batches
from callsight.loadtest.harness import ProcessSampler, ServerProcess
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import NumberCodec, Source, decode
from callsight.storage.database import Database, connect
from callsight.storage.migrator import migrate
from clickhouse_connect.driver.client import Client

from callsight.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc

STREAM_METHOD = "/callsight.v1.IngestService/Stream"
INSERT_ROWS = 50_000  # rows per raw insert: the server's default --batch-max-rows
MiB = 1024 * 1024

Metadata = tuple[tuple[str, str], ...]


def _auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _raw(payload: bytes) -> bytes:
    """The request serialiser of pre-serialised batches: they go out as they are."""
    return payload


# --- enrollment ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    employee_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Fleet:
    """One tenant and its enrolled devices."""

    tenant_id: str
    devices: list[Device]


async def _enroll_one(channel: grpc.aio.Channel, admin_key: str, index: int, region: str) -> Device:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    employee = await admin.CreateEmployee(
        admin_pb2.CreateEmployeeRequest(name=f"Employee {index}", number=f"+9170{index:08d}"),
        metadata=_auth(admin_key),
    )
    code = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee.employee_id),
        metadata=_auth(admin_key),
    )
    device = await ingest.RegisterDevice(
        ingest_pb2.RegisterDeviceRequest(
            enrollment_code=code.enrollment_code,
            device=ingest_pb2.DeviceInfo(
                model="Pixel 8", manufacturer="Google", sdk_int=34, region=region
            ),
        )
    )
    return Device(device.device_id, device.employee_id, device.device_token)


async def enroll_fleet(
    address: str, operator_token: str, devices: int, region: str = "IN", concurrency: int = 8
) -> Fleet:
    """Creates a tenant and enrolls ``devices`` employees with a device each, as an admin would."""
    async with grpc.aio.insecure_channel(address) as channel:
        tenant = await admin_pb2_grpc.AdminServiceStub(channel).CreateTenant(
            admin_pb2.CreateTenantRequest(
                name="bench", default_region=region, timezone="Asia/Kolkata"
            ),
            metadata=_auth(operator_token),
        )
        limit = asyncio.Semaphore(concurrency)

        async def one(index: int) -> Device:
            async with limit:
                return await _enroll_one(channel, tenant.admin_api_key, index, region)

        enrolled = await asyncio.gather(*(one(i) for i in range(devices)))
    return Fleet(tenant.tenant_id, list(enrolled))


# --- streaming clients --------------------------------------------------------------------------

Call = grpc.aio.StreamStreamCall[bytes, ingest_pb2.UploadAck]


def _warm_up_batch() -> bytes:
    """An empty calls batch with seq 0: accepted, stores nothing."""
    request = ingest_pb2.UploadRequest(seq=0, batch_id="warm-up")
    request.calls.SetInParent()
    return request.SerializeToString()


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one client process sends: (device token, serialised batches) per device."""

    address: str
    devices: list[tuple[str, list[bytes]]]
    batch_size: int
    window: int
    stall_s: float  # a stream that gets no ack for this long is given up as failed
    warm_up: bool


@dataclass(slots=True)
class Tally:
    """What one client process saw."""

    first_send: float = float("inf")  # time.monotonic(), comparable across processes
    last_ack: float = 0.0
    records: int = 0
    batches: int = 0
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


def _check_ack(ack: ingest_pb2.UploadAck, batch_size: int) -> str | None:
    """Why an ack is not the clean ACCEPTED one expected, or None."""
    stored = ack.accepted + ack.updated + ack.duplicates
    if ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED or ack.rejected or stored != batch_size:
        result = ingest_pb2.UploadResult.Name(ack.result)
        reasons = "; ".join(e.reason for e in ack.errors[:3])
        return (
            f"seq {ack.seq}: {result}, accepted {ack.accepted}, updated {ack.updated}, "
            f"duplicates {ack.duplicates}, rejected {ack.rejected} of {batch_size} {reasons}"
        )
    return None


async def open_stream(
    method: grpc.aio.StreamStreamMultiCallable[bytes, ingest_pb2.UploadAck],
    token: str,
    plan: WorkerPlan,
) -> Call:
    """Opens a device's stream; with ``plan.warm_up``, returns once an empty batch is acked.

    The warm-up makes the server accept the stream and load the device's stored versions for
    dedup before the clock starts, as for an agent that keeps its stream open.
    """
    call = method(metadata=_auth(token))
    if plan.warm_up:
        await call.write(_warm_up_batch())
        ack = await asyncio.wait_for(call.read(), plan.stall_s)
        if not isinstance(ack, ingest_pb2.UploadAck) or _check_ack(ack, 0) is not None:
            raise RuntimeError(f"the warm-up batch was not accepted: {ack}")
    return call


async def stream_device(
    call: Call,
    batches: Sequence[bytes],
    plan: WorkerPlan,
    tally: Tally,
    progress: Synchronized[int],
) -> None:
    """Sends one device's batches on its stream, at most ``plan.window`` un-acked; checks acks."""
    opened = time.monotonic()
    credits = asyncio.Semaphore(plan.window)
    sent_at: dict[int, float] = {}

    async def send() -> None:
        for seq, payload in enumerate(batches, start=1):  # batch i has seq i + 1
            await credits.acquire()
            sent_at[seq] = now = time.monotonic()
            tally.first_send = min(tally.first_send, now)
            await call.write(payload)
        await call.done_writing()

    sender = asyncio.create_task(send())
    acked = 0
    try:
        while acked < len(batches):
            ack = await asyncio.wait_for(call.read(), plan.stall_s)
            if not isinstance(ack, ingest_pb2.UploadAck):  # grpc.aio.EOF
                break
            now = time.monotonic()
            started = sent_at.pop(ack.seq, None)
            if started is None:
                tally.failures.append(f"ack for unknown or repeated seq {ack.seq}")
                continue
            tally.latencies_s.append(now - started)
            tally.last_ack = max(tally.last_ack, now)
            credits.release()
            acked += 1
            problem = _check_ack(ack, plan.batch_size)
            if problem is not None:
                tally.failures.append(problem)
                continue
            tally.batches += 1
            tally.records += plan.batch_size
            with progress.get_lock():
                progress.value += plan.batch_size
        if acked < len(batches):
            tally.failures.append(f"stream ended after {acked} of {len(batches)} acks")
        else:
            await sender
            code = await asyncio.wait_for(call.code(), plan.stall_s)
            if code != grpc.StatusCode.OK:
                tally.failures.append(f"stream ended with {code.name}: {await call.details()}")
    except TimeoutError:
        tally.failures.append(
            f"stream stalled: no ack for {plan.stall_s:.0f} s after {acked} of {len(batches)}"
            f" acks, {len(sent_at)} batches sent and un-acked"
        )
    except grpc.aio.AioRpcError as exc:
        tally.failures.append(
            f"stream failed {time.monotonic() - opened:.1f} s into the run, with {acked} of"
            f" {len(batches)} acks: {exc.code().name}: {exc.details()}"
        )
    finally:
        sender.cancel()
        call.cancel()


async def _run_worker(
    plan: WorkerPlan, barrier: Barrier, warm_up_lock: Lock, progress: Synchronized[int]
) -> Tally:
    tally = Tally()
    async with grpc.aio.insecure_channel(plan.address) as channel:
        await channel.channel_ready()
        method = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=_raw,
            response_deserializer=ingest_pb2.UploadAck.FromString,
        )
        calls: list[Call] = []
        for token, _ in plan.devices:
            # One device at a time across all client processes: the server's dedup loads race
            # when a device's first batch comes while another device's load is in flight.
            await asyncio.to_thread(warm_up_lock.acquire)
            try:
                calls.append(await open_stream(method, token, plan))
            finally:
                warm_up_lock.release()
        await asyncio.to_thread(barrier.wait)  # every client's streams are open
        await asyncio.to_thread(barrier.wait)  # the server is being sampled
        cpu = _own_cpu_s()
        await asyncio.gather(
            *(
                stream_device(call, batches, plan, tally, progress)
                for call, (_, batches) in zip(calls, plan.devices, strict=True)
            )
        )
        tally.cpu_s = _own_cpu_s() - cpu
    return tally


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_main(
    plan: WorkerPlan,
    barrier: Barrier,
    warm_up_lock: Lock,
    progress: Synchronized[int],
    results: mp.Queue[Tally],
) -> None:
    """Entry point of a client process: streams its devices and reports its tally."""
    try:
        tally = asyncio.run(_run_worker(plan, barrier, warm_up_lock, progress))
    except Exception as exc:  # reported, not raised: the parent decides
        barrier.abort()
        tally = Tally(failures=[f"client process failed: {type(exc).__name__}: {exc}"])
    results.put(tally)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Figures of the end-to-end run."""

    records: int
    batches: int
    wall_s: float
    records_per_s: float
    batches_per_s: float
    ack_p50_ms: float
    ack_p95_ms: float
    ack_p99_ms: float
    ack_max_ms: float
    client_cpu_s: float
    server_cpu_s: float
    server_cpu_share: float  # server CPU seconds per wall second (1.0 = one core busy)
    server_peak_rss_mib: float
    load_average: tuple[float, float]  # 1-minute load average at the start and at the end
    failures: list[str]


def _print_progress(started: float, acked: int, last: tuple[float, int]) -> tuple[float, int]:
    now = time.monotonic()
    rate = (acked - last[1]) / max(now - last[0], 1e-9)
    overall = acked / max(now - started, 1e-9)
    print(
        f"  {now - started:6.1f} s  {acked:>10,} records acked  {rate:>10,.0f}/s now"
        f"  {overall:>10,.0f}/s overall",
        file=sys.stderr,
        flush=True,
    )
    return now, acked


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (all threads) into ``out``: .svg flame graph, .json speedscope,
    anything else collapsed stacks; sampling pauses the server briefly, so the run is slower."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    form = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(pid), "--threads", "--format", form, "-o", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches before the first batch goes out
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    """Stops py-spy (SIGINT makes it write its output)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return
    if proc.returncode:
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def run_streams(
    server: ServerProcess,
    fleet: Fleet,
    batches: list[list[bytes]],
    spec: FleetSpec,
    args: argparse.Namespace,
) -> StreamResult:
    """Streams every device's batches from client processes and measures the server."""
    ctx = mp.get_context("spawn")  # forking after grpc was used in this process is unsafe
    n = args.client_processes
    if args.streams:
        n = -(-len(fleet.devices) // args.streams)
    n = max(1, min(n, len(fleet.devices)))
    devices = [(d.token, b) for d, b in zip(fleet.devices, batches, strict=True)]
    plans = [
        WorkerPlan(
            server.address, devices[i::n], spec.batch_size, args.window, args.stall_s, args.warm_up
        )
        for i in range(n)
    ]
    barrier = ctx.Barrier(n + 1)
    warm_up_lock = ctx.Lock()
    progress: Synchronized[int] = ctx.Value(ctypes.c_int64, 0)
    results: mp.Queue[Tally] = ctx.Queue()
    workers = [
        ctx.Process(
            target=worker_main, args=(plan, barrier, warm_up_lock, progress, results), daemon=True
        )
        for plan in plans
    ]
    for worker in workers:
        worker.start()
    profiler: subprocess.Popen[bytes] | None = None
    sampler = ProcessSampler(server.pid)
    opening = time.monotonic()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client's tally will say why
        barrier.wait(timeout=900)  # every stream is open (and warmed up)
        print(
            f"{n} client processes started and {len(devices)} streams open"
            f"{' and warmed up' if args.warm_up else ''} in {time.monotonic() - opening:.1f} s",
            file=sys.stderr,
        )
        sampler.start()
        profiler = start_profiler(server.pid, args.profile) if args.profile else None
        barrier.wait(timeout=60)  # the clock starts
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    tallies: list[Tally] = []
    last = (started, 0)
    moved = started  # when the acked count last grew
    while len(tallies) < n:
        try:
            tallies.append(results.get(timeout=max(0.01, last[0] + 1.0 - time.monotonic())))
        except queue.Empty:
            acked = progress.value
            if acked > last[1]:
                moved = time.monotonic()
            last = _print_progress(started, acked, last)
            if not any(w.is_alive() for w in workers) and results.empty():
                tallies.append(Tally(failures=["a client process died without a result"]))
            elif time.monotonic() - moved > args.stall_s + 60:  # the workers' own limit failed
                for worker in workers:
                    worker.terminate()
                tallies += [Tally(failures=["client processes hung; terminated"])] * n
    usage = sampler.stop()
    if profiler is not None:
        stop_profiler(profiler)
    _print_progress(started, progress.value, last)
    for worker in workers:
        worker.join(timeout=30)
    load = (load_start, os.getloadavg()[0])
    return _summarise(tallies, usage.cpu_s, usage.peak_rss_bytes, load)


def _summarise(
    tallies: list[Tally], server_cpu_s: float, peak_rss: int, load: tuple[float, float]
) -> StreamResult:
    records = sum(t.records for t in tallies)
    batches = sum(t.batches for t in tallies)
    wall = max(t.last_ack for t in tallies) - min(t.first_send for t in tallies)
    wall = wall if wall > 0 else float("nan")
    latencies = np.array([s for t in tallies for s in t.latencies_s] or [float("nan")]) * 1000
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]).tolist()
    return StreamResult(
        records=records,
        batches=batches,
        wall_s=wall,
        records_per_s=records / wall,
        batches_per_s=batches / wall,
        ack_p50_ms=p50,
        ack_p95_ms=p95,
        ack_p99_ms=p99,
        ack_max_ms=float(latencies.max()),
        client_cpu_s=sum(t.cpu_s for t in tallies),
        server_cpu_s=server_cpu_s,
        server_cpu_share=server_cpu_s / wall,
        server_peak_rss_mib=peak_rss / MiB,
        load_average=load,
        failures=[f for t in tallies for f in t.failures],
    )


# --- raw chDB baseline --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """Figures of the same rows decoded and inserted straight into chDB in this process."""

    rows: int
    inserts: int
    decode_s: float
    decode_rows_per_s: float
    arrow_insert_s: float
    arrow_rows_per_s: float
    arrow_token_insert_s: float  # with an insert_deduplication_token, as the server's writer
    arrow_token_rows_per_s: float
    list_insert_rows: int
    list_insert_s: float
    list_rows_per_s: float


def decode_batches(
    fleet: Fleet, batches: list[list[bytes]], now_ms: int
) -> tuple[list[pa.Table], float]:
    """Every batch as the rows the server writes, interleaved across devices as they arrive."""
    keyring = Keyring(TenantCipher(1, new_data_key()))
    sources = [
        Source(fleet.tenant_id, d.device_id, d.employee_id, "IN", keyring) for d in fleet.devices
    ]
    requests = [
        (sources[d], ingest_pb2.UploadRequest.FromString(device_batches[i]))
        for i in range(max(map(len, batches), default=0))
        for d, device_batches in enumerate(batches)
        if i < len(device_batches)
    ]
    codec = NumberCodec()
    started = time.perf_counter()
    tables = [decode(request, source, codec, now_ms).rows for source, request in requests]
    return tables, time.perf_counter() - started


def chunk_tables(tables: list[pa.Table], rows: int) -> list[pa.Table]:
    """Concatenate consecutive tables into tables of at most ``rows`` rows."""
    whole = pa.concat_tables(tables)
    return [whole.slice(i, rows) for i in range(0, whole.num_rows, rows)]


def _fresh_database(dsn: str, name: str) -> None:
    db = Database(dsn, name)
    try:
        asyncio.run(migrate(db))
    finally:
        db.close()


def _timed_inserts(dsn: str, database: str, insert: Callable[[Client], float]) -> float:
    """Runs ``insert`` (which returns the seconds it spent inserting) on a fresh schema."""
    _fresh_database(dsn, database)
    client = connect(dsn, database)
    try:
        return insert(client)
    finally:
        client.close()


def run_baseline(
    fleet: Fleet, batches: list[list[bytes]], now_ms: int, dsn: str, list_rows: int
) -> BaselineResult:
    """Decode the same requests, then time raw inserts of their rows into a separate chDB."""
    tables, decode_s = decode_batches(fleet, batches, now_ms)
    chunks = chunk_tables(tables, INSERT_ROWS)
    rows = sum(t.num_rows for t in chunks)
    print(f"baseline: decoded {rows:,} rows in {decode_s:.1f} s", file=sys.stderr)

    def arrow(client: Client) -> float:
        started = time.perf_counter()
        for chunk in chunks:
            client.insert_arrow("calls", chunk)
        return time.perf_counter() - started

    def arrow_token(client: Client) -> float:
        started = time.perf_counter()
        for i, chunk in enumerate(chunks):
            client.insert_arrow(
                "calls", chunk, settings={"insert_deduplication_token": f"bench-{i}"}
            )
        return time.perf_counter() - started

    list_chunks = chunks[: -(-max(0, list_rows) // INSERT_ROWS)]

    def lists(client: Client) -> float:
        spent = 0.0
        for chunk in list_chunks:
            columns = [column.to_pylist() for column in chunk.columns]  # not timed
            started = time.perf_counter()
            client.insert("calls", columns, column_names=chunk.column_names, column_oriented=True)
            spent += time.perf_counter() - started
        return spent

    arrow_s = _timed_inserts(dsn, "bench_arrow", arrow)
    print(f"baseline: Arrow inserts {arrow_s:.2f} s", file=sys.stderr)
    token_s = _timed_inserts(dsn, "bench_arrow_token", arrow_token)
    print(f"baseline: Arrow inserts with token {token_s:.2f} s", file=sys.stderr)
    list_rows_done = sum(t.num_rows for t in list_chunks)
    list_s = _timed_inserts(dsn, "bench_lists", lists) if list_chunks else float("nan")
    print(f"baseline: list inserts {list_s:.2f} s", file=sys.stderr)
    return BaselineResult(
        rows=rows,
        inserts=len(chunks),
        decode_s=decode_s,
        decode_rows_per_s=rows / decode_s,
        arrow_insert_s=arrow_s,
        arrow_rows_per_s=rows / arrow_s,
        arrow_token_insert_s=token_s,
        arrow_token_rows_per_s=rows / token_s,
        list_insert_rows=list_rows_done,
        list_insert_s=list_s,
        list_rows_per_s=list_rows_done / list_s if list_chunks else float("nan"),
    )


# --- report -------------------------------------------------------------------------------------


def report(e2e: StreamResult, base: BaselineResult, generation_s: float) -> str:
    """The summary table."""
    ratio = e2e.records_per_s / base.arrow_rows_per_s
    lines = [
        ("end-to-end records/s", f"{e2e.records_per_s:,.0f}"),
        ("raw Arrow insert rows/s", f"{base.arrow_rows_per_s:,.0f}"),
        ("ratio e2e / raw", f"{ratio:.3f}"),
        ("raw Arrow insert + dedup token rows/s", f"{base.arrow_token_rows_per_s:,.0f}"),
        (
            f"raw list insert rows/s ({base.list_insert_rows:,} rows)",
            f"{base.list_rows_per_s:,.0f}",
        ),
        ("decode rows/s (1 thread, this process)", f"{base.decode_rows_per_s:,.0f}"),
        ("records acked / batches", f"{e2e.records:,} / {e2e.batches:,}"),
        ("wall s (first send to last ack)", f"{e2e.wall_s:.2f}"),
        ("batches/s", f"{e2e.batches_per_s:,.1f}"),
        (
            "ack p50 / p95 / p99 / max ms",
            f"{e2e.ack_p50_ms:.0f} / {e2e.ack_p95_ms:.0f} / {e2e.ack_p99_ms:.0f}"
            f" / {e2e.ack_max_ms:.0f}",
        ),
        ("client CPU s (all client processes)", f"{e2e.client_cpu_s:.2f}"),
        ("server CPU s (cores busy)", f"{e2e.server_cpu_s:.2f} ({e2e.server_cpu_share:.2f})"),
        ("server peak RSS MiB", f"{e2e.server_peak_rss_mib:,.0f}"),
        (
            f"host load average (1 min, {os.cpu_count()} CPUs)",
            f"{e2e.load_average[0]:.1f} -> {e2e.load_average[1]:.1f}",
        ),
        ("generation s (not measured)", f"{generation_s:.1f}"),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value:>16}" for name, value in lines)


def _json_safe(value: object) -> object:
    """``value`` with NaN and infinities as null, which strict JSON readers accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--batches-per-device", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--window", type=int, default=8, help="un-acked batches per stream")
    parser.add_argument(
        "--client-processes", type=int, default=1, help="client processes the devices spread over"
    )
    parser.add_argument(
        "--streams-per-process",
        dest="streams",
        type=int,
        default=0,
        help="device streams per client process; sets the number of client processes "
        "(overriding --client-processes); 0: use --client-processes",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=60.0,
        help="give a stream up as failed when no ack comes for this many seconds",
    )
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="open the streams when the clock starts, without the empty first batch each "
        "device otherwise sends (one device at a time) before timing",
    )
    parser.add_argument("--days", type=int, default=30, help="calls start in the last N days")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `serve` flag, e.g. --server-arg=--max-inserts-in-flight=4 (repeatable)",
    )
    parser.add_argument(
        "--list-rows",
        type=int,
        default=500_000,
        help="rows of the Python-list insert baseline (it is slow); 0 skips it",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy during the run (.svg, .json or collapsed .txt)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/ingest.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; exit status 1 when any ack was not a clean ACCEPTED."""
    args = parse_args(argv)
    # The migrator logs to stdout, where the summary goes; only problems are worth showing.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    spec = FleetSpec(
        devices=args.devices,
        batches_per_device=args.batches_per_device,
        batch_size=args.batch_size,
        days=args.days,
        seed=args.seed,
    )
    work = Path(tempfile.mkdtemp(prefix="callsight-bench-"))
    server = ServerProcess(work / "server", args=args.server_arg)
    print(f"starting server in {work / 'server'}", file=sys.stderr)
    with server:
        print(f"server pid {server.pid} on {server.address}", file=sys.stderr)
        started = time.perf_counter()
        fleet = asyncio.run(enroll_fleet(server.address, server.operator_token, spec.devices))
        print(
            f"enrolled {len(fleet.devices)} devices in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        started = time.perf_counter()
        batches = fleet_batches(spec)
        generation_s = time.perf_counter() - started
        wire_mib = sum(len(b) for device in batches for b in device) / MiB
        print(
            f"generated {spec.devices * spec.calls_per_device:,} calls in "
            f"{spec.devices * spec.batches_per_device:,} batches ({wire_mib:,.1f} MiB) "
            f"in {generation_s:.1f} s (not measured)",
            file=sys.stderr,
        )
        e2e = run_streams(server, fleet, batches, spec, args)
        status = server.stop()
        print(f"server stopped (exit status {status})", file=sys.stderr)
    if e2e.failures:
        server_log = args.out.with_suffix(".server.log")
        server_log.parent.mkdir(parents=True, exist_ok=True)
        server_log.write_text("".join(server.log))
        print(f"FAILED: {len(e2e.failures)} problems, first ones:", file=sys.stderr)
        for failure in e2e.failures[:10]:
            print(f"  {failure}", file=sys.stderr)
        print(f"the server's log: {server_log}", file=sys.stderr)
    base = run_baseline(fleet, batches, spec.now_ms, f"chdb://{work / 'baseline'}", args.list_rows)
    print(report(e2e, base, generation_s))
    result = {
        "config": {
            **asdict(spec),
            "window": args.window,
            "client_processes": args.client_processes,
            "streams_per_process": args.streams,
            "warm_up": args.warm_up,
            "profiled": args.profile is not None,
            "server_args": args.server_arg,
            "insert_rows": INSERT_ROWS,
        },
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": _git_commit(),
        },
        "generation_s": generation_s,
        "end_to_end": asdict(e2e),
        "baseline": asdict(base),
        "ratio_e2e_to_raw_arrow": e2e.records_per_s / base.arrow_rows_per_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if e2e.failures or e2e.records != spec.devices * spec.calls_per_device else 0


if __name__ == "__main__":
    sys.exit(main())
