"""The Node reference agent (``loadtest/node_agent/agent.js``, @grpc/grpc-js) against a real
server: it registers, streams, keeps every batch until acked, re-sends after a stream fails
with UNAVAILABLE (waiting the RetryInfo delay), and never re-sends a REJECTED batch. The agent
runs as a child process; ``make contract`` (part of ``make test``) installs its packages."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.storage.writer import Sink
from callsight.v1 import admin_pb2, admin_pb2_grpc, report_pb2, report_pb2_grpc
from tests.conftest import make_config
from tests.faults import FaultInjectingWriter
from tests.integration.calls import DAY_MS, stored_calls
from tests.integration.helpers import Tenant, new_employee, new_tenant

AGENT = Path(__file__).resolve().parents[2] / "loadtest" / "node_agent" / "agent.js"
NODE = shutil.which("node")
NO_AGENT = (
    "node is not on PATH"
    if NODE is None
    else "the Node agent's packages are not installed (make contract installs them; make test "
    "runs it first)"
    if not (AGENT.parent / "node_modules" / "@grpc" / "grpc-js").is_dir()
    else ""
)
pytestmark = pytest.mark.skipif(bool(NO_AGENT), reason=NO_AGENT)

NO_PAYLOAD = "UploadRequest has no payload: set calls, contacts or telemetry"


@dataclass
class AgentRun:
    returncode: int
    summary: dict[str, Any]
    events: list[dict[str, Any]]


async def run_agent(
    port: int,
    code: str,
    *args: str,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
) -> AgentRun:
    """Runs agent.js to the end without blocking the loop that serves it; ``on_event`` sees
    each JSON line of its stderr as it comes."""
    assert NODE is not None
    child = await asyncio.create_subprocess_exec(
        NODE,
        str(AGENT),
        "--target",
        f"127.0.0.1:{port}",
        "--enrollment-code",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    events: list[dict[str, Any]] = []

    async def read_events(lines: AsyncIterator[bytes]) -> None:
        async for line in lines:
            try:
                event = json.loads(line)
            except ValueError:  # a crash's stack trace: kept for the failure message
                event = {"event": "text", "text": line.decode(errors="replace")}
            events.append(event)
            on_event(event)

    try:
        out, _ = await asyncio.wait_for(
            asyncio.gather(child.stdout.read(), read_events(child.stderr)), timeout=120
        )
        returncode = await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert out, f"agent.js printed no summary; stderr: {events}"
    return AgentRun(returncode, json.loads(out), events)


async def enrollment_code(channel: grpc.aio.Channel, tenant: Tenant) -> str:
    employee_id = await new_employee(channel, tenant, "Asha", "9876543210")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    response = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee_id), metadata=tenant.admin
    )
    return response.enrollment_code


def expected_summary(call_numbers: Iterable[int]) -> dict[str, int]:
    """What CallSummary must count for the agent's calls with these numbers: call i is
    outgoing, incoming or missed by i % 3, talks 30 + i % 300 s unless missed, and dials
    client i % 50."""
    numbers = list(call_numbers)
    connected = [i for i in numbers if i % 3 != 2]
    return {
        "total_calls": len(numbers),
        "outgoing_calls": sum(i % 3 == 0 for i in numbers),
        "incoming_calls": sum(i % 3 == 1 for i in numbers),
        "missed_calls": sum(i % 3 == 2 for i in numbers),
        "connected_calls": len(connected),
        "total_duration_s": sum(30 + i % 300 for i in connected),
        "unique_clients": len({i % 50 for i in numbers}),
    }


async def call_summary(channel: grpc.aio.Channel, tenant: Tenant) -> dict[str, int]:
    reports = report_pb2_grpc.ReportServiceStub(channel)
    now_ms = int(time.time() * 1000)
    response = await reports.CallSummary(
        report_pb2.CallSummaryRequest(
            filter=report_pb2.ReportFilter(from_ms=now_ms - 2 * DAY_MS, to_ms=now_ms + 60_000)
        ),
        metadata=tenant.admin,
    )
    return {name: getattr(response.summary, name) for name in expected_summary([])}


def calls_of(batches: Iterable[int], per_batch: int) -> list[int]:
    return [i for seq in batches for i in range((seq - 1) * per_batch, seq * per_batch)]


async def test_the_node_agent_streams_batches_that_call_summary_counts(
    service: Service, channel: grpc.aio.Channel
) -> None:
    tenant = await new_tenant(channel)
    code = await enrollment_code(channel, tenant)

    run = await run_agent(
        service.port, code, "--batches", "4", "--calls-per-batch", "50", "--empty-batch", "3"
    )

    assert run.returncode == 0, run.events
    summary = run.summary
    assert summary["device_id"]
    assert (summary["acked"], summary["rejected"], summary["resends"]) == (3, 1, 0)
    assert summary["streams"] == 1 and summary["backoffs"] == []
    assert summary["calls_acked"] == 150
    assert summary["records"] == {"accepted": 150, "updated": 0, "duplicates": 0, "rejected": 0}
    assert [(b["seq"], b["reason"]) for b in summary["rejected_batches"]] == [(3, NO_PAYLOAD)]
    assert await call_summary(channel, tenant) == expected_summary(calls_of((1, 2, 4), 50))


async def test_the_node_agent_resends_unacked_batches_after_unavailable_with_retry_info(
    data_dir: Path, service: Service
) -> None:
    faults: list[FaultInjectingWriter] = []

    def wrap(sink: Sink) -> Sink:
        faults.append(FaultInjectingWriter(sink))
        return faults[0]

    # A server of its own (its own metrics) on the session's database, giving up on a failing
    # insert after 0.5 s: the stream then ends UNAVAILABLE with a RetryInfo of 1 s.
    svc = Service(
        make_config(data_dir, service.config.database, write_retry_max_elapsed_s=0.5),
        wrap_sink=wrap,
    )
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            tenant = await new_tenant(channel)
            code = await enrollment_code(channel, tenant)
            faults[0].fail_until_cleared(tables=["calls"])

            def heal(event: dict[str, Any]) -> None:
                # The agent is now waiting out the delay; its re-sends find the database back.
                if event["event"] == "stream_failed":
                    faults[0].clear()

            # Batch 1 has no payload: its REJECTED ack comes first (acks follow request
            # order), then the stream fails on batch 2's insert with 2, 3 and 4 un-acked.
            run = await run_agent(
                svc.port,
                code,
                *("--batches", "4", "--calls-per-batch", "25", "--empty-batch", "1"),
                on_event=heal,
            )

            assert run.returncode == 0, run.events
            summary = run.summary
            assert faults[0].failures > 0
            failed = [e for e in run.events if e["event"] == "stream_failed"]
            assert [(e["code"], e["unacked"], e["source"]) for e in failed] == [
                ("UNAVAILABLE", 3, "RetryInfo")
            ]
            assert failed[0]["hinted_ms"] == 1000 and failed[0]["delay_ms"] >= 1000
            assert (summary["acked"], summary["rejected"], summary["resends"]) == (3, 1, 3)
            assert summary["streams"] == 2
            assert [(b["seq"], b["reason"]) for b in summary["rejected_batches"]] == [
                (1, NO_PAYLOAD)
            ]
            # The server saw the rejected batch once: it was not re-sent.
            assert svc.metrics is not None
            batches = svc.metrics.registry.get_sample_value
            assert batches("callsight_batches_total", {"result": "rejected"}) == 1
            assert batches("callsight_batches_total", {"result": "accepted"}) == 3
            # Nothing of the failed stream was stored, so the re-sends are new records.
            assert summary["records"]["accepted"] == 75
            assert await call_summary(channel, tenant) == expected_summary(calls_of((2, 3, 4), 25))
        db = Database(svc.config.dsn.reveal(), svc.config.database)
        try:
            assert len(await stored_calls(db, tenant.tenant_id)) == 75
        finally:
            db.close()
    finally:
        await svc.stop()


async def test_a_revoked_node_agent_stops_at_once_and_forgets_its_token(
    service: Service, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    tenant = await new_tenant(channel)
    code = await enrollment_code(channel, tenant)
    token_file = tmp_path / "device.json"
    args = ("--batches", "1", "--calls-per-batch", "5", "--token-file", str(token_file))
    first = await run_agent(service.port, code, *args)
    assert first.returncode == 0, first.events
    assert json.loads(token_file.read_text())["device_id"] == first.summary["device_id"]
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await admin.RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=first.summary["device_id"]),
        metadata=tenant.admin,
    )

    second = await run_agent(service.port, code, *args)

    assert second.returncode == 3, second.events
    assert [e["event"] for e in second.events] == ["loaded", "gave_up"]
    assert second.summary["device_id"] == first.summary["device_id"]
    assert (
        second.summary["error"]
        == "Stream: UNAUTHENTICATED: this device was revoked; enroll it again"
    )
    assert second.summary["streams"] == 1 and second.summary["backoffs"] == []
    assert not token_file.exists()


async def test_the_node_agent_backs_off_with_jitter_then_gives_up_without_a_server() -> None:
    # Port 1: nothing listens, so RegisterDevice fails UNAVAILABLE with no RetryInfo.
    run = await run_agent(1, "cse_unused", "--max-attempts", "2")

    assert run.returncode == 1
    assert run.summary["error"].startswith("RegisterDevice: UNAVAILABLE: ")
    [backoff] = run.summary["backoffs"]
    assert (backoff["rpc"], backoff["code"], backoff["source"]) == (
        "RegisterDevice",
        "UNAVAILABLE",
        "backoff",
    )
    assert 0 <= backoff["delay_ms"] <= 500  # full jitter under the first ceiling
