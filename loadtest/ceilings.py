"""The raw rates of the stages callsight cannot beat, measured on the same serialised batches.

Run ``python -m callsight.loadtest ceilings [--devices 50] [--batches-per-device 20] [--streams 8]
[--out loadtest/results/ceilings.json]``; from Python, ``measure_ceilings(batches)``.

* transport: a trivial ``IngestService/Stream`` servicer in a child process (grpc.aio on uvloop,
  the server's message limits) parses each UploadRequest and acks it at once; the batches go out
  pre-serialised on several concurrent streams, each with at most ``window`` un-acked, as a fleet
  sends them. Records/s counts the records the acks report, from the first send to the last ack,
  in the fastest of as many passes over the batches as fit in ``min_transport_s``.
* decode: ``UploadRequest.FromString`` over every batch on one core; the fastest of as many
  passes as fit in ``min_decode_s``.
* encode (not a ceiling, for reference): ``pipeline.encode.decode`` of every batch with one
  cold NumberCodec (validate, normalise, encrypt), one core.
* insert: the same rows, decoded by ``pipeline.encode.decode``, inserted straight into a fresh
  chDB database made by ``storage.migrator.migrate`` (materialised views included), in
  ``insert_rows``-row inserts: column-oriented ``client.insert`` of Python lists (building the
  lists is not timed) and ``client.insert_arrow``. chDB allows one data path per process, so
  this runs in a spawned child with a temporary path of its own.

The stages run one after the other so they do not compete for the same cores. Decode and
transport are short, so they repeat and keep their fastest pass: on a shared machine that is the
least disturbed one, and a ceiling is an upper bound. Each insert runs once, into an empty table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import psutil
import pyarrow as pa
import structlog
import uvloop
from callsight.loadtest.generate import FleetSpec, fleet_batches
from callsight.loadtest.histogram import Histogram
from callsight.loadtest.jsonfile import write_json
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import NumberCodec, Source, decode
from callsight.pipeline.validate import BatchRejected
from callsight.storage.database import Database, connect
from callsight.storage.migrator import migrate
from clickhouse_connect.driver.client import Client

from callsight.v1 import ingest_pb2, ingest_pb2_grpc

STREAM_METHOD = "/callsight.v1.IngestService/Stream"
INSERT_ROWS = 50_000  # rows per insert: the server's default --batch-max-rows
STREAMS = 8
WINDOW = 8
MIN_DECODE_S = 1.0
MIN_TRANSPORT_S = 3.0
STALL_S = 60.0  # a transport stream that gets no ack for this long fails the measurement
# The real server's limit (server.app.MAX_MESSAGE_BYTES), without importing the server.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_OUT = Path("loadtest/results/ceilings.json")
MiB = 1024 * 1024

Metadata = tuple[tuple[str, str], ...]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class CeilingError(RuntimeError):
    """A ceiling could not be measured (the trivial server did not start, a stream stalled)."""


def _raw(payload: bytes) -> bytes:
    """The request serialiser of pre-serialised batches: they go out as they are."""
    return payload


def record_count(request: ingest_pb2.UploadRequest) -> int:
    """Records in a batch, whichever payload it carries."""
    kind = request.WhichOneof("payload")
    if kind == "calls":
        return len(request.calls.records)
    if kind == "contacts":
        return len(request.contacts.records)
    if kind == "telemetry":
        return len(request.telemetry.records)
    return 0


def interleave(per_device: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Every device's batches in one list, in the order they would arrive: round by round."""
    rounds = max(map(len, per_device), default=0)
    return [batches[i] for i in range(rounds) for batches in per_device if i < len(batches)]


# --- decode -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodeResult:
    records: int
    batches: int
    passes: int
    best_pass_s: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.best_pass_s if self.best_pass_s > 0 else float("nan")


def decode_ceiling(batches: Sequence[bytes], min_time_s: float = MIN_DECODE_S) -> DecodeResult:
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
    return DecodeResult(records=records, batches=len(batches), passes=passes, best_pass_s=best)


# --- transport ----------------------------------------------------------------------------------


def _ack(request: ingest_pb2.UploadRequest) -> ingest_pb2.UploadAck:
    return ingest_pb2.UploadAck(
        seq=request.seq,
        batch_id=request.batch_id,
        result=ingest_pb2.UPLOAD_RESULT_ACCEPTED,
        accepted=record_count(request),
        server_time_ms=int(time.time() * 1000),
    )


class TrivialIngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Acks every batch as soon as grpc has parsed it: all callsight does, minus the work."""

    async def RegisterDevice(
        self, request: ingest_pb2.RegisterDeviceRequest, context: Context
    ) -> ingest_pb2.RegisterDeviceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the trivial servicer only acks")

    async def Upload(
        self, request: ingest_pb2.UploadRequest, context: Context
    ) -> ingest_pb2.UploadAck:
        return _ack(request)

    async def Stream(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest], context: Context
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        async for request in request_iterator:
            yield _ack(request)


async def _serve_trivial(port_out: Connection, stop: Event) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(TrivialIngestServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_out.send(port)
    await asyncio.to_thread(stop.wait)
    await server.stop(1.0)


def trivial_server_main(port_out: Connection, stop: Event) -> None:
    """Entry point of the trivial server's process: serves until ``stop`` is set."""
    uvloop.run(_serve_trivial(port_out, stop))


class TrivialServer:
    """The trivial servicer in a spawned child process, on a port of the OS's choosing."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")  # forking a process that used grpc is unsafe
        self._stop = self._ctx.Event()
        self._proc: mp.process.BaseProcess | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.pid is None:
            raise CeilingError("the trivial server was not started")
        return self._proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(
            target=trivial_server_main, args=(send, self._stop), daemon=True
        )
        self._proc.start()
        send.close()
        try:
            if not receive.poll(timeout_s):
                raise EOFError
            self.port = int(receive.recv())
        except EOFError:  # the child died or hung before it bound the port
            self.close()
            raise CeilingError("the trivial gRPC server did not start") from None
        finally:
            receive.close()

    def close(self) -> None:
        if self._proc is None:
            return
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._proc = None

    def __enter__(self) -> TrivialServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class TransportResult:
    """What the transport clients saw in their fastest pass over the batches."""

    records: int = 0  # as the acks report them
    acks: int = 0
    rejected: int = 0  # acks that were not ACCEPTED
    first_send: float = float("inf")
    last_ack: float = 0.0
    latency_us: Histogram = field(default_factory=Histogram)
    client_cpu_s: float = 0.0
    server_cpu_s: float = float("nan")  # when the server's pid was given
    passes: int = 1  # passes made; the figures are those of the fastest

    @property
    def wall_s(self) -> float:
        wall = self.last_ack - self.first_send
        return wall if wall > 0 else float("nan")

    @property
    def records_per_s(self) -> float:
        return self.records / self.wall_s


async def _stream(
    method: grpc.aio.StreamStreamMultiCallable[bytes, ingest_pb2.UploadAck],
    batches: Sequence[bytes],
    window: int,
    result: TransportResult,
    metadata: Metadata,
) -> None:
    """One stream: at most ``window`` batches un-acked; acks come back in request order."""
    call = method(metadata=metadata)
    credits = asyncio.Semaphore(window)
    sent_at: deque[float] = deque()

    async def send() -> None:
        for payload in batches:
            await credits.acquire()
            now = time.monotonic()
            sent_at.append(now)
            result.first_send = min(result.first_send, now)
            await call.write(payload)
        await call.done_writing()

    sender = asyncio.create_task(send())
    try:
        for _ in batches:
            ack = await asyncio.wait_for(call.read(), STALL_S)
            if not isinstance(ack, ingest_pb2.UploadAck):  # grpc.aio.EOF
                raise CeilingError(f"a stream ended after {result.acks} acks in all")
            now = time.monotonic()
            result.latency_us.record(round((now - sent_at.popleft()) * 1e6))
            result.last_ack = max(result.last_ack, now)
            result.acks += 1
            result.records += ack.accepted
            result.rejected += ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED
            credits.release()
        await sender
    finally:
        sender.cancel()
        call.cancel()


async def stream_batches(
    address: str,
    batches: Sequence[bytes],
    *,
    streams: int = STREAMS,
    window: int = WINDOW,
    metadata: Metadata = (),
    min_time_s: float = 0.0,
    server_pid: int | None = None,
) -> TransportResult:
    """Sends every batch to ``address`` on ``streams`` concurrent streams (batch ``i`` on
    stream ``i % streams``) and counts the acks; repeats such passes over one channel until
    ``min_time_s`` has passed (at least one) and returns the fastest."""
    streams = max(1, min(streams, len(batches)))
    best: TransportResult | None = None
    passes = 0
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        method = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=_raw,
            response_deserializer=ingest_pb2.UploadAck.FromString,
        )
        deadline = time.monotonic() + min_time_s
        while passes == 0 or time.monotonic() < deadline:
            result = TransportResult()
            cpu = _own_cpu_s()
            server_cpu = _process_cpu_s(server_pid)
            await asyncio.gather(
                *(
                    _stream(method, batches[i::streams], window, result, metadata)
                    for i in range(streams)
                )
            )
            result.client_cpu_s = _own_cpu_s() - cpu
            result.server_cpu_s = _process_cpu_s(server_pid) - server_cpu
            passes += 1
            if result.acks != len(batches):  # a pass that lost a batch disqualifies the rest
                return result
            if best is None or result.wall_s < best.wall_s:
                best = result
    assert best is not None
    best.passes = passes
    return best


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def _run_coroutine(make: Callable[[], TransportResult]) -> TransportResult:
    """Runs ``make`` here, or on a thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return make()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(make).result()


def transport_ceiling(
    batches: Sequence[bytes],
    *,
    streams: int = STREAMS,
    window: int = WINDOW,
    min_time_s: float = MIN_TRANSPORT_S,
) -> TransportResult:
    """Streams the batches to a trivial servicer in a child process; see the module doc."""
    with TrivialServer() as server:

        def go() -> TransportResult:
            return uvloop.run(
                stream_batches(
                    server.address,
                    batches,
                    streams=streams,
                    window=window,
                    min_time_s=min_time_s,
                    server_pid=server.pid,
                )
            )

        return _run_coroutine(go)


# --- inserts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertResult:
    rows: int  # rows decoded and inserted, every table
    inserts: int
    encode_s: float
    columns_s: float
    arrow_s: float
    written: tuple[int, int]  # rows ClickHouse reports written by the (columns, Arrow) inserts
    stored: tuple[int, int]  # rows counted in the tables afterwards (merges may collapse some)


def decoded_tables(
    batches: Sequence[bytes], now_ms: int
) -> tuple[dict[str, list[pa.Table]], float]:
    """The rows the server would write, by table, and the seconds ``decode`` took for them.

    Batches are attributed to devices by their batch id's prefix (``d7-b3`` is device ``d7``),
    as one tenant with one data key; ids are made up, stable per device. Batches decode refuses
    whole (none in generated fleets) are left out.
    """
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
    started = time.perf_counter()
    for source, request in requests:
        try:
            decoded = decode(request, source, codec, now_ms)
        except BatchRejected:
            continue
        tables.setdefault(decoded.table, []).append(decoded.rows)
    return tables, time.perf_counter() - started


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


Chunks = list[tuple[str, pa.Table]]  # (table name, rows) per insert


def _insert_columns(client: Client, chunks: Chunks) -> tuple[float, int]:
    spent = 0.0
    written = 0
    for table, chunk in chunks:
        columns = [column.to_pylist() for column in chunk.columns]  # not timed
        started = time.perf_counter()
        summary = client.insert(
            table, columns, column_names=chunk.column_names, column_oriented=True
        )
        spent += time.perf_counter() - started
        written += summary.written_rows
    return spent, written


def _insert_arrow(client: Client, chunks: Chunks) -> tuple[float, int]:
    written = 0
    started = time.perf_counter()
    for table, chunk in chunks:
        written += client.insert_arrow(table, chunk).written_rows
    return time.perf_counter() - started, written


def _stored(client: Client, tables: Iterable[str]) -> int:
    return sum(client.query(f"SELECT count() FROM {t}").result_rows[0][0] for t in tables)


def insert_child_main(batches: Sequence[bytes], insert_rows: int, now_ms: int) -> InsertResult:
    """Entry point of the insert child: decode, then time both inserts into fresh databases."""
    # The migrator logs every migration; only problems are worth showing here.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    tables, encode_s = decoded_tables(batches, now_ms)
    chunks = [
        (table, chunk)
        for table, parts in tables.items()
        for chunk in chunk_tables(parts, insert_rows)
    ]
    del tables
    work = tempfile.mkdtemp(prefix="callsight-ceilings-")
    try:
        dsn = f"chdb://{work}/clickhouse"
        columns = _fresh_client(dsn, "ceiling_columns")
        arrow = _fresh_client(dsn, "ceiling_arrow")
        try:
            columns_s, columns_written = _insert_columns(columns, chunks)
            arrow_s, arrow_written = _insert_arrow(arrow, chunks)
            names = {table for table, _ in chunks}
            stored = (_stored(columns, names), _stored(arrow, names))
        finally:
            columns.close()
            arrow.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return InsertResult(
        rows=sum(chunk.num_rows for _, chunk in chunks),
        inserts=len(chunks),
        encode_s=encode_s,
        columns_s=columns_s,
        arrow_s=arrow_s,
        written=(columns_written, arrow_written),
        stored=stored,
    )


def insert_ceilings(
    batches: Sequence[bytes], *, insert_rows: int = INSERT_ROWS, now_ms: int | None = None
) -> InsertResult:
    """Decodes the batches and times raw inserts of their rows, in a spawned child."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(insert_child_main, list(batches), insert_rows, now_ms).result()


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
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Every ceiling on the same serialised batches, one stage after the other.

    Keys ending in ``_per_s`` are rates (records or rows per second); the others are the
    counts and seconds behind them. Raises CeilingError when the transport loses a batch.
    """
    say = progress or (lambda _: None)
    parsed = decode_ceiling(batches, min_decode_s)
    say(f"decode: {parsed.records_per_s:,.0f} records/s ({parsed.passes} passes)")
    moved = transport_ceiling(batches, streams=streams, window=window, min_time_s=min_transport_s)
    if moved.acks != len(batches) or moved.records != parsed.records:
        raise CeilingError(
            f"transport: {moved.acks} acks for {len(batches)} batches, "
            f"{moved.records} records acked of {parsed.records}"
        )
    transport_rate = _rate(moved.records, moved.wall_s)
    say(f"transport: {transport_rate:,.0f} records/s ({moved.passes} passes)")
    inserted = insert_ceilings(batches, insert_rows=insert_rows, now_ms=now_ms)
    if inserted.written != (inserted.rows, inserted.rows):
        raise CeilingError(f"insert: {inserted.written} rows written of {inserted.rows} inserted")
    say(
        f"insert: {_rate(inserted.rows, inserted.columns_s):,.0f} rows/s columns, "
        f"{_rate(inserted.rows, inserted.arrow_s):,.0f} rows/s Arrow"
    )
    latency = moved.latency_us.summary(scale=1e-3)
    return {
        "records": parsed.records,
        "batches": len(batches),
        "wire_mib": sum(map(len, batches)) / MiB,
        "transport_records_per_s": transport_rate,
        "transport_batches_per_s": _rate(moved.acks, moved.wall_s),
        "transport_acks": moved.acks,
        "transport_records_acked": moved.records,
        "transport_rejected": moved.rejected,
        "transport_streams": max(1, min(streams, len(batches))),
        "transport_window": window,
        "transport_wall_s": moved.wall_s,
        "transport_passes": moved.passes,
        "transport_ack_p50_ms": latency["p50"],
        "transport_ack_p99_ms": latency["p99"],
        "transport_client_cpu_s": moved.client_cpu_s,
        "transport_server_cpu_s": moved.server_cpu_s,
        "decode_records_per_s": parsed.records_per_s,
        "decode_best_pass_s": parsed.best_pass_s,
        "decode_passes": parsed.passes,
        "encode_records_per_s": _rate(inserted.rows, inserted.encode_s),
        "encode_s": inserted.encode_s,
        "rows_inserted": inserted.rows,
        "insert_batch_rows": insert_rows,
        "inserts": inserted.inserts,
        "insert_columns_rows_per_s": _rate(inserted.rows, inserted.columns_s),
        "insert_columns_s": inserted.columns_s,
        "insert_arrow_rows_per_s": _rate(inserted.rows, inserted.arrow_s),
        "insert_arrow_s": inserted.arrow_s,
    }


# The ceilings the end-to-end rate is compared with (loadtest.fleet has the same list).
CEILING_KEYS = (
    "transport_records_per_s",
    "decode_records_per_s",
    "insert_columns_rows_per_s",
    "insert_arrow_rows_per_s",
)


def ratios(records_per_s: float, ceilings: dict[str, float]) -> dict[str, float]:
    """The end-to-end rate as a share of each ceiling, keyed by the ceiling's name without
    ``_per_s`` (``transport_records``, ...); NaN where a ceiling is 0."""
    return {
        key.removesuffix("_per_s"): _rate(records_per_s, ceilings[key])
        for key in CEILING_KEYS
        if key in ceilings
    }


def table(ceilings: dict[str, float]) -> str:
    """The ceilings as an aligned table."""
    c = ceilings
    lines = [
        ("records / batches", f"{c['records']:,.0f} / {c['batches']:,.0f}"),
        (
            f"gRPC transport records/s ({c['transport_streams']:.0f} streams)",
            f"{c['transport_records_per_s']:,.0f}",
        ),
        (
            "  ack p50 / p99 ms",
            f"{c['transport_ack_p50_ms']:.1f} / {c['transport_ack_p99_ms']:.1f}",
        ),
        (
            "  client / server CPU s",
            f"{c['transport_client_cpu_s']:.2f} / {c['transport_server_cpu_s']:.2f}",
        ),
        ("protobuf decode records/s (1 core)", f"{c['decode_records_per_s']:,.0f}"),
        ("pipeline encode records/s (1 core)", f"{c['encode_records_per_s']:,.0f}"),
        (
            f"column insert rows/s ({c['insert_batch_rows']:,.0f}-row inserts)",
            f"{c['insert_columns_rows_per_s']:,.0f}",
        ),
        ("Arrow insert rows/s", f"{c['insert_arrow_rows_per_s']:,.0f}"),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value:>18}" for name, value in lines)


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest ceilings``."""
    parser.add_argument("--devices", type=int, default=50, help="devices to generate calls for")
    parser.add_argument("--batches-per-device", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=500, help="calls per batch")
    parser.add_argument("--days", type=int, default=30, help="calls start in the last N days")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--insert-rows", type=int, default=INSERT_ROWS, help="rows per raw insert")
    parser.add_argument("--streams", type=int, default=STREAMS, help="concurrent gRPC streams")
    parser.add_argument("--window", type=int, default=WINDOW, help="un-acked batches per stream")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")


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
    print(
        f"generated {len(batches):,} batches of {spec.batch_size} calls "
        f"in {time.perf_counter() - started:.1f} s (not measured)",
        file=sys.stderr,
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        ceilings = measure_ceilings(
            batches,
            insert_rows=args.insert_rows,
            streams=args.streams,
            window=args.window,
            now_ms=spec.now_ms,
            progress=progress,
        )
    except CeilingError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(table(ceilings))
    result = {
        "config": {
            "devices": spec.devices,
            "batches_per_device": spec.batches_per_device,
            "batch_size": spec.batch_size,
            "days": spec.days,
            "seed": spec.seed,
            "cpus": os.cpu_count(),
        },
        "ceilings": ceilings,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The same as ``python -m callsight.loadtest ceilings``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
