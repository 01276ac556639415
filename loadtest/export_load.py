"""Bulk export rate and live-dashboard staleness, measured from outside (issue 13).

``python -m callsight.loadtest export --spawn-server --calls 1000000`` loads that many calls
through the real ingest path (a backfill fleet, ``loadtest.fleet``), then times ExportCalls over
every call, once per format, reading every chunk (Arrow chunks are opened with pyarrow, so the
figure includes the client's decoding) and prints rows/s with the CPU seconds the client and the
server used (on a shared machine the rate follows the other load; the CPU seconds barely do).
``--target HOST:PORT --api-key KEY`` times an export of a running server's tenant instead.

``python -m callsight.loadtest watch --spawn-server --watchers 1000`` opens that many
WatchSummary streams on one tenant while its devices upload batches of new calls, and prints the
staleness of every ack at every watcher: the receive time of the watcher's first update that
counts the batch (the first whose ``newest_ack_ms`` is at or after the ack's
``server_time_ms``) minus that ack time, p50/p99/max, with the number of watchers that were open
and of updates received (re-counts included). It prints too the staleness of the newest ack of
each update alone (``newest_ack_ms``), the measure of earlier runs, which leaves out the batches
acked earlier that waited for the same update. Both write JSON (``--out``) and record the
machine's load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.ipc
import uvloop

from callsight.loadtest.bootstrap import bootstrap
from callsight.loadtest.common import (
    MAX_MESSAGE_BYTES,
    add_flags,
    auth,
    cpu_s,
    patiently,
    say,
    write_json,
)
from callsight.loadtest.fleet import FleetOptions, run_fleet
from callsight.loadtest.harness import ProcessSampler, ServerProcess
from callsight.loadtest.histogram import Histogram
from callsight.loadtest.workload import WorkloadSpec
from callsight.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, report_pb2, report_pb2_grpc

DAY_MS = 86_400_000
FORMATS = {"arrow": common_pb2.EXPORT_FORMAT_ARROW, "csv": common_pb2.EXPORT_FORMAT_CSV}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


@contextlib.contextmanager
def spawned(args: list[str]) -> Iterator[ServerProcess]:
    """``callsight serve`` on a temporary data directory, killed and deleted at the end."""
    work = Path(tempfile.mkdtemp(prefix="callsight-export-"))
    server = ServerProcess(work / "server", args=args)
    try:
        say(f"starting server in {work / 'server'}")
        server.start()
        yield server
    finally:
        if server.running():
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now."""
    return [round(x, 2) for x in os.getloadavg()]


async def load_calls(server: ServerProcess, calls: int, devices: int, days: int) -> str:
    """Loads about ``calls`` calls through ingest (a backfill fleet); the tenant's ADMIN key."""
    per_day = calls / (devices * days)
    spec = WorkloadSpec(
        mode="backfill",
        days=days,
        calls_per_day=per_day,
        batch_size=2000,
        note_share=0.0,
        contacts=False,
        telemetry=False,
    )
    options = FleetOptions(
        target=server.address,
        operator_token=server.operator_token,
        devices=devices,
        spec=spec,
        client_processes=1,
        verify=False,
        warm_up=False,
        progress=False,
    )
    result = await run_fleet(options, say=say)
    say(
        f"loaded {result.client.records:,} records in {result.wall_s:.1f} s "
        f"({result.records_per_s:,.0f}/s)"
    )
    return result.tenants[0].admin_key


async def time_export(
    target: str,
    api_key: str,
    fmt: str,
    chunk_rows: int,
    decode: bool = True,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """One ExportCalls of every call: rows, bytes, chunks, seconds, rows/s, and the CPU seconds
    this client (and the server, given its pid) used, which contention on a shared machine
    changes far less than the rate."""
    request = report_pb2.ExportCallsRequest(
        filter=report_pb2.ReportFilter(from_ms=0, to_ms=int(time.time() * 1000) + DAY_MS),
        format=FORMATS[fmt],
        chunk_rows=chunk_rows,
    )
    load_before = load_average()
    sampler = ProcessSampler(server_pid) if server_pid is not None else None
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = report_pb2_grpc.ReportServiceStub(channel)
        if sampler is not None:
            sampler.start()
        client_cpu_s = cpu_s()
        started = time.perf_counter()
        first_s = None
        rows = chunks = nbytes = 0
        async for chunk in stub.ExportCalls(request, metadata=auth(api_key)):
            if first_s is None:
                first_s = time.perf_counter() - started
            if decode and fmt == "arrow":
                assert pyarrow.ipc.open_stream(chunk.data).read_all().num_rows == chunk.rows
            rows += chunk.rows
            chunks += 1
            nbytes += len(chunk.data)
        took = time.perf_counter() - started
        client_cpu_s = cpu_s() - client_cpu_s
        server_cpu_s = sampler.stop().cpu_s if sampler is not None else None
    return {
        "format": fmt,
        "rows": rows,
        "chunks": chunks,
        "mib": round(nbytes / 2**20, 1),
        "seconds": round(took, 3),
        "first_chunk_s": round(first_s or 0.0, 3),
        "rows_per_s": round(rows / took) if took else 0,
        "client_cpu_s": round(client_cpu_s, 2),
        "server_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


async def run_export(
    args: argparse.Namespace, target: str, api_key: str, server_pid: int | None = None
) -> dict[str, Any]:
    results = []
    for fmt in args.formats.split(","):
        for _ in range(args.repeat):
            result = await time_export(target, api_key, fmt, args.chunk_rows, server_pid=server_pid)
            server = result["server_cpu_s"]
            say(
                f"{fmt}: {result['rows']:,} rows in {result['seconds']:.2f} s = "
                f"{result['rows_per_s']:,} rows/s ({result['chunks']} chunks, {result['mib']} "
                f"MiB; CPU s: client {result['client_cpu_s']}"
                + ("" if server is None else f", server {server}")
                + f"; load average {result['load_average_before']})"
            )
            results.append(result)
    return {"export": results, "cpus": os.cpu_count()}


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest export``."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="HOST:PORT", help="a running server (with --api-key)")
    where.add_argument("--spawn-server", action="store_true", help="start a server and load it")
    add_flags(
        parser,
        ("--api-key", "", "a tenant key for --target (or CALLSIGHT_API_KEY)"),
        ("--calls", 1_000_000, "calls to load first (--spawn-server)"),
        ("--devices", 200, "devices of the loading fleet"),
        ("--days", 30, "days of history they upload"),
        ("--formats", "arrow,csv", "comma-separated: arrow, csv"),
        ("--chunk-rows", 0, "rows per chunk; 0: the server's default (50,000)"),
        ("--repeat", 2, "exports per format"),
        ("--server-arg", [], "extra `serve` flag (repeatable)"),
        ("--out", Path("loadtest/results/export.json"), "where the JSON goes"),
    )


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest export``."""

    async def main() -> dict[str, Any]:
        if args.spawn_server:
            with spawned(args.server_arg) as server:
                key = await load_calls(server, args.calls, args.devices, args.days)
                return await run_export(args, server.address, key, server.pid)
        key = args.api_key or os.environ.get("CALLSIGHT_API_KEY", "")
        return await run_export(args, args.target, key)

    result = uvloop.run(main())
    write_json(args.out, result)
    return 0


# --- watch ----------------------------------------------------------------------------------


async def run_watch(args: argparse.Namespace, server: ServerProcess) -> dict[str, Any]:
    """Watchers on one tenant while its devices upload; staleness of every update."""
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as setup:
        tenants, devices = await bootstrap(
            setup,
            server.operator_token,
            tenants=1,
            employees=args.devices,
            devices=args.devices,
            run_label="watch",
            say=say,
        )
    key = tenants[0].admin_key
    staleness = Histogram()  # microseconds
    delivery = Histogram()  # microseconds from an update's as_of_ms to its receipt
    acks: list[int] = []  # server_time_ms of every accepted upload
    seen: list[list[tuple[float, int]]] = []  # per watcher: (receive ms, newest_ack_ms) when new
    updates = 0
    opened = 0
    stop = asyncio.Event()
    channels = [
        grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        for _ in range(args.channels)
    ]
    start_ms = int(time.time() * 1000)
    request = report_pb2.WatchSummaryRequest(filter=report_pb2.ReportFilter(from_ms=start_ms))

    async def watcher(i: int) -> None:
        nonlocal updates, opened
        call = report_pb2_grpc.ReportServiceStub(channels[i % len(channels)]).WatchSummary(
            request, metadata=auth(key)
        )
        first = True
        newest_seen = 0
        mine: list[tuple[float, int]] = []
        seen.append(mine)
        try:
            async for update in call:
                if first:
                    opened += 1
                    first = False
                    continue
                updates += 1
                delivery.record(max(0, int((time.time() * 1000 - update.as_of_ms) * 1000)))
                # Staleness of an ack is measured on the first update that counts it; a later
                # update naming the same ack (a re-count of the filter) is a correction.
                if update.newest_ack_ms > newest_seen:
                    newest_seen = update.newest_ack_ms
                    received_ms = time.time() * 1000
                    mine.append((received_ms, update.newest_ack_ms))
                    late_ms = received_ms - update.newest_ack_ms
                    staleness.record(max(0, int(late_ms * 1000)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise

    async def device(d: int) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channels[d % len(channels)])
        seq = 0
        while not stop.is_set():
            now = int(time.time() * 1000)
            records = [
                ingest_pb2.CallRecord(
                    call_id=f"w{seq}-{i}",
                    number=f"+9198{d:04d}{i % 50:04d}",
                    type=common_pb2.CALL_TYPE_OUTGOING,
                    started_at_ms=now - 1000 - i,
                    duration_s=30,
                )
                for i in range(args.batch)
            ]
            upload = ingest_pb2.UploadRequest(
                seq=seq, batch_id=f"d{d}-{seq}", calls=ingest_pb2.CallLogBatch(records=records)
            )
            # The server at capacity says when to come back: the batch goes again, as a phone's.
            ack = await patiently(
                functools.partial(stub.Upload, upload, metadata=auth(devices[d].token))
            )
            if ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED:
                acks.append(ack.server_time_ms)
            seq += 1
            await asyncio.sleep(args.interval)

    tasks = [asyncio.ensure_future(watcher(i)) for i in range(args.watchers)]
    deadline = time.monotonic() + 60
    while opened < args.watchers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    say(f"{opened:,} watchers open; {args.devices} devices uploading for {args.duration:.0f} s")
    load_before = load_average()
    sampler = ProcessSampler(server.pid)
    sampler.start()
    client_cpu_s = cpu_s()
    started = time.monotonic()
    uploaders = [asyncio.ensure_future(device(d)) for d in range(args.devices)]
    await asyncio.sleep(args.duration)
    stop.set()
    await asyncio.gather(*uploaders)
    await asyncio.sleep(2.0)  # the last batches' updates
    took_s = time.monotonic() - started
    # CPU of both sides while uploads ran, in cores: the machine may be shared.
    server_cores = sampler.stop().cpu_s / took_s
    client_cores = (cpu_s() - client_cpu_s) / took_s
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    summary = staleness.summary(1e-3)
    every, unseen = every_ack_staleness(acks, seen)
    result = {
        "watchers": opened,
        "devices": args.devices,
        "batch": args.batch,
        "interval_s": args.interval,
        "updates": updates,
        "acks": len(acks),
        "every_ack_staleness_ms": every,
        "acks_never_shown": unseen,
        "acks_measured": staleness.count,
        "staleness_ms": summary,
        "delivery_ms": delivery.summary(1e-3),
        "server_cores": round(server_cores, 2),
        "client_cores": round(client_cores, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
    }
    say(
        f"{opened:,} watchers, {updates:,} updates, {len(acks):,} acks: ack -> update staleness "
        f"of every ack at every watcher p50 {every['p50']:.0f} ms, p99 {every['p99']:.0f} ms, "
        f"max {every['max']:.0f} ms ({unseen:,} never shown); of each update's newest ack "
        f"({staleness.count:,}) p50 {summary['p50']:.0f} ms, p99 {summary['p99']:.0f} ms, max "
        f"{summary['max']:.0f} ms; as_of_ms -> receipt p50 {delivery.percentile(50) / 1000:.0f} "
        f"ms, p99 {delivery.percentile(99) / 1000:.0f} ms; server {server_cores:.2f} cores, "
        f"client {client_cores:.2f} (load average {load_before})"
    )
    return result


def every_ack_staleness(
    acks: list[int], seen: list[list[tuple[float, int]]]
) -> tuple[dict[str, float], int]:
    """Per ack and watcher: the receive time of the watcher's first update whose newest ack is
    at or after it, minus the ack (ms); and how many (ack, watcher) pairs no update showed."""
    ack_ms = np.sort(np.array(acks, dtype=np.float64))
    late: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    unseen = 0
    for mine in seen:
        if not mine:
            unseen += len(ack_ms)
            continue
        table = np.array(mine, dtype=np.float64)
        received, newest = table[:, 0], table[:, 1]
        first = np.searchsorted(newest, ack_ms)
        shown = first < len(newest)
        unseen += int(np.count_nonzero(~shown))
        late.append(np.maximum(0.0, received[first[shown]] - ack_ms[shown]))
    values = np.concatenate(late) if late else np.zeros(0)
    if not len(values):
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "count": 0}, unseen
    p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
    figures = {"p50": p50, "p95": p95, "p99": p99, "max": float(values.max())}
    return {
        **{k: round(v, 3) for k, v in figures.items()},
        "mean": round(float(values.mean()), 3),
        "count": len(values),
    }, unseen


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest watch``."""
    parser.add_argument("--spawn-server", action="store_true", required=True)
    add_flags(
        parser,
        ("--watchers", 1000, "WatchSummary streams on one tenant"),
        ("--channels", 4, "client channels they and the devices share"),
        ("--devices", 50, "devices uploading"),
        ("--batch", 100, "new calls per upload"),
        ("--interval", 1.0, "seconds between a device's uploads"),
        ("--duration", 30.0, "seconds of uploads"),
        ("--server-arg", [], "extra `serve` flag (repeatable)"),
        ("--out", Path("loadtest/results/watch.json"), "where the JSON goes"),
    )


def run_watch_command(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest watch``."""

    async def main() -> dict[str, Any]:
        with spawned(args.server_arg) as server:
            return await run_watch(args, server)

    result = uvloop.run(main())
    write_json(args.out, result)
    return 0
