"""Calls from hidden numbers (the "private" client) and calls by channel (method, mode), end to
end: stored instead of rejected, counted, shown as one client "private", filtered in every report,
and never taken for a lead, an excluded or an erased number."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import pytest

from callsight.storage.database import Database
from callsight.storage.migrator import available
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration import reference
from tests.integration.calls import BASE_MS, DAY_MS, batch, counts
from tests.integration.dataset import PRIVATE, Call
from tests.integration.helpers import (
    Metadata,
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
T = common_pb2
N1, N2, N3 = "+919812345001", "+919812345002", "+919812345003"
PHONE, WHATSAPP, OTHER_VOIP = T.CALL_METHOD_PHONE, T.CALL_METHOD_WHATSAPP, T.CALL_METHOD_OTHER_VOIP
VOICE, VIDEO = T.CALL_MODE_VOICE, T.CALL_MODE_VIDEO
SHOWN, RESTRICTED = T.NUMBER_PRESENTATION_ALLOWED, T.NUMBER_PRESENTATION_RESTRICTED
UNKNOWN, PAYPHONE = T.NUMBER_PRESENTATION_UNKNOWN, T.NUMBER_PRESENTATION_PAYPHONE


def record(
    call_id: str, number: str, kind: int, duration_s: int, minute: int, **fields: object
) -> ingest_pb2.CallRecord:
    return ingest_pb2.CallRecord(
        call_id=call_id,
        number=number,
        type=kind,  # type: ignore[arg-type]
        duration_s=duration_s,
        started_at_ms=BASE_MS + minute * 60_000,
        **fields,  # type: ignore[arg-type]
    )


# Employee A's calls, then employee B's. The hidden ones: c2 (""), c3 ("-2"), c5 (a number the
# caller withheld: not kept), c6 ("-3"), c7 ("").
A_CALLS = [
    record("c1", N1, T.CALL_TYPE_INCOMING, 60, 0, name="Ravi"),
    record("c2", "", T.CALL_TYPE_MISSED, 0, 5, name="Ghost"),
    record("c3", "-2", T.CALL_TYPE_REJECTED, 0, 10),
    record("c4", N3, T.CALL_TYPE_OUTGOING, 0, 15, method=WHATSAPP, mode=VIDEO),
    record("c5", N1, T.CALL_TYPE_MISSED, 0, 20, presentation=RESTRICTED, name="Ravi"),
    record("c6", "-3", T.CALL_TYPE_MISSED, 0, 25, presentation=T.NUMBER_PRESENTATION_UNSPECIFIED),
]
B_CALLS = [
    record("c7", "", T.CALL_TYPE_MISSED, 0, 30, method=OTHER_VOIP, mode=VIDEO),
    record("c8", N2, T.CALL_TYPE_INCOMING, 20, 35, method=WHATSAPP, mode=VOICE),
]
# (presentation, method, mode) each call is stored with.
STORED = {
    "c1": (SHOWN, PHONE, VOICE),
    "c2": (UNKNOWN, PHONE, VOICE),
    "c3": (RESTRICTED, PHONE, VOICE),
    "c4": (SHOWN, WHATSAPP, VIDEO),
    "c5": (RESTRICTED, PHONE, VOICE),
    "c6": (PAYPHONE, PHONE, VOICE),
    "c7": (UNKNOWN, OTHER_VOIP, VIDEO),
    "c8": (SHOWN, WHATSAPP, VOICE),
}
PRIVATE_CALLS = {"c2", "c3", "c5", "c6", "c7"}


@dataclass
class Setup:
    tenant: Tenant
    employees: tuple[str, str]  # A, B
    devices: tuple[Metadata, Metadata]


async def setup(channel: grpc.aio.Channel) -> Setup:
    tenant = await new_tenant(channel)
    a = await new_employee(channel, tenant, "Asha", "+917000000101")
    b = await new_employee(channel, tenant, "Bala", "+917000000102")
    devices = (
        auth((await enroll(channel, tenant, a)).device_token),
        auth((await enroll(channel, tenant, b)).device_token),
    )
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    ack = await ingest.Upload(batch(1, A_CALLS), metadata=devices[0])
    assert (counts(ack), list(ack.errors)) == ((6, 0, 0, 0), [])
    ack = await ingest.Upload(batch(1, B_CALLS), metadata=devices[1])
    assert (counts(ack), list(ack.errors)) == ((2, 0, 0, 0), [])
    return Setup(tenant, (a, b), devices)


def window(**fields: object) -> report_pb2.ReportFilter:
    # Holds the settled whole days around BASE_MS, so plain summaries read rollups.
    return report_pb2.ReportFilter(
        from_ms=BASE_MS - 2 * DAY_MS,
        to_ms=int(time.time() * 1000) + DAY_MS,
        **fields,  # type: ignore[arg-type]
    )


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


async def summary(
    channel: grpc.aio.Channel, admin: Metadata, f: report_pb2.ReportFilter
) -> report_pb2.Summary:
    response = await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=f), metadata=admin
    )
    return response.summary


async def history(
    channel: grpc.aio.Channel, admin: Metadata, f: report_pb2.ReportFilter
) -> dict[str, report_pb2.CallHistoryEntry]:
    response = await reports(channel).CallHistory(
        report_pb2.CallHistoryRequest(filter=f, page_size=1000), metadata=admin
    )
    return {c.call_id: c for c in response.calls}


async def unique_clients(
    channel: grpc.aio.Channel, admin: Metadata, f: report_pb2.ReportFilter
) -> dict[str, tuple[str, int]]:
    """number -> (name, total calls)."""
    response = await reports(channel).UniqueClients(
        report_pb2.UniqueClientsRequest(filter=f, page_size=1000), metadata=admin
    )
    return {c.number: (c.name, c.total_calls) for c in response.clients}


def figures(s: report_pb2.Summary) -> tuple[int, ...]:
    return (
        s.total_calls,
        s.incoming_calls,
        s.outgoing_calls,
        s.missed_calls,
        s.rejected_calls,
        s.connected_calls,
        s.never_attended_calls,
        s.not_picked_by_client_calls,
        s.total_duration_s,
        s.unique_clients,
    )


async def test_hidden_callers_are_stored_not_rejected(
    channel: grpc.aio.Channel, db: Database
) -> None:
    s = await setup(channel)
    rows = await db.query(
        "SELECT call_id, presentation, method, mode, client_key, name_key"
        " FROM calls FINAL WHERE tenant_id = {t:String}",
        {"t": s.tenant.tenant_id},
    )
    stored = {call_id: (p, m, d) for call_id, p, m, d, _, _ in rows}
    assert stored == STORED
    keys = {call_id: key for call_id, _, _, _, key, _ in rows}
    # One client for every hidden caller, never 0, apart from every shown number.
    assert {keys[c] for c in PRIVATE_CALLS} == {2**64 - 1}
    assert len({keys[c] for c in ("c1", "c4", "c8")} - {2**64 - 1, 0}) == 3
    # No name is kept for a hidden caller, not even one the phone had for the withheld number.
    assert all(name_key == 0 for call_id, *_, name_key in rows if call_id in PRIVATE_CALLS)


async def test_every_summary_counts_private_calls_and_honours_the_filters(
    channel: grpc.aio.Channel,
) -> None:
    s = await setup(channel)
    admin = s.tenant.admin
    # Twice: the first makes the rollups of the settled days, the second reads them.
    for _ in range(2):
        assert figures(await summary(channel, admin, window())) == (8, 2, 1, 4, 1, 2, 5, 1, 80, 4)
    # Without the private client: N1, N2 and N3 only; the missed and rejected calls were hidden.
    assert figures(await summary(channel, admin, window(exclude_private=True))) == (
        3, 2, 1, 0, 0, 2, 0, 1, 80, 3,
    )  # fmt: skip
    by_method = {
        method: (await summary(channel, admin, window(call_methods=[method]))).total_calls
        for method in (PHONE, WHATSAPP, OTHER_VOIP)
    }
    assert by_method == {PHONE: 5, WHATSAPP: 2, OTHER_VOIP: 1}
    video = window(call_modes=[VIDEO])
    assert figures(await summary(channel, admin, video)) == (2, 0, 1, 1, 0, 0, 1, 1, 0, 2)
    both = window(call_methods=[PHONE, OTHER_VOIP], call_modes=[VOICE], exclude_private=True)
    assert (await summary(channel, admin, both)).total_calls == 1  # c1
    # The plain summary is unchanged by the filtered ones in between (its rollups still hold).
    assert figures(await summary(channel, admin, window())) == (8, 2, 1, 4, 1, 2, 5, 1, 80, 4)

    stub = reports(channel)
    employees = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=video, page_size=100), metadata=admin
    )
    a, b = s.employees
    assert {r.employee_id: r.summary.total_calls for r in employees.employees} == {a: 1, b: 1}
    employees = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=window(exclude_private=True), page_size=100),
        metadata=admin,
    )
    assert {r.employee_id: r.summary.total_calls for r in employees.employees} == {a: 2, b: 1}
    analysis = await stub.CallAnalysis(
        report_pb2.CallAnalysisRequest(filter=window(call_methods=[WHATSAPP])), metadata=admin
    )
    assert (analysis.top_caller.value, analysis.highest_total_duration.employee_id) == (1, b)
    hourly = await stub.HourlyAnalytics(
        report_pb2.HourlyAnalyticsRequest(filter=window(exclude_private=True)), metadata=admin
    )
    assert sum(h.calls for h in hourly.hours) == 3
    daywise = await stub.DaywiseAnalytics(
        report_pb2.DaywiseAnalyticsRequest(filter=video), metadata=admin
    )
    assert sum(d.calls for d in daywise.days) == 2
    working = await stub.WorkingHours(
        report_pb2.WorkingHoursRequest(filter=window(call_modes=[VOICE])), metadata=admin
    )
    assert sum(d.calls for d in working.days) == 6


async def test_client_reports_show_one_private_client(channel: grpc.aio.Channel) -> None:
    s = await setup(channel)
    admin = s.tenant.admin
    stub = reports(channel)
    assert await unique_clients(channel, admin, window()) == {
        "private": ("", 5),
        N1: ("Ravi", 1),
        N2: ("", 1),
        N3: ("", 1),
    }
    assert "private" not in await unique_clients(channel, admin, window(exclude_private=True))
    never = await stub.NeverAttended(
        report_pb2.NeverAttendedRequest(filter=window(), page_size=100), metadata=admin
    )
    assert [(c.number, c.name, list(c.employee_ids), c.calls) for c in never.clients] == [
        ("private", "", sorted(s.employees), 5)
    ]
    never = await stub.NeverAttended(
        report_pb2.NeverAttendedRequest(filter=window(call_methods=[OTHER_VOIP]), page_size=100),
        metadata=admin,
    )
    assert [(c.number, list(c.employee_ids), c.calls) for c in never.clients] == [
        ("private", [s.employees[1]], 1)
    ]
    picked = await stub.NotPickedByClient(
        report_pb2.NotPickedByClientRequest(filter=window(call_modes=[VIDEO]), page_size=100),
        metadata=admin,
    )
    assert [(c.number, c.calls) for c in picked.clients] == [(N3, 1)]
    picked = await stub.NotPickedByClient(
        report_pb2.NotPickedByClientRequest(filter=window(call_modes=[VOICE]), page_size=100),
        metadata=admin,
    )
    assert list(picked.clients) == []

    # Paged one client at a time, the private client comes last (its key is the highest).
    token, numbers, f = "", [], window()
    while True:
        page = await stub.UniqueClients(
            report_pb2.UniqueClientsRequest(filter=f, page_size=1, page_token=token),
            metadata=admin,
        )
        numbers += [c.number for c in page.clients]
        token = page.next_page_token
        if not token:
            break
    assert numbers[-1] == "private" and sorted(numbers[:-1]) == [N1, N2, N3]


async def test_call_history_carries_presentation_method_and_mode(
    channel: grpc.aio.Channel,
) -> None:
    s = await setup(channel)
    calls = await history(channel, s.tenant.admin, window())
    assert {c: (e.presentation, e.method, e.mode) for c, e in calls.items()} == STORED
    assert {c: (e.number, e.name) for c, e in calls.items() if c in PRIVATE_CALLS} == dict.fromkeys(
        PRIVATE_CALLS, ("private", "")
    )
    assert (calls["c1"].number, calls["c1"].name) == (N1, "Ravi")
    assert set(await history(channel, s.tenant.admin, window(exclude_private=True))) == {
        "c1",
        "c4",
        "c8",
    }
    video = await history(channel, s.tenant.admin, window(call_modes=[VIDEO]))
    assert set(video) == {"c4", "c7"}
    whatsapp_voice = window(call_methods=[WHATSAPP], call_modes=[VOICE])
    assert set(await history(channel, s.tenant.admin, whatsapp_voice)) == {"c8"}
    # GetCalls shows a call as CallHistory does.
    got = await reports(channel).GetCalls(
        report_pb2.GetCallsRequest(
            calls=[report_pb2.CallRef(device_id=calls[c].device_id, call_id=c) for c in STORED]
        ),
        metadata=s.tenant.admin,
    )
    assert {e.call_id: e for e in got.calls} == calls


async def test_a_newer_version_changes_the_channel_and_resends_are_duplicates(
    channel: grpc.aio.Channel,
) -> None:
    s = await setup(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    ack = await ingest.Upload(batch(2, A_CALLS), metadata=s.devices[0])
    assert counts(ack) == (0, 0, 6, 0)
    newer = ingest_pb2.CallRecord()
    newer.CopyFrom(A_CALLS[1])
    newer.updated_at_ms = newer.started_at_ms + 1_000
    newer.method, newer.mode = WHATSAPP, VIDEO
    ack = await ingest.Upload(batch(3, [newer]), metadata=s.devices[0])
    assert counts(ack) == (0, 1, 0, 0)
    entry = (await history(channel, s.tenant.admin, window()))["c2"]
    assert (entry.number, entry.presentation, entry.method, entry.mode) == (
        "private",
        UNKNOWN,
        WHATSAPP,
        VIDEO,
    )


async def test_private_calls_never_match_a_lead_an_excluded_or_an_erased_number(
    channel: grpc.aio.Channel,
) -> None:
    s = await setup(channel)
    admin_stub = admin_pb2_grpc.AdminServiceStub(channel)
    admin = s.tenant.admin
    a = s.employees[0]
    leads = await admin_stub.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[admin_pb2.Lead(primary_number=N1, first_name="Ravi", employee_id=a)],
            strategy=admin_pb2.ASSIGNMENT_STRATEGY_EXPLICIT,
        ),
        metadata=admin,
    )
    lead_id = leads.leads[0].lead_id
    calls = await history(channel, admin, window())
    # c5 was sent with N1, but withheld: it is the private client's, not the lead's.
    assert {c: e.lead_id for c, e in calls.items() if e.lead_id} == {"c1": lead_id}
    activity = await reports(channel).LeadActivity(
        report_pb2.LeadActivityRequest(filter=window(), page_size=10), metadata=admin
    )
    assert [(r.lead_id, r.calls) for r in activity.leads] == [(lead_id, 1)]
    activity = await reports(channel).LeadActivity(
        report_pb2.LeadActivityRequest(filter=window(call_methods=[WHATSAPP]), page_size=10),
        metadata=admin,
    )
    assert [(r.lead_id, r.calls) for r in activity.leads] == [(lead_id, 0)]

    await admin_stub.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=[N1]), metadata=admin
    )
    assert (await summary(channel, admin, window())).total_calls == 7  # c1 only
    assert (await unique_clients(channel, admin, window()))["private"] == ("", 5)
    await admin_stub.SetExcludedNumbers(admin_pb2.SetExcludedNumbersRequest(), metadata=admin)

    erased = await admin_stub.EraseNumber(admin_pb2.EraseNumberRequest(number=N1), metadata=admin)
    assert erased.erased_calls == 1
    assert set(await history(channel, admin, window())) == STORED.keys() - {"c1"}
    # A new withheld call from the erased number is stored: it holds no number to erase.
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    again = record("c9", N1, T.CALL_TYPE_MISSED, 0, 40, presentation=RESTRICTED)
    ack = await ingest.Upload(batch(2, [again]), metadata=s.devices[0])
    assert (counts(ack), ack.erased) == ((1, 0, 0, 0), 0)
    ack = await ingest.Upload(
        batch(3, [record("c10", N1, T.CALL_TYPE_MISSED, 0, 45)]), metadata=s.devices[0]
    )
    assert (counts(ack), ack.erased) == ((0, 0, 1, 0), 1)


async def test_private_clients_of_two_tenants_stay_apart(channel: grpc.aio.Channel) -> None:
    first = await setup(channel)
    other = await new_tenant(channel)
    employee = await new_employee(channel, other, "Chitra", "+917000000103")
    device = auth((await enroll(channel, other, employee)).device_token)
    hidden = [record(f"x{i}", "", T.CALL_TYPE_MISSED, 0, i) for i in range(3)]
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(batch(1, hidden), metadata=device)
    assert counts(ack) == (3, 0, 0, 0)
    assert await unique_clients(channel, other.admin, window()) == {"private": ("", 3)}
    assert (await unique_clients(channel, first.tenant.admin, window()))["private"] == ("", 5)
    assert (await summary(channel, first.tenant.admin, window())).total_calls == 8
    assert set(await history(channel, other.admin, window())) == {"x0", "x1", "x2"}


BAD_RECORDS = [
    ({"presentation": 5}, "presentation 5 is not a NumberPresentation (0-4)"),
    ({"method": 4}, "method 4 is not a CallMethod (0-3)"),
    ({"mode": 9}, "mode 9 is not a CallMode (0-2)"),
]


async def test_unknown_enum_numbers_are_rejected_per_record(channel: grpc.aio.Channel) -> None:
    s = await setup(channel)
    records = [record(f"e{i}", "", T.CALL_TYPE_MISSED, 0, 50 + i) for i in range(4)]
    for r, (fields, _) in zip(records[1:], BAD_RECORDS, strict=True):
        for name, value in fields.items():
            setattr(r, name, value)
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        batch(5, records), metadata=s.devices[0]
    )
    assert counts(ack) == (1, 0, 0, 3)
    assert [(e.index, e.reason) for e in ack.errors] == [
        (i + 1, reason) for i, (_, reason) in enumerate(BAD_RECORDS)
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"call_methods": [7]}, "filter.call_methods [7] are not CallMethod values (1-3)"),
        ({"call_methods": [0, 2]}, "filter.call_methods [0] are not CallMethod values (1-3)"),
        ({"call_modes": [3, -1]}, "filter.call_modes [-1, 3] are not CallMode values (1-2)"),
        ({"call_modes": [1] * 17}, "filter.call_modes has 17 entries; the limit is 16"),
    ],
)
async def test_bad_channel_filters_are_invalid_arguments(
    channel: grpc.aio.Channel, fields: dict[str, list[int]], message: str
) -> None:
    tenant = await new_tenant(channel)
    error = await expect_status(
        reports(channel).CallSummary(
            report_pb2.CallSummaryRequest(filter=window(**fields)), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert message in (error.details() or "")


async def test_the_migration_runs_again_safely(db: Database) -> None:
    (migration,) = [m for m in available() if m.version == 13]
    for statement in migration.statements:
        await db.command(statement)
    rows = await db.query(
        "SELECT name, type, default_expression FROM system.columns"
        " WHERE database = currentDatabase() AND table = 'calls'"
        " AND name IN ('presentation', 'method', 'mode') ORDER BY name"
    )
    assert [tuple(r) for r in rows] == [
        ("method", "UInt8", "1"),
        ("mode", "UInt8", "1"),
        ("presentation", "UInt8", "1"),
    ]


def test_the_reference_agrees_on_the_private_client() -> None:
    # The pure-Python reference (tests/integration/reference.py) judges clients by number: every
    # hidden caller as PRIVATE gives the figures the server gave above.
    calls = [
        Call("d", r.call_id, "e", PRIVATE if r.call_id in PRIVATE_CALLS else r.number, "",
             r.type, r.started_at_ms, r.duration_s, "", "", 0,
             method=STORED[r.call_id][1], mode=STORED[r.call_id][2])
        for r in A_CALLS + B_CALLS
    ]  # fmt: skip
    assert figures(reference.summary(calls, "Asia/Kolkata")) == (8, 2, 1, 4, 1, 2, 5, 1, 80, 4)
    shown = [c for c in calls if c.number != PRIVATE]
    assert figures(reference.summary(shown, "Asia/Kolkata")) == (3, 2, 1, 0, 0, 2, 0, 1, 80, 3)
    video = [c for c in calls if c.mode == VIDEO]
    assert figures(reference.summary(video, "Asia/Kolkata")) == (2, 0, 1, 1, 0, 0, 1, 1, 0, 2)
