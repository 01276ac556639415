"""Paged listings: never attended, not picked by client, unique clients, call history, leads.

Each handler pages through ``report_call.paged`` (size and token checked, the calls as of the
first page's snapshot, one row more than a page to know whether another follows) and decrypts
that page's numbers, names and notes. Pages stay consistent while ingest goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import PRIVATE_CLIENT_KEY, PRIVATE_NUMBER
from callsight.pipeline.paging import Page
from callsight.server.report_call import ReportCall, malformed, paged, text_cursor
from callsight.storage import listings
from callsight.v1 import common_pb2, report_pb2


def _client_cursor(page: Page) -> int | None:
    if page.cursor is None:
        return None
    if len(page.cursor) != 1 or not isinstance(page.cursor[0], int):
        raise malformed()
    return page.cursor[0]


def _history_cursor(page: Page) -> listings.HistoryKey | None:
    if page.cursor is None:
        return None
    match page.cursor:
        case [int(started_at_ms), str(device_id), str(call_id)]:
            return listings.HistoryKey(started_at_ms, device_id, call_id)
    raise malformed()


def _client(
    keyring: Keyring, client_key: int, number_enc: bytes, name_enc: bytes
) -> dict[str, str]:
    # A client's number and name as reports show them: the private client's are fixed.
    if client_key == PRIVATE_CLIENT_KEY:
        return {"number": PRIVATE_NUMBER, "name": ""}
    return {"number": keyring.decrypt(number_enc), "name": keyring.decrypt(name_enc)}


def _client_rows(
    call: ReportCall, rows: Sequence[listings.ClientRow]
) -> list[report_pb2.ClientRow]:
    return [
        report_pb2.ClientRow(
            **_client(call.keyring, r.client_key, r.number_enc, r.name_enc),
            employee_ids=r.employee_ids,
            calls=r.calls,
        )
        for r in rows
    ]


def history_entry(keyring: Keyring, row: listings.HistoryRow) -> report_pb2.CallHistoryEntry:
    """A call as CallHistory and GetCalls show it: decrypted, a hidden caller's number as
    "private"."""
    decrypt = keyring.decrypt
    shown = row.presentation == common_pb2.NUMBER_PRESENTATION_ALLOWED
    return report_pb2.CallHistoryEntry(
        call_id=row.call_id,
        device_id=row.device_id,
        employee_id=row.employee_id,
        number=decrypt(row.number_enc) if shown else PRIVATE_NUMBER,
        name=decrypt(row.name_enc) if shown else "",
        type=common_pb2.CallType.ValueType(row.type),
        started_at_ms=row.started_at_ms,
        duration_s=row.duration_s,
        note=decrypt(row.note_enc),
        recording_uri=decrypt(row.recording_uri_enc),
        synced_at_ms=row.synced_at_ms,
        lead_id=row.lead_id,
        presentation=common_pb2.NumberPresentation.ValueType(row.presentation),
        method=common_pb2.CallMethod.ValueType(row.method),
        mode=common_pb2.CallMode.ValueType(row.mode),
    )


async def never_attended(
    call: ReportCall, request: report_pb2.NeverAttendedRequest
) -> report_pb2.NeverAttendedResponse:
    """Clients with missed or rejected calls and no connected call, by client key."""
    served, token = await paged(
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
    served, token = await paged(
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
    served, token = await paged(
        call,
        "UniqueClients",
        request,
        listings.unique_clients,
        _client_cursor,
        lambda r: [r.client_key],
    )
    return report_pb2.UniqueClientsResponse(
        clients=[
            report_pb2.UniqueClient(
                **_client(call.keyring, r.client_key, r.number_enc, r.name_enc),
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
    served, token = await paged(
        call,
        "CallHistory",
        request,
        listings.call_history,
        _history_cursor,
        lambda r: [r.started_at_ms, r.device_id, r.call_id],
    )
    return report_pb2.CallHistoryResponse(
        calls=[history_entry(call.keyring, r) for r in served], next_page_token=token
    )


async def lead_activity(
    call: ReportCall, request: report_pb2.LeadActivityRequest
) -> report_pb2.LeadActivityResponse:
    """Per lead, the calls its assigned employee made with the lead's numbers, by lead id."""
    served, token = await paged(
        call, "LeadActivity", request, listings.lead_activity, text_cursor, lambda r: [r.lead_id]
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
