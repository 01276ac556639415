"""Paged listings: never attended, not picked by client, unique clients, call history, leads.

Each handler validates the page size, opens the page token (bound to the RPC, the tenant and the
serialized filter), runs the listing's SQL for one page plus one row (to know whether another
page follows), decrypts that page's numbers, names and notes and issues the next token. Every page
reads the calls as of the first page's snapshot, so pages stay consistent while ingest goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from callsight.pipeline.paging import Page, fingerprint, page_size
from callsight.server.filters import DAY_MS, DEFAULT_RANGE_DAYS
from callsight.storage import listings
from callsight.storage.database import Database
from callsight.storage.filters import CallFilter

from callsight.core.clock import SYSTEM_CLOCK
from callsight.core.errors import InvalidArgument
from callsight.v1 import common_pb2, report_pb2

if TYPE_CHECKING:
    from callsight.server.reports import ReportCall

Row = TypeVar("Row")
Cursor = TypeVar("Cursor")


class PagedRequest(Protocol):
    """What every paged report request carries."""

    @property
    def filter(self) -> report_pb2.ReportFilter: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


# A listing's SQL for one page: (db, filter, snapshot_ms, cursor or None, limit) -> rows.
Fetch = Callable[[Database, CallFilter, int, Cursor | None, int], Awaitable[Sequence[Row]]]


@dataclass(frozen=True)
class _Paging:
    """An opened page request, what its tokens are bound to and the filter every page reads."""

    page: Page
    bound_to: str
    filter: CallFilter


def _open(
    call: ReportCall, rpc: str, request_filter: report_pb2.ReportFilter, size: int, token: str
) -> _Paging:
    bound_to = fingerprint(
        rpc, call.tenant.tenant_id, request_filter.SerializeToString(deterministic=True)
    )
    page = call.tokens.open(token, bound_to, page_size(size), SYSTEM_CLOCK.now_ms())
    f = call.filter
    if not request_filter.to_ms:
        # An open range ends relative to "now": anchor it at the first page so no page shifts it.
        from_ms = request_filter.from_ms or page.snapshot_ms - DEFAULT_RANGE_DAYS * DAY_MS
        f = replace(f, from_ms=from_ms, to_ms=page.snapshot_ms + DAY_MS)
    return _Paging(page, bound_to, f)


async def _serve(
    call: ReportCall,
    rpc: str,
    request: PagedRequest,
    fetch: Fetch[Cursor, Row],
    cursor_of: Callable[[Page], Cursor | None],
    key_of: Callable[[Row], list[Any]],
) -> tuple[Sequence[Row], str]:
    """One page of a listing and the token of the next one (empty on the last page).

    Reads one row more than the page holds, to know whether another page follows; the next
    token resumes after the page's last row (``key_of``), from the first page's snapshot.
    """
    paging = _open(call, rpc, request.filter, request.page_size, request.page_token)
    page = paging.page
    rows = await fetch(call.db, paging.filter, page.snapshot_ms, cursor_of(page), page.size + 1)
    if len(rows) <= page.size:
        return rows, ""
    rows = rows[: page.size]
    return rows, call.tokens.issue(paging.bound_to, key_of(rows[-1]), page.snapshot_ms)


def _malformed() -> InvalidArgument:
    return InvalidArgument("page_token does not belong to this report; start without a token")


def _client_cursor(page: Page) -> int | None:
    if page.cursor is None:
        return None
    if len(page.cursor) != 1 or not isinstance(page.cursor[0], int):
        raise _malformed()
    return page.cursor[0]


def _history_cursor(page: Page) -> listings.HistoryKey | None:
    if page.cursor is None:
        return None
    match page.cursor:
        case [int(started_at_ms), str(device_id), str(call_id)]:
            return listings.HistoryKey(started_at_ms, device_id, call_id)
    raise _malformed()


def _lead_cursor(page: Page) -> str | None:
    if page.cursor is None:
        return None
    if len(page.cursor) != 1 or not isinstance(page.cursor[0], str):
        raise _malformed()
    return page.cursor[0]


def _client_rows(
    call: ReportCall, rows: Sequence[listings.ClientRow]
) -> list[report_pb2.ClientRow]:
    decrypt = call.keyring.decrypt
    return [
        report_pb2.ClientRow(
            number=decrypt(r.number_enc),
            name=decrypt(r.name_enc),
            employee_ids=r.employee_ids,
            calls=r.calls,
        )
        for r in rows
    ]


async def never_attended(
    call: ReportCall, request: report_pb2.NeverAttendedRequest
) -> report_pb2.NeverAttendedResponse:
    """Clients with missed or rejected calls and no connected call, by client key."""
    served, token = await _serve(
        call,
        "NeverAttended",
        request,
        listings.never_attended,
        _client_cursor,
        lambda r: [r.client_key],
    )
    return report_pb2.NeverAttendedResponse(
        clients=_client_rows(call, served), next_page_token=token
    )


async def not_picked_by_client(
    call: ReportCall, request: report_pb2.NotPickedByClientRequest
) -> report_pb2.NotPickedByClientResponse:
    """Clients with outgoing calls and no connected call, by client key."""
    served, token = await _serve(
        call,
        "NotPickedByClient",
        request,
        listings.not_picked_by_client,
        _client_cursor,
        lambda r: [r.client_key],
    )
    return report_pb2.NotPickedByClientResponse(
        clients=_client_rows(call, served), next_page_token=token
    )


async def unique_clients(
    call: ReportCall, request: report_pb2.UniqueClientsRequest
) -> report_pb2.UniqueClientsResponse:
    """Distinct client numbers with their totals, by client key."""
    served, token = await _serve(
        call,
        "UniqueClients",
        request,
        listings.unique_clients,
        _client_cursor,
        lambda r: [r.client_key],
    )
    decrypt = call.keyring.decrypt
    return report_pb2.UniqueClientsResponse(
        clients=[
            report_pb2.UniqueClient(
                number=decrypt(r.number_enc),
                name=decrypt(r.name_enc),
                total_calls=r.total_calls,
                incoming_calls=r.incoming_calls,
                outgoing_calls=r.outgoing_calls,
                total_duration_s=r.total_duration_s,
                last_call_at_ms=r.last_call_at_ms,
                last_call_type=common_pb2.CallType.ValueType(r.last_call_type),
            )
            for r in served
        ],
        next_page_token=token,
    )


async def call_history(
    call: ReportCall, request: report_pb2.CallHistoryRequest
) -> report_pb2.CallHistoryResponse:
    """The calls themselves, newest first, stable while new calls arrive."""
    served, token = await _serve(
        call,
        "CallHistory",
        request,
        listings.call_history,
        _history_cursor,
        lambda r: [r.started_at_ms, r.device_id, r.call_id],
    )
    decrypt = call.keyring.decrypt
    return report_pb2.CallHistoryResponse(
        calls=[
            report_pb2.CallHistoryEntry(
                call_id=r.call_id,
                device_id=r.device_id,
                employee_id=r.employee_id,
                number=decrypt(r.number_enc),
                name=decrypt(r.name_enc),
                type=common_pb2.CallType.ValueType(r.type),
                started_at_ms=r.started_at_ms,
                duration_s=r.duration_s,
                note=decrypt(r.note_enc),
                recording_uri=r.recording_uri,
                synced_at_ms=r.synced_at_ms,
                lead_id=r.lead_id,
            )
            for r in served
        ],
        next_page_token=token,
    )


async def lead_activity(
    call: ReportCall, request: report_pb2.LeadActivityRequest
) -> report_pb2.LeadActivityResponse:
    """Per lead, the calls its assigned employee made with the lead's numbers, by lead id."""
    served, token = await _serve(
        call, "LeadActivity", request, listings.lead_activity, _lead_cursor, lambda r: [r.lead_id]
    )
    return report_pb2.LeadActivityResponse(
        leads=[
            report_pb2.LeadActivityRow(
                lead_id=r.lead_id,
                employee_id=r.employee_id,
                first_call_at_ms=r.first_call_at_ms,
                time_to_first_call_s=r.time_to_first_call_s,
                calls=r.calls,
                connected_calls=r.connected_calls,
                last_call_at_ms=r.last_call_at_ms,
            )
            for r in served
        ],
        next_page_token=token,
    )
