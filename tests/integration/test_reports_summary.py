"""Summary reports end to end: a realistic data set through the real Stream, every field of
every summary RPC compared with the pure-Python reference in ``reference.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration import dataset, reference
from tests.integration.calls import batch, call
from tests.integration.helpers import (
    Metadata,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T = common_pb2


@dataclass
class Fixture:
    truth: dataset.Truth
    keys: dict[str, Metadata]  # "admin" and "reports"
    synced: tuple[int, int]  # every call reached the server inside this window (epoch ms)

    @property
    def names(self) -> dict[str, str]:
        return {e.employee_id: e.name for e in self.truth.employees.values()}

    @property
    def employee_ids(self) -> list[str]:
        return sorted(self.truth.employees)


async def _fixture(channel: grpc.aio.Channel, **kwargs: Any) -> Fixture:
    before = int(time.time() * 1000)
    truth = await dataset.build(channel, **kwargs)
    after = int(time.time() * 1000)
    created = await admin_pb2_grpc.AdminServiceStub(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="dashboard", role=common_pb2.ROLE_REPORTS),
        metadata=truth.tenant.admin,
    )
    return Fixture(
        truth, {"admin": truth.tenant.admin, "reports": auth(created.api_key)}, (before, after)
    )


@pytest.fixture(scope="module")
async def datasets(channel: grpc.aio.Channel) -> dict[str, Fixture]:
    return {
        "kolkata": await _fixture(channel),
        "new_york": await _fixture(
            channel, seed=11, employees=4, calls_per_device=200, days=4, timezone="America/New_York"
        ),
    }


def _filter(fx: Fixture, case: str) -> report_pb2.ReportFilter:
    """The ReportFilter of one named case over a data set."""
    truth = fx.truth
    f = report_pb2.ReportFilter(from_ms=truth.start_ms, to_ms=truth.end_ms)
    ids = fx.employee_ids
    if case == "employee_ids":
        f.employee_ids.extend([ids[0], ids[2]])
    elif case == "employee_tags":
        f.employee_tags.append("north")
    elif case == "tags_and_ids":
        f.employee_tags.extend(["support", "north"])
        f.employee_ids.extend(ids[:3])
    elif case == "unknown_tag":
        f.employee_tags.append("nobody-has-this")
    elif case == "outgoing_and_missed":
        f.call_types.extend([T.CALL_TYPE_OUTGOING, T.CALL_TYPE_MISSED])
    elif case == "incoming_side":
        f.call_types.extend([T.CALL_TYPE_INCOMING, T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED])
    elif case == "durations":
        f.min_duration_s, f.max_duration_s = 30, 300
    elif case == "zero_duration_only":
        f.max_duration_s = 0
    elif case == "include_excluded":
        f.include_excluded_numbers = True
    elif case == "sub_range":
        f.from_ms, f.to_ms = truth.start_ms + DAY_MS + 5 * HOUR_MS, truth.start_ms + 3 * DAY_MS
    elif case == "timezone_override":
        f.timezone = "Europe/London" if truth.timezone != "Europe/London" else "Asia/Tokyo"
    elif case == "default_range":
        f.from_ms = f.to_ms = 0
    elif case == "sync_time_now":
        f.time_field = report_pb2.TIME_FIELD_SYNC_TIME
        f.from_ms, f.to_ms = fx.synced[0] - 60_000, int(time.time() * 1000) + 60_000
    elif case == "sync_time_past":
        f.time_field = report_pb2.TIME_FIELD_SYNC_TIME
        f.from_ms, f.to_ms = fx.synced[0] - 5 * DAY_MS, fx.synced[0]
    else:
        assert case == "all", case
    return f


CASES = [
    ("kolkata", "all"),
    ("kolkata", "employee_ids"),
    ("kolkata", "employee_tags"),
    ("kolkata", "tags_and_ids"),
    ("kolkata", "unknown_tag"),
    ("kolkata", "outgoing_and_missed"),
    ("kolkata", "incoming_side"),
    ("kolkata", "durations"),
    ("kolkata", "zero_duration_only"),
    ("kolkata", "include_excluded"),
    ("kolkata", "sub_range"),
    ("kolkata", "timezone_override"),
    ("kolkata", "default_range"),
    ("kolkata", "sync_time_now"),
    ("kolkata", "sync_time_past"),
    ("new_york", "all"),
    ("new_york", "sub_range"),
    ("new_york", "timezone_override"),
    ("new_york", "employee_tags"),
]


def _same(got: Any, want: Any) -> None:
    # Text format gives a line-by-line diff of every field on failure.
    assert str(got) == str(want)
    assert got == want


@pytest.mark.parametrize("key", ["admin", "reports"])
@pytest.mark.parametrize(("which", "case"), CASES, ids=[f"{w}-{c}" for w, c in CASES])
async def test_summary_reports_match_the_reference(
    channel: grpc.aio.Channel, datasets: dict[str, Fixture], which: str, case: str, key: str
) -> None:
    fx = datasets[which]
    f = _filter(fx, case)
    calls, tz = reference.select(fx.truth, f, fx.synced)
    if case in ("all", "sub_range", "sync_time_now", "default_range", "include_excluded"):
        assert calls, "the case should select calls"
    if case in ("unknown_tag", "sync_time_past"):
        assert not calls
    stub = report_pb2_grpc.ReportServiceStub(channel)
    md = fx.keys[key]

    got_summary = await stub.CallSummary(report_pb2.CallSummaryRequest(filter=f), metadata=md)
    _same(got_summary.summary, reference.summary(calls, tz))

    employees = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=f, page_size=1000), metadata=md
    )
    assert employees.next_page_token == ""
    _same(list(employees.employees), reference.employee_rows(calls, tz, fx.names))

    analysis = await stub.CallAnalysis(report_pb2.CallAnalysisRequest(filter=f), metadata=md)
    _same(analysis, reference.analysis(calls, tz, fx.names))

    hourly = await stub.HourlyAnalytics(report_pb2.HourlyAnalyticsRequest(filter=f), metadata=md)
    assert [h.hour for h in hourly.hours] == list(range(24))
    _same(list(hourly.hours), reference.hourly(calls, tz))

    days = await stub.DaywiseAnalytics(report_pb2.DaywiseAnalyticsRequest(filter=f), metadata=md)
    _same(list(days.days), reference.daywise(calls, tz))

    working = await stub.WorkingHours(report_pb2.WorkingHoursRequest(filter=f), metadata=md)
    _same(list(working.days), reference.working_days(calls, tz))
    # The per-day rows add up to the summary's working seconds.
    assert sum(d.working_seconds for d in working.days) == got_summary.summary.working_seconds


async def test_local_days_follow_the_time_zone(datasets: dict[str, Fixture]) -> None:
    # Guards the data set itself: the time zone cases only test something if days differ.
    fx = datasets["new_york"]
    f = report_pb2.ReportFilter(from_ms=fx.truth.start_ms, to_ms=fx.truth.end_ms)
    calls, tz = reference.select(fx.truth, f, fx.synced)
    local = [(d.date, d.calls) for d in reference.daywise(calls, tz)]
    utc = [(d.date, d.calls) for d in reference.daywise(calls, "UTC")]
    assert local != utc


async def test_employee_summary_pages_walk_every_employee_once(
    channel: grpc.aio.Channel, datasets: dict[str, Fixture]
) -> None:
    fx = datasets["kolkata"]
    stub = report_pb2_grpc.ReportServiceStub(channel)
    f = _filter(fx, "all")
    calls, tz = reference.select(fx.truth, f, fx.synced)
    want = reference.employee_rows(calls, tz, fx.names)
    assert len(want) == len(fx.truth.employees) == 6

    rows: list[report_pb2.EmployeeSummaryRow] = []
    token, pages = "", 0
    while True:
        page = await stub.EmployeeSummary(
            report_pb2.EmployeeSummaryRequest(filter=f, page_size=2, page_token=token),
            metadata=fx.keys["reports"],
        )
        pages += 1
        assert len(page.employees) <= 2
        rows.extend(page.employees)
        token = page.next_page_token
        if not token:
            break
        assert pages < 10, "paging does not end"
    assert pages == 3
    assert [r.employee_id for r in rows] == fx.employee_ids
    _same(rows, want)

    # A token only continues the report and filter it was issued for.
    first = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=f, page_size=2), metadata=fx.keys["admin"]
    )
    other = _filter(fx, "durations")
    await expect_status(
        stub.EmployeeSummary(
            report_pb2.EmployeeSummaryRequest(
                filter=other, page_size=2, page_token=first.next_page_token
            ),
            metadata=fx.keys["admin"],
        ),
        CODE.INVALID_ARGUMENT,
    )


async def test_invalid_requests_are_refused(
    channel: grpc.aio.Channel, datasets: dict[str, Fixture]
) -> None:
    fx = datasets["kolkata"]
    stub = report_pb2_grpc.ReportServiceStub(channel)
    md = fx.keys["reports"]
    start = fx.truth.start_ms
    bad_filters = [
        ("reversed", report_pb2.ReportFilter(from_ms=start + DAY_MS, to_ms=start)),
        ("400 days", report_pb2.ReportFilter(from_ms=start, to_ms=start + 401 * DAY_MS)),
        (
            "'Mars/Base'",
            report_pb2.ReportFilter(from_ms=start, to_ms=start + 1, timezone="Mars/Base"),
        ),
    ]
    for expected, f in bad_filters:
        for rpc, request in (
            (stub.CallSummary, report_pb2.CallSummaryRequest(filter=f)),
            (stub.EmployeeSummary, report_pb2.EmployeeSummaryRequest(filter=f)),
            (stub.CallAnalysis, report_pb2.CallAnalysisRequest(filter=f)),
            (stub.HourlyAnalytics, report_pb2.HourlyAnalyticsRequest(filter=f)),
            (stub.DaywiseAnalytics, report_pb2.DaywiseAnalyticsRequest(filter=f)),
            (stub.WorkingHours, report_pb2.WorkingHoursRequest(filter=f)),
        ):
            error = await expect_status(rpc(request, metadata=md), CODE.INVALID_ARGUMENT)
            details = error.details() or ""
            assert expected in details, details

    good = report_pb2.ReportFilter(from_ms=start, to_ms=start + DAY_MS)
    for request in (
        report_pb2.EmployeeSummaryRequest(filter=good, page_token="not-a-token"),
        report_pb2.EmployeeSummaryRequest(filter=good, page_token="A" * 60),
    ):
        error = await expect_status(
            stub.EmployeeSummary(request, metadata=md), CODE.INVALID_ARGUMENT
        )
        assert "page_token" in (error.details() or "")
    error = await expect_status(
        stub.EmployeeSummary(
            report_pb2.EmployeeSummaryRequest(filter=good, page_size=1001), metadata=md
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "1000" in (error.details() or "")
    # The maximum itself is fine.
    await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=good, page_size=1000), metadata=md
    )


async def test_employee_summary_pages_keep_the_first_page_snapshot(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    stub = report_pb2_grpc.ReportServiceStub(channel)
    tokens = {}
    for n in range(3):
        employee_id = await new_employee(channel, tenant, f"E{n}", f"+9170000001{n:02d}")
        tokens[employee_id] = (await enroll(channel, tenant, employee_id)).device_token
    for seq, token in enumerate(tokens.values(), 1):
        ack = await ingest.Upload(batch(seq, [call(seq)]), metadata=auth(token))
        assert ack.accepted == 1
    request = report_pb2.EmployeeSummaryRequest(page_size=1)

    first = await stub.EmployeeSummary(request, metadata=tenant.admin)
    last = max(tokens)
    # Calls received after the first page stay out of the later pages of the same walk.
    ack = await ingest.Upload(batch(9, [call(10), call(11)]), metadata=auth(tokens[last]))
    assert ack.accepted == 2
    rows = list(first.employees)
    token = first.next_page_token
    while token:
        request.page_token = token
        page = await stub.EmployeeSummary(request, metadata=tenant.admin)
        rows.extend(page.employees)
        token = page.next_page_token
    assert [r.employee_id for r in rows] == sorted(tokens)
    assert [r.summary.total_calls for r in rows] == [1, 1, 1]
    assert sorted(r.name for r in rows) == ["E0", "E1", "E2"]
    fresh = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(page_size=10), metadata=tenant.admin
    )
    assert [r.summary.total_calls for r in fresh.employees] == [1, 1, 3]
