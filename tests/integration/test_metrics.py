"""Prometheus metrics: a real server, known traffic over a real channel, then a scrape of
``/metrics`` whose counts must equal what was sent."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import prometheus_client
import pytest

from callsight.server.app import Service
from callsight.server.preflight import StartupError
from callsight.storage.writer import Sink
from callsight.v1 import ingest_pb2, ingest_pb2_grpc, report_pb2, report_pb2_grpc
from tests.conftest import make_config
from tests.faults import FaultInjectingWriter
from tests.integration.calls import BASE_MS, DAY_MS, batch, call, counts
from tests.integration.helpers import (
    Samples,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
    scrape,
    value,
)

CODE = grpc.StatusCode
REFUSED_CODE = 53  # TYPE_MISMATCH: ClickHouse refuses the insert for good


def handled(samples: Samples, service: str, method: str, grpc_type: str, code: str) -> float:
    return samples.get(
        (
            "grpc_server_handled_total",
            frozenset(
                {
                    "grpc_service": f"callsight.v1.{service}",
                    "grpc_method": method,
                    "grpc_type": grpc_type,
                    "grpc_code": code,
                }.items()
            ),
        ),
        0.0,
    )


def started(samples: Samples, service: str, method: str, grpc_type: str) -> float:
    labels = {"grpc_service": f"callsight.v1.{service}", "grpc_method": method}
    return value(samples, "grpc_server_started_total", grpc_type=grpc_type, **labels)


@pytest.fixture
async def faulty(
    data_dir: Path, service: Service
) -> AsyncIterator[tuple[Service, FaultInjectingWriter]]:
    """A server of its own (its own metrics) on the session's database, with writes that fail
    on demand."""
    sinks: list[FaultInjectingWriter] = []

    def wrap(sink: Sink) -> Sink:
        sinks.append(FaultInjectingWriter(sink))
        return sinks[0]

    svc = Service(make_config(data_dir, service.config.database), wrap_sink=wrap)
    await svc.start()
    # The devices other tests synced recently are loaded into dedup at start-up: done before
    # the test counts the entries its own traffic adds.
    assert svc._dedup_warm_up is not None
    await asyncio.wait_for(svc._dedup_warm_up, 30)
    try:
        yield svc, sinks[0]
    finally:
        await svc.stop()


async def test_a_scrape_counts_exactly_the_traffic_sent(
    faulty: tuple[Service, FaultInjectingWriter],
) -> None:
    svc, sink = faulty
    assert svc.metrics_port and svc.metrics is not None and svc.ingestor is not None
    warmed = svc.ingestor.dedup.entries  # other tests' devices, loaded at start-up
    assert svc.metrics.registry is not prometheus_client.REGISTRY
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        tenant = await new_tenant(channel)
        employee = await new_employee(channel, tenant, "Asha", "9876543210")
        device = await enroll(channel, tenant, employee)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        token = auth(device.device_token)

        # A stream kept open while it is scraped: one open stream, one connected device.
        queue: asyncio.Queue[ingest_pb2.UploadRequest | None] = asyncio.Queue()

        async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
            while (item := await queue.get()) is not None:
                yield item

        stream = ingest.Stream(send(), metadata=token)
        # 10 new calls and one with an unusable number.
        await queue.put(batch(1, [call(i) for i in range(10)] + [call(10, number="12")]))
        first = await stream.read()
        assert counts(first) == (10, 0, 0, 1)
        during = await scrape(svc.metrics_port)
        assert value(during, "callsight_open_streams") == 1
        assert value(during, "callsight_connected_devices") == 1
        # 5 re-sent, 3 new, 1 newer version; then a batch without a payload (refused whole).
        await queue.put(
            batch(
                2,
                [call(i) for i in range(5, 10)]
                + [call(i) for i in range(11, 14)]
                + [call(0, version=5_000)],
            )
        )
        await queue.put(ingest_pb2.UploadRequest(seq=3, batch_id="empty"))
        second, third = await stream.read(), await stream.read()
        assert counts(second) == (3, 1, 5, 0)
        assert third.result == ingest_pb2.UPLOAD_RESULT_REJECTED
        await queue.put(None)
        assert await stream.code() == CODE.OK

        contacts = ingest_pb2.UploadRequest(
            seq=4,
            batch_id="k1",
            contacts=ingest_pb2.ContactBatch(
                records=[
                    ingest_pb2.Contact(
                        contact_id=f"k{i}",
                        name=f"C {i}",
                        numbers=[f"98000000{i:02d}"],
                        updated_at_ms=BASE_MS,
                    )
                    for i in range(4)
                ]
            ),
        )
        assert counts(await ingest.Upload(contacts, metadata=token)) == (4, 0, 0, 0)

        # Telemetry written after two transient insert failures (retried), then one refused.
        telemetry = [
            ingest_pb2.UploadRequest(
                seq=5 + n,
                batch_id=f"t{n}",
                telemetry=ingest_pb2.TelemetryBatch(
                    records=[ingest_pb2.Telemetry(captured_at_ms=BASE_MS + n, battery_pct=50)]
                ),
            )
            for n in range(2)
        ]
        sink.fail_next(2, tables=["telemetry"])
        assert counts(await ingest.Upload(telemetry[0], metadata=token)) == (1, 0, 0, 0)
        sink.fail_next(1, code=REFUSED_CODE, tables=["telemetry"])
        await expect_status(ingest.Upload(telemetry[1], metadata=token), CODE.INTERNAL)

        reports = report_pb2_grpc.ReportServiceStub(channel)
        window = report_pb2.ReportFilter(from_ms=BASE_MS - DAY_MS, to_ms=BASE_MS + 2 * DAY_MS)
        summary = await reports.CallSummary(
            report_pb2.CallSummaryRequest(filter=window), metadata=tenant.admin
        )
        assert summary.summary.total_calls == 13
        await expect_status(
            reports.CallSummary(report_pb2.CallSummaryRequest(filter=window), metadata=auth("x")),
            CODE.UNAUTHENTICATED,
        )

    after = await scrape(svc.metrics_port)
    records = {
        (kind, outcome): value(after, "callsight_records_total", kind=kind, outcome=outcome)
        for kind in ("calls", "contacts", "telemetry")
        for outcome in (
            "accepted",
            "updated",
            "duplicate",
            "rejected",
            "erased",
            "dropped_by_policy",
        )
    }
    assert {k: v for k, v in records.items() if v} == {
        ("calls", "accepted"): 13,
        ("calls", "updated"): 1,
        ("calls", "duplicate"): 5,
        ("calls", "rejected"): 1,
        ("contacts", "accepted"): 4,
        ("telemetry", "accepted"): 1,
    }
    assert value(after, "callsight_batches_total", result="accepted") == 4
    assert value(after, "callsight_batches_total", result="rejected") == 1
    assert value(after, "callsight_batch_records_count") == 4
    assert value(after, "callsight_batch_records_sum") == 11 + 9 + 4 + 1

    # Every RPC by method and status, and each counted as started once.
    expected = {
        ("AdminService", "CreateTenant", "unary", "OK"): 1,
        ("AdminService", "CreateEmployee", "unary", "OK"): 1,
        ("AdminService", "CreateEnrollment", "unary", "OK"): 1,
        ("IngestService", "RegisterDevice", "unary", "OK"): 1,
        ("IngestService", "Stream", "bidi_stream", "OK"): 1,
        ("IngestService", "Upload", "unary", "OK"): 2,
        ("IngestService", "Upload", "unary", "INTERNAL"): 1,
        ("ReportService", "CallSummary", "unary", "OK"): 1,
        ("ReportService", "CallSummary", "unary", "UNAUTHENTICATED"): 1,
    }
    got = {
        (
            dict(labels)["grpc_service"].removeprefix("callsight.v1."),
            dict(labels)["grpc_method"],
            dict(labels)["grpc_type"],
            dict(labels)["grpc_code"],
        ): v
        for (name, labels), v in after.items()
        if name == "grpc_server_handled_total"
    }
    assert got == expected
    assert started(after, "IngestService", "Upload", "unary") == 3
    assert started(after, "ReportService", "CallSummary", "unary") == 2
    latency = {"grpc_service": "callsight.v1.ReportService", "grpc_method": "CallSummary"}
    assert value(after, "grpc_server_handling_seconds_count", grpc_type="unary", **latency) == 2
    assert (
        value(after, "grpc_server_handling_seconds_bucket", grpc_type="unary", le="+Inf", **latency)
        == 2
    )

    # Flushes: rows written per table (new and updated calls), and the failed attempts.
    assert value(after, "callsight_flush_rows_sum", table="calls") == 13 + 1
    assert value(after, "callsight_flush_rows_sum", table="contacts") == 4
    assert value(after, "callsight_flush_rows_sum", table="telemetry") == 1
    assert value(after, "callsight_flush_seconds_count", table="calls") >= 1
    assert value(after, "callsight_db_errors_total", **{"class": "transient"}) == 2
    assert value(after, "callsight_db_errors_total", **{"class": "refused"}) == 1
    assert value(after, "callsight_db_errors_total", **{"class": "unexpected"}) == 0

    # State read at scrape time: all written, nothing held; the caches were used.
    assert value(after, "callsight_buffer_bytes") == 0
    assert value(after, "callsight_buffer_capacity_bytes") == svc.config.buffer_max_bytes
    assert value(after, "callsight_admission_waiting") == 0
    assert value(after, "callsight_rows_buffered") == 0
    assert value(after, "callsight_inserts_in_flight") == 0
    assert value(after, "callsight_flushes_pending") == 0
    assert value(after, "callsight_open_streams") == 0
    assert value(after, "callsight_connected_devices") == 0
    # Calls and contacts remembered; the refused write made dedup forget the device's telemetry.
    assert value(after, "callsight_dedup_entries") == warmed + 13 + 4
    assert value(after, "callsight_cache_misses_total", cache="numbers") > 0
    assert value(after, "callsight_cache_hits_total", cache="numbers") > 0
    assert value(after, "callsight_cache_entries", cache="numbers") > 0
    # Batches of a few records are decoded on the loop, never sent to the decode workers.
    assert value(after, "callsight_decoded_batches_total", where="loop") > 0
    assert value(after, "callsight_decoded_batches_total", where="workers") == 0
    assert value(after, "callsight_decode_worker_restarts_total") == 0
    # Nothing went to the process-wide default registry.
    assert prometheus_client.REGISTRY.get_sample_value("callsight_buffer_bytes") is None


async def test_metrics_can_be_turned_off(data_dir: Path, service: Service) -> None:
    svc = Service(make_config(data_dir, service.config.database, metrics_listen="off"))
    await svc.start()
    try:
        assert svc.metrics_port is None
    finally:
        await svc.stop()


async def test_a_metrics_port_in_use_is_a_startup_error(data_dir: Path, service: Service) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        svc = Service(
            make_config(data_dir, service.config.database, metrics_listen=f"127.0.0.1:{port}")
        )
        try:
            with pytest.raises(StartupError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
                await svc.start()
        finally:
            await svc.stop()


def test_serve_with_the_metrics_port_in_use_is_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "callsight.server",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"callsight: cannot serve metrics on 127.0.0.1:{port}: the address is in use (another "
        "callsight or another program serves there); stop it or pass --metrics-listen "
        "HOST:PORT (or off)"
    ]
    assert not data.exists()
