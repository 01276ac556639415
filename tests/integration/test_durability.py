"""An ack means durable: SIGKILL mid-stream, a failing writer, bounded memory, graceful stop."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
from google.rpc import error_details_pb2, status_pb2

from callsight.loadtest.harness import ServerProcess
from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.storage.writer import Sink
from callsight.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import OPERATOR_TOKEN, make_config, master_key_b64
from tests.faults import FaultInjectingWriter
from tests.integration.calls import batch, call, stored_calls
from tests.integration.helpers import auth, enroll, expect_status, new_employee, new_tenant

ROOT = Path(__file__).resolve().parents[2]


def _server(data_dir: Path) -> ServerProcess:
    # ``callsight serve`` as a child process that tests may SIGKILL, with the suite's secrets.
    env = {
        "CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "CALLSIGHT_MASTER_KEY": master_key_b64(),
        "CALLSIGHT_GRACE_PERIOD_S": "5",
    }
    return ServerProcess(data_dir, env=env)


def _count_calls(data_dir: Path, tenant_id: str) -> dict[str, object]:
    # Counted in a process of its own: chDB opens a path in one process at a time.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.count_calls",
            f"chdb://{data_dir.resolve() / 'clickhouse'}",
            "callsight",
            tenant_id,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def _bootstrap(port: int) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        tenant = await new_tenant(channel)
        employee = await new_employee(channel, tenant, "Asha", "9876543210")
        device = await enroll(channel, tenant, employee)
    return tenant.tenant_id, device.device_token


async def _stream_until(
    port: int,
    token: str,
    requests: list[ingest_pb2.UploadRequest],
    acked: set[int],
    stop_after: int | None = None,
) -> None:
    """Streams every request without waiting for acks; records acked seqs."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)

        async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
            for request in requests:
                yield request

        try:
            async for ack in ingest.Stream(send(), metadata=auth(token)):
                assert (ack.result, ack.rejected) == (ingest_pb2.UPLOAD_RESULT_ACCEPTED, 0)
                acked.add(ack.seq)
                if stop_after is not None and len(acked) >= stop_after:
                    return
        except grpc.aio.AioRpcError:
            pass  # the server died under us: the un-acked batches get re-sent


async def test_sigkill_mid_stream_then_resend_stores_every_call_exactly_once(
    tmp_path: Path,
) -> None:
    server = _server(tmp_path / "data")
    server.start()
    try:
        tenant_id, token = await _bootstrap(server.port)
        # Overlapping batches: call i appears in up to two batches.
        requests = [
            batch(s, [call(i) for i in range(s * 400, s * 400 + 500)]) for s in range(1, 121)
        ]
        unique = {f"c{i}" for s in range(1, 121) for i in range(s * 400, s * 400 + 500)}
        acked: set[int] = set()
        streaming = asyncio.create_task(_stream_until(server.port, token, requests, acked))
        while len(acked) < 10:
            await asyncio.sleep(0.01)
        assert server.kill() == -signal.SIGKILL
        await streaming
        assert 10 <= len(acked) < len(requests)
        acked_before_kill = set(acked)

        server.start()
        unacked = [r for r in requests if r.seq not in acked]
        await _stream_until(server.port, token, unacked, acked)
        assert acked == {r.seq for r in requests}
        server.kill(signal.SIGTERM)
        counted = _count_calls(server.data_dir, tenant_id)
    finally:
        if server.running():
            server.kill()
    assert counted["unique"] == len(unique)
    assert set(counted["call_ids"]) == unique  # type: ignore[arg-type]
    acked_calls = {
        r.call_id for r in requests if r.seq in acked_before_kill for r in r.calls.records
    }
    assert acked_calls <= set(counted["call_ids"])  # type: ignore[arg-type]


async def test_sigterm_writes_and_acks_what_was_buffered(tmp_path: Path) -> None:
    server = _server(tmp_path / "data")
    server.start()
    try:
        tenant_id, token = await _bootstrap(server.port)
        requests = [
            batch(s, [call(i) for i in range(s * 500, s * 500 + 500)]) for s in range(1, 41)
        ]
        acked: set[int] = set()
        streaming = asyncio.create_task(_stream_until(server.port, token, requests, acked))
        while not acked:
            await asyncio.sleep(0.01)
        assert server.kill(signal.SIGTERM) == 0
        await streaming
        counted = _count_calls(server.data_dir, tenant_id)
    finally:
        if server.running():
            server.kill()
    acked_calls = {r.call_id for req in requests if req.seq in acked for r in req.calls.records}
    assert acked_calls <= set(counted["call_ids"])  # type: ignore[arg-type]
    assert any('"event": "stopped"' in line for line in server.log)


async def test_failing_writer_acks_nothing_holds_memory_and_recovers(data_dir: Path) -> None:
    faults: list[FaultInjectingWriter] = []

    def wrap(sink: Sink) -> Sink:
        faults.append(FaultInjectingWriter(sink))
        return faults[0]

    budget = 2 * 1024 * 1024
    svc = Service(
        make_config(
            data_dir,
            f"faults_{secrets.token_hex(4)}",
            buffer_max_bytes=budget,
            batch_max_bytes=budget,
        ),
        wrap_sink=wrap,
    )
    await svc.start()
    assert svc.ingestor is not None
    try:
        tenant_id, token = await _bootstrap(svc.port)
        _, other_token = await _bootstrap(svc.port)
        note = "called back, wants a quote " * 40  # ~1 KB: the offered bytes dwarf the budget
        requests = [
            batch(s, [call(i, note=note) for i in range(s * 500, s * 500 + 500)])
            for s in range(1, 201)
        ]
        offered = sum(r.ByteSize() for r in requests)
        rss = psutil.Process().memory_info().rss
        faults[0].fail_until_cleared()
        acked: set[int] = set()
        streaming = asyncio.create_task(_stream_until(svc.port, token, requests, acked))
        await asyncio.sleep(3)
        assert acked == set()
        assert faults[0].failures > 0
        assert svc.ingestor.budget.used <= budget
        # The server stopped reading: most batches are still held by flow control.
        assert svc.ingestor.admitted < len(requests) // 4
        grown = psutil.Process().memory_info().rss - rss
        assert grown < offered / 2, f"RSS grew {grown >> 20} MiB for {offered >> 20} MiB offered"

        # Upload is told to come back later, with a retry delay in the status details.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            error = await expect_status(
                ingest.Upload(batch(1, [call(1)]), metadata=auth(other_token)),
                grpc.StatusCode.UNAVAILABLE,
            )
            details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
            status = status_pb2.Status.FromString(details)  # type: ignore[arg-type]
            retry = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(retry) and retry.retry_delay.ToMilliseconds() > 0

        faults[0].clear()
        await asyncio.wait_for(streaming, 120)
        assert acked == {r.seq for r in requests}
        db = Database(svc.config.dsn.reveal(), svc.config.database)
        try:
            stored = await stored_calls(db, tenant_id)
        finally:
            db.close()
        assert len(stored) == 200 * 500
    finally:
        await svc.stop()
