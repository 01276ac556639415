"""The white box: rates of the stages callsight cannot beat, and counts only the database knows.

Run ``python -m callsight.loadtest ceilings [--devices 50] [--batches-per-device 20] [--streams 8]
[--out loadtest/results/ceilings.json]``; from Python, ``measure_ceilings(batches)``. One stage
after another, so they do not share cores; decode and transport keep their fastest pass.

* transport: the fleet's own client (``loadtest.agent``) streams the batches on ``streams``
  streams (``window`` un-acked each) to a servicer in a child process (this module as a script)
  that only parses and acks; records/s from first send to last ack.
* small-batch floor (``small_batch_floor``): the fleet's client, as many phones as asked syncing
  small batches every second (calls and telemetry, 1-20 records), against the same servicer: the
  most small batches/s one grpc.aio process takes on this machine while doing nothing with them.
* decode: ``UploadRequest.FromString`` of every batch on one core.
* encode (for reference): ``pipeline.encode.decode`` of every batch, cold and warm NumberCodec,
  plus one Arrow table per table built from the decoded chunks (the batcher's work per flush).
* insert: the encoded rows into fresh migrated chDB databases in ``insert_rows``-row inserts:
  ``client.insert`` of column lists, ``insert_arrow``, and ``insert_arrow`` with a dedup token as
  the server's writer does; in a spawned child (chDB allows one data path per process).

``counts_in_child`` counts a tenant's rows ``FINAL`` for the fleet's verification: no RPC tells
contacts or telemetry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pyarrow as pa
import structlog
import uvloop
from clickhouse_connect.driver.client import Client

from callsight.loadtest.agent import SLOTS, AgentOptions, ClientProcess, WorkerResult
from callsight.loadtest.bootstrap import DeviceIdentity
from callsight.loadtest.common import (
    MAX_MESSAGE_BYTES,
    MiB,
    Say,
    add_flags,
    aligned,
    in_child,
    num,
    say,
    write_json,
)
from callsight.loadtest.generate import FleetSpec, fleet_batches, interleave
from callsight.loadtest.harness import ProcessSampler, ServerError, ServerProcess
from callsight.loadtest.verify import Counts, type_name
from callsight.loadtest.workload import (
    Batch,
    DeviceTruth,
    DeviceWorkload,
    WorkloadSpec,
    device_workload,
)
from callsight.loadtest.workload import fleet_payloads as workload_payloads
from callsight.pipeline.chunk import RowChunk, concat
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import NumberCodec, Source, decode
from callsight.pipeline.validate import BatchRejected
from callsight.server.accept import Acceptors, MethodHandlers
from callsight.storage.database import Database, connect
from callsight.storage.migrator import migrate
from callsight.storage.parties import stored_inserts
from callsight.v1 import ingest_pb2, ingest_pb2_grpc

INSERT_ROWS = 50_000  # rows per insert: the server's default --batch-max-rows
STREAMS = 8
WINDOW = 8
MIN_DECODE_S = 1.0
MIN_TRANSPORT_S = 3.0
STALL_S = 60.0  # a transport stream that gets no ack for this long fails the measurement
DEFAULT_OUT = Path("loadtest/results/ceilings.json")
INSERTS = ("columns", "arrow", "arrow_token")  # the ways rows are inserted, each timed

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Figures = dict[str, float]  # named as in the result file


class CeilingError(RuntimeError):
    """A ceiling could not be measured (the trivial server did not start, a batch was lost)."""


def record_count(request: ingest_pb2.UploadRequest) -> int:
    """Records in a batch, whichever payload it carries."""
    kind = request.WhichOneof("payload")
    return len(getattr(request, kind).records) if kind else 0


# --- decode -------------------------------------------------------------------------------------


def decode_ceiling(batches: Sequence[bytes], min_time_s: float = MIN_DECODE_S) -> Figures:
    """Protobuf parse of every batch on this core: the fastest of the passes that fit in
    ``min_time_s`` (at least one)."""
    parse = ingest_pb2.UploadRequest.FromString
    records = sum(record_count(parse(payload)) for payload in batches)  # also warms up
    best = float("inf")
    passes = 0
    deadline = time.perf_counter() + min_time_s
    while passes == 0 or time.perf_counter() < deadline:
        started = time.perf_counter()
        for payload in batches:
            parse(payload)
        best = min(best, time.perf_counter() - started)
        passes += 1
    return {
        "records": records,
        "batches": len(batches),
        "decode_records_per_s": _rate(records, best),
        "decode_best_pass_s": best,
        "decode_passes": passes,
    }


# --- transport ----------------------------------------------------------------------------------


class TrivialIngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Acks every batch as soon as grpc has parsed it: all callsight does, minus the work."""

    async def RegisterDevice(
        self, request: ingest_pb2.RegisterDeviceRequest, context: Context
    ) -> ingest_pb2.RegisterDeviceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the trivial servicer only acks")

    async def GetPolicy(
        self, request: ingest_pb2.GetPolicyRequest, context: Context
    ) -> ingest_pb2.GetPolicyResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the trivial servicer only acks")

    async def Upload(
        self, request: ingest_pb2.UploadRequest, context: Context
    ) -> ingest_pb2.UploadAck:
        return ingest_pb2.UploadAck(
            seq=request.seq,
            batch_id=request.batch_id,
            result=ingest_pb2.UPLOAD_RESULT_ACCEPTED,
            accepted=record_count(request),
            server_time_ms=int(time.time() * 1000),
        )

    async def Stream(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest], context: Context
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        async for request in request_iterator:
            yield await self.Upload(request, context)


async def serve_trivial(listen: str) -> None:
    """Serves the trivial servicer on ``listen`` until killed; logs the "serving" line. New
    streams are accepted as callsight's server accepts them (``server.accept``)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    registered = MethodHandlers(server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(
        TrivialIngestServicer(), registered.as_server()
    )
    port = server.add_insecure_port(listen)
    await server.start()
    Acceptors(server, registered.handlers, ()).start()
    print(json.dumps({"event": "serving", "port": port}), file=sys.stderr, flush=True)
    await server.wait_for_termination()


def stream_workloads(batches: Sequence[bytes], streams: int) -> list[DeviceWorkload]:
    """Batch ``i`` on stream ``i % streams``, its seq renumbered to count up on its stream."""
    per_stream: list[list[Batch]] = [[] for _ in range(max(1, min(streams, len(batches))))]
    for i, payload in enumerate(batches):
        request = ingest_pb2.UploadRequest.FromString(payload)
        mine = per_stream[i % len(per_stream)]
        request.seq = len(mine) + 1
        kind = request.WhichOneof("payload") or "calls"
        mine.append(Batch(request.seq, kind, record_count(request), request.SerializeToString()))
    return [DeviceWorkload(i, b, DeviceTruth(), 0.0) for i, b in enumerate(per_stream)]


async def _transport(
    address: str, workloads: list[DeviceWorkload], window: int, min_time_s: float, pid: int
) -> tuple[WorkerResult, float, int]:
    """The client's figures in the fastest pass, the server's CPU seconds in it, the passes."""
    client = ClientProcess(
        address, AgentOptions(window=window, stall_s=STALL_S, channels=1), [0] * SLOTS, 0
    )
    devices = [
        (DeviceIdentity(w.device, 0, "", 0, "", f"stream {w.device}", ""), w) for w in workloads
    ]
    batches = sum(len(w.batches) for w in workloads)
    best: tuple[WorkerResult, float] | None = None
    passes = 0
    await client.connect()
    try:
        deadline = time.monotonic() + min_time_s
        while passes == 0 or time.monotonic() < deadline:
            sampler = ProcessSampler(pid)
            sampler.start()
            result = await client.run(devices, WorkloadSpec(), time.monotonic())
            measured = (result, sampler.stop().cpu_s)
            passes += 1
            if result.batches != batches or result.errors:  # a lost batch disqualifies the rest
                return *measured, passes
            if best is None or result.wall_s < best[0].wall_s:
                best = measured
    finally:
        await client.close()
    assert best is not None
    return *best, passes


@contextlib.contextmanager
def _trivial_server() -> Iterator[ServerProcess]:
    work = Path(tempfile.mkdtemp(prefix="callsight-trivial-"))
    server = ServerProcess(work, module="callsight.loadtest.ceilings")
    try:
        try:
            server.start(timeout_s=60)
        except ServerError as exc:
            raise CeilingError(f"the trivial gRPC server did not start: {exc}") from None
        yield server
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


def small_batch_floor(devices: int, duration_s: float, seed: int = 1) -> Figures:
    """``devices`` phones syncing calls and telemetry every second for ``duration_s``, from the
    fleet's client in this process, acked by the trivial servicer in a child: see the module
    doc. Errors (streams gRPC ended) are counted, not raised: they are part of the floor."""
    spec = WorkloadSpec(
        mode="steady",
        duration_s=duration_s,
        sync_interval_s=1.0,
        calls_per_hour=120.0,
        contacts=False,
        seed=seed,
        now_ms=int(time.time() * 1000),
    )
    workloads = [device_workload(spec, d) for d in range(devices)]
    offered = sum(len(w.batches) for w in workloads)
    identities = [
        DeviceIdentity(w.device, 0, "", 0, "", f"phone {w.device}", "") for w in workloads
    ]

    async def run(address: str, pid: int) -> tuple[WorkerResult, float]:
        client = ClientProcess(address, AgentOptions(stall_s=STALL_S), [0] * SLOTS, 0)
        await client.connect()
        sampler = ProcessSampler(pid)
        sampler.start()
        try:
            result = await client.run(
                list(zip(identities, workloads, strict=True)), spec, time.monotonic()
            )
        finally:
            server_cpu_s = sampler.stop().cpu_s
            await client.close()
        return result, server_cpu_s

    with _trivial_server() as server:
        sent, server_cpu_s = uvloop.run(run(server.address, server.pid))
    latency = sent.latency_us.summary(scale=1e-3)
    return {
        "small_floor_devices": devices,
        "small_floor_offered_batches_per_s": offered / duration_s,
        "small_floor_batches_per_s": _rate(sent.batches, sent.wall_s),
        "small_floor_ack_p50_ms": latency["p50"],
        "small_floor_ack_p99_ms": latency["p99"],
        "small_floor_errors": sum(sent.errors.values()),
        "small_floor_client_cpu_s": sent.cpu_s,
        "small_floor_server_cpu_s": server_cpu_s,
        "small_floor_server_us_per_batch": server_cpu_s / max(sent.batches, 1) * 1e6,
    }


def transport_ceiling(
    batches: Sequence[bytes],
    *,
    streams: int = STREAMS,
    window: int = WINDOW,
    min_time_s: float = MIN_TRANSPORT_S,
) -> Figures:
    """Streams the batches to a trivial servicer in a child process; see the module doc.
    Raises CeilingError when a batch is lost."""
    workloads = stream_workloads(batches, streams)
    with _trivial_server() as server:
        sent, server_cpu_s, passes = uvloop.run(
            _transport(server.address, workloads, window, min_time_s, server.pid)
        )
    records = sum(b.records for w in workloads for b in w.batches)
    if sent.batches != len(batches) or sent.records != records or sent.errors:
        raise CeilingError(
            f"transport: {sent.batches} acks for {len(batches)} batches, {sent.records} records"
            f" acked of {records}, errors {dict(sent.errors)} {sent.failures[:3]}"
        )
    latency = sent.latency_us.summary(scale=1e-3)
    return {
        "transport_records_per_s": _rate(sent.records, sent.wall_s),
        "transport_batches_per_s": _rate(sent.batches, sent.wall_s),
        "transport_acks": sent.batches,
        "transport_records_acked": sent.records,
        "transport_rejected": sent.rejected,
        "transport_streams": len(workloads),
        "transport_window": window,
        "transport_wall_s": sent.wall_s,
        "transport_passes": passes,
        "transport_ack_p50_ms": latency["p50"],
        "transport_ack_p99_ms": latency["p99"],
        "transport_client_cpu_s": sent.cpu_s,
        "transport_server_cpu_s": server_cpu_s,
    }


# --- encode and inserts -------------------------------------------------------------------------


def encoded_tables(
    batches: Sequence[bytes], now_ms: int
) -> tuple[dict[str, list[pa.Table]], float, float]:
    """The rows the server would write, by table, and the seconds of ``decode`` plus building
    their Arrow tables, with a cold codec and again warm. Devices come from the batch id's
    prefix (``d7-b3``: ``d7``), of one tenant with one data key; batches refused whole (none in
    generated fleets) are left out."""
    keyring = Keyring(TenantCipher(1, new_data_key()))
    tenant_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "callsight-ceilings"))
    sources: dict[str, Source] = {}
    requests = []
    for payload in batches:
        request = ingest_pb2.UploadRequest.FromString(payload)
        device = request.batch_id.rsplit("-", 1)[0]
        if device not in sources:
            device_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant_id}/device/{device}"))
            employee_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant_id}/employee/{device}"))
            sources[device] = Source(tenant_id, device_id, employee_id, "IN", keyring)
        requests.append((sources[device], request))
    codec = NumberCodec()
    tables: dict[str, list[pa.Table]] = {}
    seconds = []
    for _ in range(2):
        chunks: dict[str, list[RowChunk]] = {}
        started = time.perf_counter()
        for source, request in requests:
            try:
                decoded = decode(request, source, codec, now_ms)
            except BatchRejected:
                continue
            chunks.setdefault(decoded.table, []).append(decoded.rows)
        # Arrow is built once per table, as the batcher builds it once per flush.
        tables = {table: [concat(parts).to_arrow()] for table, parts in chunks.items()}
        seconds.append(time.perf_counter() - started)
    return tables, seconds[0], seconds[1]


def chunk_tables(tables: Sequence[pa.Table], rows: int) -> list[pa.Table]:
    """Consecutive tables cut into tables of at most ``rows`` rows."""
    if not tables:
        return []
    whole = pa.concat_tables(tables).combine_chunks()
    return [whole.slice(i, rows) for i in range(0, whole.num_rows, rows)]


def _fresh_client(dsn: str, database: str) -> Client:
    db = Database(dsn, database)
    try:
        asyncio.run(migrate(db))
    finally:
        db.close()
    return connect(dsn, database)


def _insert(client: Client, way: str, table: str, rows: pa.Table, i: int) -> tuple[float, int]:
    """One insert the ``way`` asks for: (seconds, rows written); building lists is not timed."""
    columns = [column.to_pylist() for column in rows.columns] if way == "columns" else []
    started = time.perf_counter()
    if way == "columns":
        summary = client.insert(
            table, columns, column_names=rows.column_names, column_oriented=True
        )
    else:
        token = {"insert_deduplication_token": f"ceiling-{i}"} if way == "arrow_token" else None
        summary = client.insert_arrow(table, rows, settings=token)
    return time.perf_counter() - started, summary.written_rows


def insert_child_main(batches: Sequence[bytes], insert_rows: int, now_ms: int) -> Figures:
    """The insert child: encodes, then times each way of inserting into a fresh database."""
    # The migrator logs every migration; only problems are worth showing here.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    tables, encode_s, encode_warm_s = encoded_tables(batches, now_ms)
    chunks = [
        (t, chunk) for t, parts in tables.items() for chunk in chunk_tables(parts, insert_rows)
    ]
    del tables
    rows = sum(chunk.num_rows for _, chunk in chunks)
    writes = len(chunks)
    # What the server's writer inserts: call rows become their parties, then the calls.
    chunks = [stored for t, chunk in chunks for stored in stored_inserts(t, chunk)]
    stored_rows = sum(chunk.num_rows for _, chunk in chunks)
    seconds = {}
    work = tempfile.mkdtemp(prefix="callsight-ceilings-")
    try:
        for way in INSERTS:
            client = _fresh_client(f"chdb://{work}/clickhouse", f"ceiling_{way}")
            try:
                timed = [_insert(client, way, t, rows, i) for i, (t, rows) in enumerate(chunks)]
            finally:
                client.close()
            seconds[way] = sum(s for s, _ in timed)
            written = sum(n for _, n in timed)
            if written != stored_rows:
                raise CeilingError(
                    f"insert {way}: {written} rows written of {stored_rows} inserted"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "encode_records_per_s": _rate(rows, encode_s),
        "encode_s": encode_s,
        "encode_warm_records_per_s": _rate(rows, encode_warm_s),
        "encode_warm_s": encode_warm_s,
        "rows_inserted": rows,
        "insert_batch_rows": insert_rows,
        "inserts": writes,
        # Calls are two inserts each (their parties first), as the server's writer does them.
        "stored_inserts": len(chunks),
        **{f"insert_{way}_rows_per_s": _rate(rows, s) for way, s in seconds.items()},
        **{f"insert_{way}_s": s for way, s in seconds.items()},
    }


def insert_ceilings(
    batches: Sequence[bytes], *, insert_rows: int = INSERT_ROWS, now_ms: int | None = None
) -> Figures:
    """Encodes the batches and times raw inserts of their rows, in a spawned child; raises
    CeilingError when ClickHouse reports fewer rows written than inserted."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return in_child(insert_child_main, list(batches), insert_rows, now_ms)


# --- direct counts ------------------------------------------------------------------------------


async def database_counts(db: Database, tenant_id: str) -> Counts:
    """Direct counts of ``tenant_id``'s rows: calls FINAL by employee and type, and the rest."""
    params = {"tenant": tenant_id}
    rows = await db.query(
        "SELECT employee_id, type, count() FROM calls FINAL WHERE tenant_id = {tenant:String}"
        " GROUP BY employee_id, type",
        params,
    )
    counts = Counts()
    for employee_id, call_type, n in rows:
        counts.calls += int(n)
        counts.by_type[int(call_type)] += int(n)
        mine = counts.by_employee.setdefault(str(employee_id), {})
        mine[type_name(int(call_type))] = mine.get(type_name(int(call_type)), 0) + int(n)
    for table in ("contacts", "telemetry"):
        found = await db.query(
            f"SELECT count() FROM {table} FINAL WHERE tenant_id = {{tenant:String}}", params
        )
        setattr(counts, table, int(found[0][0]))
    raw = await db.query("SELECT count() FROM calls WHERE tenant_id = {tenant:String}", params)
    counts.stored_call_rows = int(raw[0][0])
    return counts


async def all_database_counts(
    dsn: str, database: str, tenant_ids: Sequence[str]
) -> dict[str, Counts]:
    """``database_counts`` for each tenant over one connection."""
    db = Database(dsn, database)
    try:
        return {tenant_id: await database_counts(db, tenant_id) for tenant_id in tenant_ids}
    finally:
        db.close()


# What a stored call costs: the call rows and the per-number rows they refer to (if any).
FOOTPRINT_TABLES = ("calls", "parties")


def _counts_main(dsn: str, database: str, tenant_ids: list[str]) -> dict[str, Counts]:
    return asyncio.run(all_database_counts(dsn, database, tenant_ids))


def counts_in_child(dsn: str, database: str, tenant_ids: list[str]) -> dict[str, Counts]:
    """``all_database_counts`` from a spawned process (a stopped server's chDB opens there)."""
    return in_child(_counts_main, dsn, database, tenant_ids)


async def footprint(db: Database, tables: Sequence[str] = FOOTPRINT_TABLES) -> dict[str, Any]:
    """Rows and bytes on disk of each table after ``OPTIMIZE .. FINAL`` (merges settled), and
    bytes per stored call: ``calls`` plus the tables that hold what calls refer to."""
    out: dict[str, Any] = {}
    present = {
        str(r[0])
        for r in await db.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }
    for table in tables:
        if table not in present:
            continue
        await db.command(f"OPTIMIZE TABLE {table} FINAL")
        rows, size = (
            await db.query(
                "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE active"
                " AND database = currentDatabase() AND table = {t:String}",
                {"t": table},
            )
        )[0]
        out[table] = {"rows": int(rows), "bytes": int(size)}
    calls = out.get("calls", {}).get("rows", 0)
    stored = sum(figures["bytes"] for figures in out.values())
    out["bytes_per_call"] = stored / calls if calls else None
    return out


def _footprint_main(dsn: str, database: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        db = Database(dsn, database)
        try:
            return await footprint(db)
        finally:
            db.close()

    return asyncio.run(main())


def footprint_in_child(dsn: str, database: str) -> dict[str, Any]:
    """``footprint`` from a spawned process (a stopped server's chDB opens there)."""
    return in_child(_footprint_main, dsn, database)


# --- together -----------------------------------------------------------------------------------


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else float("nan")


def measure_ceilings(
    batches: list[bytes],
    *,
    insert_rows: int = INSERT_ROWS,
    streams: int = STREAMS,
    window: int = WINDOW,
    min_decode_s: float = MIN_DECODE_S,
    min_transport_s: float = MIN_TRANSPORT_S,
    now_ms: int | None = None,
    progress: Say | None = None,
) -> Figures:
    """Every ceiling on the same batches: ``_per_s`` keys are rates, the rest the counts and
    seconds behind them. Raises CeilingError when the transport loses a batch."""
    tell = progress or say
    parsed = decode_ceiling(batches, min_decode_s)
    rate, passes = parsed["decode_records_per_s"], parsed["decode_passes"]
    tell(f"decode: {rate:,.0f} records/s ({passes} passes)")
    moved = transport_ceiling(batches, streams=streams, window=window, min_time_s=min_transport_s)
    rate, passes = moved["transport_records_per_s"], moved["transport_passes"]
    tell(f"transport: {rate:,.0f} records/s ({passes} passes)")
    inserted = insert_ceilings(batches, insert_rows=insert_rows, now_ms=now_ms)
    rates = [f"{way} {inserted[f'insert_{way}_rows_per_s']:,.0f} rows/s" for way in INSERTS]
    tell("insert: " + ", ".join(rates))
    wire_mib = sum(map(len, batches)) / MiB
    top = {"records": parsed["records"], "batches": len(batches), "wire_mib": wire_mib}
    return {**top, **moved, **parsed, **inserted}


def fleet_ceilings(spec: WorkloadSpec, devices: int) -> dict[str, float]:
    """``measure_ceilings`` on a fleet's own batches, regenerated."""
    return measure_ceilings(workload_payloads(spec, devices), now_ms=spec.now_ms)


def table(c: dict[str, float]) -> str:
    """The ceilings as an aligned table."""
    streams, insert_rows = f"{c['transport_streams']:.0f}", f"{c['insert_batch_rows']:,.0f}"
    lines = [  # (label, digits, the keys shown, as "a / b")
        ("records / batches", 0, "records batches"),
        (f"gRPC transport records/s ({streams} streams)", 0, "transport_records_per_s"),
        ("  ack p50 / p99 ms", 1, "transport_ack_p50_ms transport_ack_p99_ms"),
        ("  client / server CPU s", 2, "transport_client_cpu_s transport_server_cpu_s"),
        ("protobuf decode records/s (1 core)", 0, "decode_records_per_s"),
        (
            "pipeline encode records/s (1 core, cold / warm codec)",
            0,
            "encode_records_per_s encode_warm_records_per_s",
        ),
        (f"column insert rows/s ({insert_rows}-row inserts)", 0, "insert_columns_rows_per_s"),
        ("Arrow insert rows/s", 0, "insert_arrow_rows_per_s"),
        ("Arrow insert + dedup token rows/s", 0, "insert_arrow_token_rows_per_s"),
    ]
    return aligned(
        [(label, " / ".join(num(c[k], n) for k in keys.split())) for label, n, keys in lines]
    )


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest ceilings``."""
    add_flags(
        parser,
        ("--devices", 50, "devices to generate calls for"),
        ("--batches-per-device", 20),
        ("--batch-size", 500, "calls per batch"),
        ("--days", 30, "calls start in the last N days"),
        ("--seed", 1),
        ("--insert-rows", INSERT_ROWS, "rows per raw insert"),
        ("--streams", STREAMS, "concurrent gRPC streams"),
        ("--window", WINDOW, "un-acked batches per stream"),
        ("--out", DEFAULT_OUT, "JSON file to write"),
    )


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest ceilings``: measure, print the table, write the JSON."""
    spec = FleetSpec(
        devices=args.devices,
        batches_per_device=args.batches_per_device,
        batch_size=args.batch_size,
        days=args.days,
        seed=args.seed,
    )
    started = time.perf_counter()
    batches = interleave(fleet_batches(spec))
    say(
        f"generated {len(batches):,} batches of {spec.batch_size} calls "
        f"in {time.perf_counter() - started:.1f} s (not measured)"
    )
    try:
        ceilings = measure_ceilings(
            batches,
            insert_rows=args.insert_rows,
            streams=args.streams,
            window=args.window,
            now_ms=spec.now_ms,
        )
    except CeilingError as exc:
        say(f"FAILED: {exc}")
        return 1
    print(table(ceilings))
    config = {k: getattr(spec, k) for k in ("devices", "batches_per_device", "batch_size", "days")}
    write_json(
        args.out,
        {"config": config | {"seed": spec.seed, "cpus": os.cpu_count()}, "ceilings": ceilings},
    )
    return 0


if __name__ == "__main__":  # ``serve --listen HOST:0 ...``: the trivial server (ServerProcess)
    uvloop.run(serve_trivial(sys.argv[sys.argv.index("--listen") + 1]))
