"""WatchSummary end to end: first totals as CallSummary's, then updates from acked uploads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from callsight.server.app import Service
from callsight.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration.helpers import Tenant, auth, enroll, expect_status, new_employee, new_tenant

CODE = grpc.StatusCode
T = common_pb2
DAY_MS = 86_400_000
# Generous: an update is due within about a second of the ack; this only bounds a hung test.
WAIT_S = 10.0


def calls(prefix: str, n: int, start_ms: int, **fields: Any) -> ingest_pb2.UploadRequest:
    return ingest_pb2.UploadRequest(
        seq=int(time.time() * 1000) % 1_000_000_000,
        batch_id=f"{prefix}-{time.time_ns()}",
        calls=ingest_pb2.CallLogBatch(
            records=[
                ingest_pb2.CallRecord(
                    call_id=f"{prefix}{i}",
                    number=f"+91981{i % 7:07d}",
                    type=(T.CALL_TYPE_INCOMING, T.CALL_TYPE_OUTGOING, T.CALL_TYPE_MISSED)[i % 3],
                    started_at_ms=start_ms + i * 1000,
                    duration_s=0 if i % 3 == 2 else 20 + i,
                )
                for i in range(n)
            ]
        ),
    )


async def upload(channel: grpc.aio.Channel, token: str, request: ingest_pb2.UploadRequest) -> int:
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(request, metadata=auth(token))
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and ack.rejected == 0, ack
    return ack.server_time_ms


async def next_update(call: Any) -> report_pb2.WatchSummaryUpdate:
    update = await asyncio.wait_for(call.read(), WAIT_S)
    assert isinstance(update, report_pb2.WatchSummaryUpdate), update
    return update


async def until(call: Any, done: Any) -> report_pb2.WatchSummaryUpdate:
    """Updates until one satisfies ``done`` (within WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        update = await asyncio.wait_for(call.read(), max(0.1, deadline - time.monotonic()))
        if done(update):
            return update


class Team:
    def __init__(self, tenant: Tenant, employees: list[str], tokens: list[str]) -> None:
        self.tenant = tenant
        self.employees = employees
        self.tokens = tokens


async def team(channel: grpc.aio.Channel) -> Team:
    tenant = await new_tenant(channel)
    employees, tokens = [], []
    for i in range(2):
        employee = await new_employee(channel, tenant, f"E{i}", f"+91970000001{i}")
        device = await enroll(channel, tenant, employee)
        employees.append(employee)
        tokens.append(device.device_token)
    return Team(tenant, employees, tokens)


def stub(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


async def test_first_totals_are_call_summary_then_uploads_update_them(
    channel: grpc.aio.Channel,
) -> None:
    t = await team(channel)
    now = int(time.time() * 1000)
    from_ms = now - 2 * DAY_MS
    await upload(channel, t.tokens[0], calls("a", 30, now - DAY_MS))
    await upload(channel, t.tokens[1], calls("b", 12, now - DAY_MS))
    await upload(channel, t.tokens[1], calls("old", 5, now - 5 * DAY_MS))  # before from_ms
    watch_filter = report_pb2.ReportFilter(from_ms=from_ms)
    expected = await stub(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=watch_filter), metadata=t.tenant.admin
    )
    per_employee = await stub(channel).EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=watch_filter), metadata=t.tenant.admin
    )
    call = stub(channel).WatchSummary(
        report_pb2.WatchSummaryRequest(filter=watch_filter), metadata=t.tenant.admin
    )
    try:
        first = await next_update(call)
        assert first.summary == expected.summary
        assert first.summary.total_calls == 42
        assert {e.employee_id: e.summary for e in first.employees} == {
            r.employee_id: r.summary for r in per_employee.employees
        }

        acked_ms = await upload(channel, t.tokens[0], calls("c", 9, now - 3600_000))
        update = await until(call, lambda u: u.summary.total_calls == 51)
        assert update.summary.incoming_calls == first.summary.incoming_calls + 3
        assert update.summary.missed_calls == first.summary.missed_calls + 3
        assert update.summary.total_duration_s == first.summary.total_duration_s + sum(
            20 + i for i in range(9) if i % 3 != 2
        )
        assert update.newest_ack_ms >= acked_ms
        # Only the employee who uploaded changed.
        assert [e.employee_id for e in update.employees] == [t.employees[0]]
        assert update.employees[0].summary.total_calls == 39

        # The judged figures catch up with a query: the totals end equal to CallSummary's.
        expected = await stub(channel).CallSummary(
            report_pb2.CallSummaryRequest(filter=watch_filter), metadata=t.tenant.admin
        )
        await until(call, lambda u: u.summary == expected.summary)
    finally:
        call.cancel()


async def test_a_new_version_of_a_call_is_caught_up(channel: grpc.aio.Channel) -> None:
    t = await team(channel)
    now = int(time.time() * 1000)
    start = now - 3600_000
    await upload(channel, t.tokens[0], calls("v", 3, start))
    call = stub(channel).WatchSummary(
        report_pb2.WatchSummaryRequest(filter=report_pb2.ReportFilter(from_ms=now - DAY_MS)),
        metadata=t.tenant.admin,
    )
    try:
        first = await next_update(call)
        assert first.summary.total_duration_s == 20 + 21
        newer = calls("v", 1, start)
        newer.calls.records[0].duration_s = 500
        newer.calls.records[0].updated_at_ms = now
        await upload(channel, t.tokens[0], newer)
        update = await until(call, lambda u: u.summary.total_duration_s == 500 + 21)
        assert update.summary.total_calls == 3
    finally:
        call.cancel()


async def test_watches_honour_employees_and_types(channel: grpc.aio.Channel) -> None:
    t = await team(channel)
    now = int(time.time() * 1000)
    admin = t.tenant.admin
    only_first = stub(channel).WatchSummary(
        report_pb2.WatchSummaryRequest(
            filter=report_pb2.ReportFilter(from_ms=now - DAY_MS, employee_ids=[t.employees[0]])
        ),
        metadata=admin,
    )
    missed = stub(channel).WatchSummary(
        report_pb2.WatchSummaryRequest(
            filter=report_pb2.ReportFilter(from_ms=now - DAY_MS, call_types=[T.CALL_TYPE_MISSED])
        ),
        metadata=admin,
    )
    try:
        assert (await next_update(only_first)).summary.total_calls == 0
        assert (await next_update(missed)).summary.total_calls == 0
        await upload(channel, t.tokens[1], calls("x", 6, now - 60_000))
        await upload(channel, t.tokens[0], calls("y", 3, now - 60_000))
        mine = await until(only_first, lambda u: u.summary.total_calls > 0)
        assert mine.summary.total_calls == 3
        assert [e.employee_id for e in mine.employees] == [t.employees[0]]
        both = await until(missed, lambda u: u.summary.total_calls == 3)
        assert both.summary.missed_calls == 3
        assert both.summary.incoming_calls == 0
    finally:
        only_first.cancel()
        missed.cancel()


async def test_many_watchers_share_one_counter_set_and_tenants_stay_apart(
    channel: grpc.aio.Channel, service: Service
) -> None:
    t = await team(channel)
    other = await team(channel)
    now = int(time.time() * 1000)
    hub = service.ingestor.watch if service.ingestor is not None else None
    assert hub is not None
    sets_before = hub.counter_sets
    request = report_pb2.WatchSummaryRequest(filter=report_pb2.ReportFilter(from_ms=now - DAY_MS))
    watchers = [stub(channel).WatchSummary(request, metadata=t.tenant.admin) for _ in range(50)]
    theirs = stub(channel).WatchSummary(request, metadata=other.tenant.admin)
    try:
        firsts = await asyncio.gather(*(next_update(w) for w in watchers))
        assert {f.summary.total_calls for f in firsts} == {0}
        assert (await next_update(theirs)).summary.total_calls == 0
        assert hub.counter_sets == sets_before + 2  # one per tenant's filter, not per watcher
        await upload(channel, t.tokens[0], calls("m", 4, now - 60_000))
        updates = await asyncio.gather(
            *(until(w, lambda u: u.summary.total_calls == 4) for w in watchers)
        )
        assert len(updates) == 50
        # The other tenant's watcher got nothing: its next message is its own upload's.
        await upload(channel, other.tokens[0], calls("o", 2, now - 60_000))
        assert (await next_update(theirs)).summary.total_calls == 2
    finally:
        for w in [*watchers, theirs]:
            w.cancel()
    await asyncio.sleep(0.2)
    assert hub.counter_sets == sets_before


async def test_bad_filters_are_refused(channel: grpc.aio.Channel) -> None:
    t = await team(channel)

    async def first(request_filter: report_pb2.ReportFilter) -> None:
        call = stub(channel).WatchSummary(
            report_pb2.WatchSummaryRequest(filter=request_filter), metadata=t.tenant.admin
        )
        await call.read()

    error = await expect_status(first(report_pb2.ReportFilter(from_ms=-1)), CODE.INVALID_ARGUMENT)
    assert "from_ms must not be negative" in (error.details() or "")
    error = await expect_status(
        first(report_pb2.ReportFilter(call_types=[99])), CODE.INVALID_ARGUMENT
    )
    assert "call_types [99]" in (error.details() or "")
