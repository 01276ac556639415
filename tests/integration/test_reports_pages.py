"""Paged listings end to end: NeverAttended, NotPickedByClient, UniqueClients, CallHistory.

A realistic data set goes in through the real Stream; every row of every page is compared, field
by field, with the pure-Python reference in ``reference_pages.py``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from callsight.storage.database import Database
from callsight.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, report_pb2, report_pb2_grpc
from tests.integration import dataset
from tests.integration import reference_pages as ref
from tests.integration.dataset import DAY_MS, Call, Truth
from tests.integration.helpers import Metadata, auth, enroll, expect_status, new_tenant

CODE = grpc.StatusCode
T = common_pb2


@dataclass
class Built:
    """A data set and the wall-clock window in which it was received."""

    truth: Truth
    received_from_ms: int
    received_to_ms: int


@pytest.fixture(scope="module")
async def built(channel: grpc.aio.Channel) -> Built:
    before = int(time.time() * 1000)
    truth = await dataset.build(channel)
    return Built(truth, before, int(time.time() * 1000))


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


def filters(truth: Truth, **kw: Any) -> tuple[report_pb2.ReportFilter, ref.Filter]:
    """The same filter for the server and for the reference; the range defaults to the data's."""
    from_ms = kw.get("from_ms", truth.start_ms)
    to_ms = kw.get("to_ms", truth.end_ms)
    request = report_pb2.ReportFilter(
        from_ms=from_ms,
        to_ms=to_ms,
        employee_ids=kw.get("employee_ids", ()),
        employee_tags=kw.get("employee_tags", ()),
        call_types=kw.get("call_types", ()),
        min_duration_s=kw.get("min_duration_s", 0),
        include_excluded_numbers=kw.get("include_excluded", False),
    )
    if "max_duration_s" in kw:
        request.max_duration_s = kw["max_duration_s"]
    employees: set[str] | None = None
    if "employee_ids" in kw:
        employees = set(kw["employee_ids"])
    if "employee_tags" in kw:
        tagged = {
            e.employee_id
            for e in truth.employees.values()
            if set(e.tags).intersection(kw["employee_tags"])
        }
        employees = tagged if employees is None else employees & tagged
    reference = ref.Filter(
        from_ms=from_ms,
        to_ms=to_ms,
        employee_ids=None if employees is None else frozenset(employees),
        call_types=frozenset(kw.get("call_types", ())),
        min_duration_s=kw.get("min_duration_s", 0),
        max_duration_s=kw.get("max_duration_s"),
        include_excluded=kw.get("include_excluded", False),
    )
    return request, reference


# Listing name -> (request class, repeated field of the response)
LISTINGS: dict[str, tuple[Any, str]] = {
    "NeverAttended": (report_pb2.NeverAttendedRequest, "clients"),
    "NotPickedByClient": (report_pb2.NotPickedByClientRequest, "clients"),
    "UniqueClients": (report_pb2.UniqueClientsRequest, "clients"),
    "CallHistory": (report_pb2.CallHistoryRequest, "calls"),
    "LeadActivity": (report_pb2.LeadActivityRequest, "leads"),
}


async def walk(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    listing: str,
    request_filter: report_pb2.ReportFilter,
    page_size: int,
    between_pages: Callable[[], Awaitable[None]] | None = None,
) -> list[Any]:
    """Every row of a listing, page by page; each page but the last is full."""
    request_cls, field = LISTINGS[listing]
    rpc = getattr(reports(channel), listing)
    rows: list[Any] = []
    token = ""
    for pages in range(1, 10_000):
        response = await rpc(
            request_cls(filter=request_filter, page_size=page_size, page_token=token),
            metadata=metadata,
        )
        page = list(getattr(response, field))
        rows += page
        token = response.next_page_token
        if not token:
            assert len(page) <= page_size
            return rows
        assert len(page) == page_size, (listing, pages, len(page))
        if pages == 1 and between_pages is not None:
            await between_pages()
    raise AssertionError("paging did not end")


def client_row(m: report_pb2.ClientRow) -> ref.ClientRow:
    return (m.number, m.name, tuple(m.employee_ids), m.calls)


def unique_row(m: report_pb2.UniqueClient) -> ref.UniqueClient:
    return (
        m.number,
        m.name,
        m.total_calls,
        m.incoming_calls,
        m.outgoing_calls,
        m.total_duration_s,
        m.last_call_at_ms,
        m.last_call_type,
    )


def history_row(m: report_pb2.CallHistoryEntry) -> ref.HistoryEntry:
    return (
        m.call_id,
        m.device_id,
        m.employee_id,
        m.number,
        m.name,
        m.type,
        m.started_at_ms,
        m.duration_s,
        m.note,
        m.recording_uri,
        m.lead_id,
    )


def lead_row(m: report_pb2.LeadActivityRow) -> ref.LeadActivity:
    return (
        m.lead_id,
        m.employee_id,
        m.first_call_at_ms,
        m.time_to_first_call_s,
        m.calls,
        m.connected_calls,
        m.last_call_at_ms,
    )


def by_number(rows: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """Client rows keyed by number; each number must appear once."""
    numbers = [r[0] for r in rows]
    assert len(numbers) == len(set(numbers)), "a client appears twice"
    return {r[0]: r for r in rows}


async def check_clients(
    channel: grpc.aio.Channel,
    truth: Truth,
    request_filter: report_pb2.ReportFilter,
    calls: list[Call],
    page_size: int,
) -> None:
    """The three client listings equal the reference; the order is the one-page order."""
    expected: dict[str, tuple[dict[str, Any], Callable[[Any], tuple[Any, ...]]]] = {
        "NeverAttended": (ref.never_attended(calls), client_row),
        "NotPickedByClient": (ref.not_picked_by_client(calls), client_row),
        "UniqueClients": (ref.unique_clients(calls), unique_row),
    }
    for listing, (reference, convert) in expected.items():
        rows = [
            convert(m)
            for m in await walk(channel, truth.tenant.admin, listing, request_filter, page_size)
        ]
        assert by_number(rows) == reference, listing
        one_page = await walk(channel, truth.tenant.admin, listing, request_filter, 1000)
        assert [convert(m) for m in one_page] == rows, f"{listing}: order depends on paging"


async def stored_synced_at(db: Database, tenant_id: str) -> dict[tuple[str, str], int]:
    rows = await db.query(
        "SELECT device_id, call_id, toUnixTimestamp64Milli(synced_at) FROM calls FINAL"
        " WHERE tenant_id = {t:String}",
        {"t": tenant_id},
    )
    return {(d, c): int(s) for d, c, s in rows}


async def test_full_walks_with_page_size_7_match_the_reference(
    channel: grpc.aio.Channel, built: Built, db: Database
) -> None:
    truth = built.truth
    request_filter, reference_filter = filters(truth)
    calls = ref.select(truth, reference_filter)
    assert len(calls) > 1000
    await check_clients(channel, truth, request_filter, calls, 7)

    history = await walk(channel, truth.tenant.admin, "CallHistory", request_filter, 7)
    assert [history_row(m) for m in history] == ref.call_history(calls)
    # Receive time: stored as sent, within the window in which the data set was streamed.
    synced = await stored_synced_at(db, truth.tenant.tenant_id)
    for m in history:
        assert m.synced_at_ms == synced[(m.device_id, m.call_id)]
        assert built.received_from_ms <= m.synced_at_ms <= built.received_to_ms


FILTERS: list[dict[str, Any]] = [
    {"include_excluded": True},
    {"call_types": [T.CALL_TYPE_OUTGOING, T.CALL_TYPE_MISSED]},
    {"call_types": [T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED, T.CALL_TYPE_INCOMING]},
    {"min_duration_s": 60, "max_duration_s": 600},
    {"max_duration_s": 0},
    {"employee_tags": ["north"]},
    {"days": (1, 3)},
]


@pytest.mark.parametrize("kw", FILTERS, ids=lambda kw: ",".join(kw))
async def test_filters_narrow_every_listing(
    channel: grpc.aio.Channel, built: Built, kw: dict[str, Any]
) -> None:
    truth = built.truth
    kw = dict(kw)
    if "days" in kw:
        first, last = kw.pop("days")
        kw.update(from_ms=truth.start_ms + first * DAY_MS, to_ms=truth.start_ms + last * DAY_MS)
    request_filter, reference_filter = filters(truth, **kw)
    calls = ref.select(truth, reference_filter)
    assert calls, "the filter should keep some calls"
    await check_clients(channel, truth, request_filter, calls, 50)
    history = await walk(channel, truth.tenant.admin, "CallHistory", request_filter, 500)
    assert [history_row(m) for m in history] == ref.call_history(calls)


async def test_filter_by_employee(channel: grpc.aio.Channel, built: Built) -> None:
    truth = built.truth
    first, second = sorted(truth.employees)[:2]
    for employee_ids in ([first], [first, second]):
        request_filter, reference_filter = filters(truth, employee_ids=employee_ids)
        calls = ref.select(truth, reference_filter)
        assert {c.employee_id for c in calls} == set(employee_ids)
        await check_clients(channel, truth, request_filter, calls, 20)
        history = await walk(channel, truth.tenant.admin, "CallHistory", request_filter, 200)
        assert [history_row(m) for m in history] == ref.call_history(calls)
        # Never attended is judged within the filter: a client the other employees reached
        # counts here when this employee never got through.
        never = await walk(channel, truth.tenant.admin, "NeverAttended", request_filter, 1000)
        assert {m.number for m in never} == set(ref.never_attended(calls))


async def test_an_open_range_means_the_last_30_days_on_every_page(
    channel: grpc.aio.Channel, built: Built
) -> None:
    truth = built.truth
    _, reference_filter = filters(truth, from_ms=0, to_ms=2**62)
    calls = ref.select(truth, reference_filter)
    history = await walk(channel, truth.tenant.admin, "CallHistory", report_pb2.ReportFilter(), 300)
    assert [history_row(m) for m in history] == ref.call_history(calls)


async def test_excluded_numbers_are_hidden_unless_asked(
    channel: grpc.aio.Channel, built: Built
) -> None:
    truth = built.truth
    assert truth.excluded
    for include in (False, True):
        request_filter, _ = filters(truth, include_excluded=include)
        for listing in ("NeverAttended", "NotPickedByClient", "UniqueClients", "CallHistory"):
            rows = await walk(channel, truth.tenant.admin, listing, request_filter, 1000)
            shown = {m.number for m in rows} & truth.excluded
            if not include:
                assert not shown, listing
            elif listing in ("UniqueClients", "CallHistory"):
                # Every excluded number has calls in the data set.
                assert shown == truth.excluded, listing


async def test_page_tokens_are_bound_and_checked(channel: grpc.aio.Channel, built: Built) -> None:
    truth = built.truth
    stub = reports(channel)
    admin = truth.tenant.admin
    request_filter, _ = filters(truth)
    first = await stub.CallHistory(
        report_pb2.CallHistoryRequest(filter=request_filter, page_size=7), metadata=admin
    )
    token = first.next_page_token
    assert token and len(first.calls) == 7

    other_filter, _ = filters(truth, call_types=[T.CALL_TYPE_OUTGOING])
    error = await expect_status(
        stub.CallHistory(
            report_pb2.CallHistoryRequest(filter=other_filter, page_size=7, page_token=token),
            metadata=admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "filter" in (error.details() or "")
    # Another report, another tenant: the token is bound to both.
    await expect_status(
        stub.UniqueClients(
            report_pb2.UniqueClientsRequest(filter=request_filter, page_token=token),
            metadata=admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    stranger = await new_tenant(channel)
    await expect_status(
        stub.CallHistory(
            report_pb2.CallHistoryRequest(filter=request_filter, page_token=token),
            metadata=stranger.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    for bad in (tampered, token[:-4], "not a token!", token + "AAAA"):
        await expect_status(
            stub.CallHistory(
                report_pb2.CallHistoryRequest(filter=request_filter, page_token=bad),
                metadata=admin,
            ),
            CODE.INVALID_ARGUMENT,
        )
    error = await expect_status(
        stub.CallHistory(
            report_pb2.CallHistoryRequest(filter=request_filter, page_size=1001), metadata=admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "1000" in (error.details() or "")
    for listing, (request_cls, _) in LISTINGS.items():
        await expect_status(
            getattr(stub, listing)(
                request_cls(filter=request_filter, page_size=1001), metadata=admin
            ),
            CODE.INVALID_ARGUMENT,
        )
    # The same token with the same filter still works, and page size may change between pages.
    second = await stub.CallHistory(
        report_pb2.CallHistoryRequest(filter=request_filter, page_size=3, page_token=token),
        metadata=admin,
    )
    assert len(second.calls) == 3
    assert second.calls[0].started_at_ms <= first.calls[-1].started_at_ms
    default = await stub.CallHistory(
        report_pb2.CallHistoryRequest(filter=request_filter), metadata=admin
    )
    assert len(default.calls) == 100


async def test_empty_tenant_has_empty_listings(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    for listing in LISTINGS:
        assert await walk(channel, tenant.admin, listing, report_pb2.ReportFilter(), 10) == []


async def test_call_history_pages_hold_still_while_calls_arrive(
    channel: grpc.aio.Channel,
) -> None:
    truth = await dataset.build(channel, seed=11, employees=2, calls_per_device=60, days=3)
    employee_id = sorted(truth.employees)[0]
    device = await enroll(channel, truth.tenant, employee_id, region="IN")
    request_filter, reference_filter = filters(truth, to_ms=truth.end_ms + DAY_MS)
    before = ref.select(truth, reference_filter)
    span = truth.end_ms - truth.start_ms
    newest = max(c.started_at_ms for c in before)
    # New calls everywhere in the listing: above page 1, inside it, and on every later page.
    starts = [newest + 1, newest - 1, *(truth.start_ms + k * span // 15 + 7 for k in range(15))]
    late = [
        Call(
            device_id=device.device_id,
            call_id=f"late-{k}",
            employee_id=employee_id,
            number=f"+91990000{k:04d}",
            name="Late",
            type=T.CALL_TYPE_INCOMING,
            started_at_ms=started,
            duration_s=30,
            note="",
            recording_uri="",
            version=started,
        )
        for k, started in enumerate(starts)
    ]

    async def ingest_late_calls() -> None:
        ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
            ingest_pb2.UploadRequest(
                seq=1,
                batch_id="late",
                calls=ingest_pb2.CallLogBatch(
                    records=[
                        ingest_pb2.CallRecord(
                            call_id=c.call_id,
                            number=c.number,
                            name=c.name,
                            type=c.type,  # type: ignore[arg-type]
                            started_at_ms=c.started_at_ms,
                            duration_s=c.duration_s,
                        )
                        for c in late
                    ]
                ),
            ),
            metadata=auth(device.device_token),
        )
        assert ack.accepted == len(late), ack

    rows = await walk(
        channel, truth.tenant.admin, "CallHistory", request_filter, 7, ingest_late_calls
    )
    assert [history_row(m) for m in rows] == ref.call_history(before)
    # A new walk sees them all; so do the client listings, which start from a new snapshot too.
    after = ref.select(truth, reference_filter, [*truth.calls, *late])
    rows = await walk(channel, truth.tenant.admin, "CallHistory", request_filter, 7)
    assert [history_row(m) for m in rows] == ref.call_history(after)
    await check_clients(channel, truth, request_filter, after, 7)
