"""SQL of the paged listings: client rows, call history and lead activity.

Every query starts from ``filtered_calls`` (the newest version of each call in the filter, as of
the first page's ``snapshot_ms``) and aggregates inside ClickHouse; Python only decrypts the rows
of one page. Paging is keyset paging, never OFFSET: each query takes the sort key of the last row
served and returns the next ``limit`` rows after it. Calls hold only the keys of their number and
name; the ciphertexts of a page's rows are then looked up in ``parties`` by client key (a read of
the primary index, see ``storage.parties``).

* Client listings group by ``client_key`` (the first 8 bytes of the number's blind index) and are
  ordered by it: a key that is stable and reveals nothing about the number. A page is found in
  two steps within one query: the keys of the page from the cheap columns (key, type, duration)
  of a window of client keys, then the number, name and employees of those keys only.
  ``argMax`` over (started_at, device_id, call_id) and the arrays of employees cost far more per
  row than the counts, so they only ever see the page's calls (loadtest/bench_reports.py,
  1.6M calls in 30 days: NeverAttended's first page went from ~2.3 s to ~0.35 s). The name shown
  is that of the newest call with a name: its ``name_key``.
* Call history is ordered by (started_at, device_id, call_id) descending, the table's own key.
  A page is read from a time window that ends at the cursor, widened only when it holds too few
  calls, so a page reads about a page's worth of the primary index whatever the range or depth.
* Lead activity is ordered by lead_id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from callsight.storage import parties
from callsight.storage.database import Database
from callsight.storage.filters import (
    INCOMING,
    OUTGOING,
    UNANSWERED,
    CallFilter,
    filtered_calls,
)
from callsight.storage.sql import Sql, compose, joined
from callsight.storage.tables import DEFAULT_TABLES, Tables

_OUTGOING = f"type = {OUTGOING}"
# "Newest" call of a group: ties on started_at broken the way CallHistory orders calls.
_NEWEST = "(started_at, device_id, call_id)"
# Widths of the client-key windows a client listing page is read from (1/64, 1/8 of the keys).
_KEY_WINDOWS = (2**58, 2**61)
Row = TypeVar("Row")
# A row as read, by column name; personal fields are added from ``parties`` once a page is cut.
Raw = dict[str, Any]
_CLIENT_COLUMNS = (
    "client_key, name_key, employee_id, type, duration_s, started_at, device_id, call_id"
)


@dataclass(frozen=True)
class ClientRow:
    """A client of NeverAttended or NotPickedByClient, number and name still encrypted."""

    client_key: int
    number_enc: bytes
    name_enc: bytes
    employee_ids: tuple[str, ...]
    calls: int


@dataclass(frozen=True)
class UniqueClientRow:
    """A distinct client number with its totals, number and name still encrypted."""

    client_key: int
    number_enc: bytes
    name_enc: bytes
    total_calls: int
    incoming_calls: int
    outgoing_calls: int
    total_duration_s: int
    last_call_at_ms: int
    last_call_type: int


@dataclass(frozen=True)
class HistoryKey:
    """Where a call sits in CallHistory's order; the keyset cursor."""

    started_at_ms: int
    device_id: str
    call_id: str


@dataclass(frozen=True)
class HistoryRow:
    """One call at its newest version, personal fields still encrypted."""

    call_id: str
    device_id: str
    employee_id: str
    number_enc: bytes
    name_enc: bytes
    type: int
    started_at_ms: int
    duration_s: int
    note_enc: bytes
    recording_uri_enc: bytes
    synced_at_ms: int
    lead_id: str
    # NumberPresentation, CallMethod and CallMode numbers, never 0 (UNSPECIFIED).
    presentation: int
    method: int
    mode: int

    @property
    def key(self) -> HistoryKey:
        """This row's position in the listing."""
        return HistoryKey(self.started_at_ms, self.device_id, self.call_id)


@dataclass(frozen=True)
class LeadActivityRow:
    """Calls in the filter by a lead's assigned employee with any of the lead's numbers."""

    lead_id: str
    employee_id: str
    first_call_at_ms: int
    time_to_first_call_s: int
    calls: int
    connected_calls: int
    last_call_at_ms: int


def lead_numbers(tenant_id: str, tables: Tables = DEFAULT_TABLES) -> Sql:
    """Each number a tenant's leads have (primary, and secondary when set), as a client key,
    with the smallest lead per number."""
    return Sql(
        f"""
SELECT reinterpretAsUInt64(substring(bidx, 1, 8)) AS client_key, min(lead_id) AS lead_id
FROM (
    SELECT lead_id, arrayJoin([primary_bidx, secondary_bidx]) AS bidx
    FROM {tables.leads} FINAL
    WHERE tenant_id = {{tenant:String}}
)
WHERE bidx != toFixedString('', 32)
GROUP BY client_key
""",
        {"tenant": tenant_id},
    )


def _page_keys(
    f: CallFilter,
    snapshot_ms: int,
    having: str,
    after: int | None,
    below: int | None,
    limit: int,
    tables: Tables,
) -> Sql:
    """The client keys of one page (after ``after``, below ``below``, at most ``limit``), from
    the cheap columns."""
    conditions = []
    if after is not None:
        conditions.append(Sql("client_key > {after:UInt64}", {"after": after}))
    if below is not None:
        conditions.append(Sql("client_key < {below:UInt64}", {"below": below}))
    where = " WHERE " + joined(" AND ", conditions) if conditions else Sql("")
    return compose(
        "SELECT client_key FROM ($calls)$where GROUP BY client_key $having"
        " ORDER BY client_key LIMIT {limit:UInt32}",
        calls=filtered_calls(f, "client_key, type, duration_s", snapshot_ms, tables=tables),
        where=where,
        having=having,
    ).bind(limit=limit)


async def _windowed(
    fetch: Callable[[int | None], Awaitable[list[Row]]], after: int | None, limit: int
) -> list[Row]:
    """A page of a client listing, read from a window of client keys after the cursor.

    Client keys are HMAC bytes, spread evenly, and all of a client's calls share its key: the
    clients of a window are judged in full, so if a window holds a page's worth, those are the
    page, and only the calls of its keys are aggregated (~1/64 of them). A window that holds
    fewer is widened eightfold, then to the end of the key space.
    """
    start = 0 if after is None else after + 1
    for width in _KEY_WINDOWS:
        below = start + width
        if below >= 2**64:
            break
        rows = await fetch(below)
        if len(rows) >= limit:
            return rows
    return await fetch(None)


def _missing_calls_sql(
    f: CallFilter,
    snapshot_ms: int,
    counted: str,
    after: int | None,
    below: int | None,
    limit: int,
    tables: Tables,
) -> Sql:
    """Clients with at least one ``counted`` call and no connected call, after ``after``."""
    return compose(
        f"""
SELECT client_key,
       argMaxIf(name_key, {_NEWEST}, name_key != 0) AS name_key,
       arraySort(groupUniqArrayIf(employee_id, {counted})) AS employee_ids,
       countIf({counted}) AS calls
FROM ($calls)
WHERE client_key IN ($keys)
GROUP BY client_key
ORDER BY client_key
""",
        calls=filtered_calls(f, _CLIENT_COLUMNS, snapshot_ms, tables=tables),
        keys=_page_keys(
            f,
            snapshot_ms,
            f"HAVING countIf({counted}) > 0 AND countIf(duration_s > 0) = 0",
            after,
            below,
            limit,
            tables,
        ),
    )


async def _with_parties(
    db: Database, f: CallFilter, rows: list[Raw], tables: Tables
) -> list[tuple[Raw, parties.Party]]:
    """The rows of a page (each with a ``client_key``), each with its party."""
    found = await parties.lookup(
        db, f.tenant_id, (int(r["client_key"]) for r in rows), tables=tables
    )
    return [(r, found.get(int(r["client_key"]), parties.NO_PARTY)) for r in rows]


async def _client_rows(
    db: Database,
    f: CallFilter,
    fetch: Callable[[int | None], Awaitable[list[Raw]]],
    after: int | None,
    limit: int,
    tables: Tables,
) -> list[ClientRow]:
    """A page of NeverAttended or NotPickedByClient, numbers and names from its parties."""
    rows = await _windowed(fetch, after, limit)
    return [
        ClientRow(
            client_key=int(r["client_key"]),
            number_enc=party.number_enc,
            name_enc=party.name_enc(int(r["name_key"])),
            employee_ids=tuple(r["employee_ids"]),
            calls=int(r["calls"]),
        )
        for r, party in await _with_parties(db, f, rows, tables)
    ]


async def never_attended(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: int | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[ClientRow]:
    """Clients with a missed, rejected or blocked call and no connected call (either way).

    ``calls`` and ``employee_ids`` are those of the missed, rejected and blocked calls.
    """

    async def fetch(below: int | None) -> list[Raw]:
        return await db.named_rows(
            _missing_calls_sql(f, snapshot_ms, UNANSWERED, after, below, limit, tables)
        )

    return await _client_rows(db, f, fetch, after, limit, tables)


async def not_picked_by_client(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: int | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[ClientRow]:
    """Clients with an outgoing call and no connected call; ``calls`` are the outgoing ones."""

    async def fetch(below: int | None) -> list[Raw]:
        return await db.named_rows(
            _missing_calls_sql(f, snapshot_ms, _OUTGOING, after, below, limit, tables)
        )

    return await _client_rows(db, f, fetch, after, limit, tables)


async def unique_clients(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: int | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[UniqueClientRow]:
    """Distinct client numbers with their totals, ordered by client key."""

    async def fetch(below: int | None) -> list[Raw]:
        return await db.named_rows(_unique_clients_sql(f, snapshot_ms, after, below, limit, tables))

    rows = await _windowed(fetch, after, limit)
    return [
        UniqueClientRow(
            client_key=int(r["client_key"]),
            number_enc=party.number_enc,
            name_enc=party.name_enc(int(r["name_key"])),
            total_calls=int(r["total_calls"]),
            incoming_calls=int(r["incoming_calls"]),
            outgoing_calls=int(r["outgoing_calls"]),
            total_duration_s=int(r["total_duration_s"]),
            last_call_at_ms=int(r["last_call_at_ms"]),
            last_call_type=int(r["last_call_type"]),
        )
        for r, party in await _with_parties(db, f, rows, tables)
    ]


def _unique_clients_sql(
    f: CallFilter,
    snapshot_ms: int,
    after: int | None,
    below: int | None,
    limit: int,
    tables: Tables,
) -> Sql:
    return compose(
        f"""
SELECT client_key,
       argMaxIf(name_key, {_NEWEST}, name_key != 0) AS name_key,
       count() AS total_calls,
       countIf(type = {INCOMING}) AS incoming_calls,
       countIf(type = {OUTGOING}) AS outgoing_calls,
       sum(duration_s) AS total_duration_s,
       toUnixTimestamp64Milli(max(started_at)) AS last_call_at_ms,
       argMax(type, {_NEWEST}) AS last_call_type
FROM ($calls)
WHERE client_key IN ($keys)
GROUP BY client_key
ORDER BY client_key
""",
        calls=filtered_calls(f, _CLIENT_COLUMNS, snapshot_ms, tables=tables),
        keys=_page_keys(f, snapshot_ms, "", after, below, limit, tables),
    )


# Start-time windows a CallHistory page is read from, newest first: each ends where the previous
# one began, and the last one reaches back to the start of the filter's range.
_HISTORY_WINDOWS_MS = (86_400_000, 7 * 86_400_000, 56 * 86_400_000)
# The columns of ``calls`` a history row is made of (``HISTORY_SELECT`` reads them as ``c``).
HISTORY_COLUMNS = (
    "call_id, device_id, employee_id, client_key, name_key, type, started_at, duration_s,"
    " note_enc, recording_uri_enc, synced_at, presentation, method, mode"
)
# A history row of calls ``c`` (``HISTORY_COLUMNS``) left-joined with ``lead_numbers`` as ``l``;
# ``history_rows`` turns what it reads into ``HistoryRow``.
HISTORY_SELECT = """
c.call_id AS call_id, c.device_id AS device_id, c.employee_id AS employee_id,
c.client_key AS client_key, c.name_key AS name_key, c.type AS type,
toUnixTimestamp64Milli(c.started_at) AS started_at_ms, c.duration_s AS duration_s,
c.note_enc AS note_enc, c.recording_uri_enc AS recording_uri_enc,
toUnixTimestamp64Milli(c.synced_at) AS synced_at_ms, l.lead_id AS lead_id,
c.presentation AS presentation, c.method AS method, c.mode AS mode
"""
# The columns of HISTORY_SELECT that hold bytes.
HISTORY_BINARY = ["note_enc", "recording_uri_enc"]


async def history_rows(
    db: Database, tenant_id: str, rows: list[Raw], *, tables: Tables = DEFAULT_TABLES
) -> list[HistoryRow]:
    """Rows read with ``HISTORY_SELECT`` as history rows, numbers and names from their parties.

    The one conversion of a stored call for every reader of calls (CallHistory, GetCalls).
    """
    found = await parties.lookup(db, tenant_id, (int(r["client_key"]) for r in rows), tables=tables)
    converted = []
    for r in rows:
        party = found.get(int(r["client_key"]), parties.NO_PARTY)
        converted.append(
            HistoryRow(
                call_id=str(r["call_id"]),
                device_id=str(r["device_id"]),
                employee_id=str(r["employee_id"]),
                number_enc=party.number_enc,
                name_enc=party.name_enc(int(r["name_key"])),
                type=int(r["type"]),
                started_at_ms=int(r["started_at_ms"]),
                duration_s=int(r["duration_s"]),
                note_enc=bytes(r["note_enc"]),
                recording_uri_enc=bytes(r["recording_uri_enc"]),
                synced_at_ms=int(r["synced_at_ms"]),
                lead_id=str(r["lead_id"]),
                presentation=int(r["presentation"]),
                method=int(r["method"]),
                mode=int(r["mode"]),
            )
        )
    return converted


async def call_history(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: HistoryKey | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[HistoryRow]:
    """Calls newest first, after ``after``, each with the lead its number belongs to (if any).

    The page is read window by window backwards in start time from the cursor (or the end of
    the range): the windows are disjoint and in the listing's order, so the page is the first
    ``limit`` rows of their concatenation, and a window is read only while rows are missing.
    """

    rows = await _history_rows(db, f, snapshot_ms, after, limit, tables)
    return await history_rows(db, f.tenant_id, rows, tables=tables)


async def _history_rows(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: HistoryKey | None,
    limit: int,
    tables: Tables,
) -> list[Raw]:
    async def window(started: tuple[int | None, int | None], limit: int) -> list[Raw]:
        return await _history_window(db, f, snapshot_ms, after, started, limit, tables)

    # A call after the cursor started at or before the cursor's millisecond.
    upper = None if after is None else after.started_at_ms + 1
    if f.sync_time:
        # The range bounds the receive time, not the start: one read, bounded by the cursor only.
        return await window((None, upper), limit)
    upper = f.to_ms if upper is None else min(upper, f.to_ms)
    rows: list[Raw] = []
    for span in _HISTORY_WINDOWS_MS:
        lower = max(f.from_ms, upper - span)
        rows += await window((lower, upper), limit - len(rows))
        if len(rows) >= limit or lower == f.from_ms:
            return rows
        upper = lower
    rows += await window((None, upper), limit - len(rows))
    return rows


async def _history_window(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: HistoryKey | None,
    started: tuple[int | None, int | None],
    limit: int,
    tables: Tables,
) -> list[Raw]:
    """The first ``limit`` calls after ``after`` that started within ``started``."""
    where = Sql("")
    if after is not None:
        where = Sql(
            " WHERE (started_at, device_id, call_id) < (fromUnixTimestamp64Milli("
            "{after_ms:Int64}, 'UTC'), {after_device:String}, {after_call:String})",
            {
                "after_ms": after.started_at_ms,
                "after_device": after.device_id,
                "after_call": after.call_id,
            },
        )
    # The page is cut first, so only its rows are joined with the leads.
    query = compose(
        f"""
SELECT {HISTORY_SELECT}
FROM (
    SELECT * FROM ($calls)$where
    ORDER BY started_at DESC, device_id DESC, call_id DESC
    LIMIT {{limit:UInt32}}
) AS c
LEFT JOIN ($leads) AS l ON l.client_key = c.client_key
ORDER BY c.started_at DESC, c.device_id DESC, c.call_id DESC
""",
        calls=filtered_calls(f, HISTORY_COLUMNS, snapshot_ms, started, tables=tables),
        where=where,
        leads=lead_numbers(f.tenant_id, tables),
    ).bind(limit=limit)
    return await db.named_rows(query, binary=HISTORY_BINARY)


async def lead_activity(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: str | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[LeadActivityRow]:
    """Per lead (by lead_id), the filter's calls by its assigned employee with its numbers.

    Every lead of the tenant has a row, zeros when it has no such call; a filter on employees
    also narrows the leads to those assigned to them. The first call is the first one at or
    after the lead's creation (calls before it count in ``calls`` but are no response to the
    lead); ``time_to_first_call_s`` is its start minus the creation, in whole seconds.
    """
    leads = [Sql("tenant_id = {tenant:String}", {"tenant": f.tenant_id})]
    if f.employee_ids is not None:
        leads.append(
            Sql(
                "employee_id IN {employee_ids:Array(String)}",
                {"employee_ids": list(f.employee_ids)},
            )
        )
    if after is not None:
        leads.append(Sql("lead_id > {after:String}", {"after": after}))
    query = compose(
        f"""
WITH page AS (
    SELECT lead_id, employee_id, toUnixTimestamp64Milli(created_at) AS created_ms,
           primary_bidx, secondary_bidx
    FROM {tables.leads} FINAL
    WHERE $leads
    ORDER BY lead_id
    LIMIT {{limit:UInt32}}
)
SELECT p.lead_id AS lead_id, p.employee_id AS employee_id,
       if(a.answered > 0, a.first_ms, 0) AS first_call_at_ms,
       if(a.answered > 0, intDiv(a.first_ms - p.created_ms, 1000), 0) AS time_to_first_call_s,
       a.calls AS calls, a.connected AS connected_calls, a.last_ms AS last_call_at_ms
FROM page AS p
LEFT JOIN (
    SELECT n.lead_id AS lead_id,
           countIf(toUnixTimestamp64Milli(c.started_at) >= n.created_ms) AS answered,
           toUnixTimestamp64Milli(
               minIf(c.started_at, toUnixTimestamp64Milli(c.started_at) >= n.created_ms)
           ) AS first_ms,
           count() AS calls,
           countIf(c.duration_s > 0) AS connected,
           toUnixTimestamp64Milli(max(c.started_at)) AS last_ms
    FROM ($calls) AS c
    INNER JOIN (
        -- arrayDistinct: a lead whose two numbers are equal counts each call once.
        SELECT lead_id, employee_id, created_ms,
               arrayJoin(arrayDistinct([primary_bidx, secondary_bidx])) AS bidx,
               reinterpretAsUInt64(substring(bidx, 1, 8)) AS client_key
        FROM page
        WHERE bidx != toFixedString('', 32)
    ) AS n ON c.employee_id = n.employee_id AND c.client_key = n.client_key
    GROUP BY n.lead_id
) AS a ON a.lead_id = p.lead_id
ORDER BY p.lead_id
""",
        leads=joined(" AND ", leads),
        calls=filtered_calls(
            f, "employee_id, client_key, started_at, duration_s", snapshot_ms, tables=tables
        ),
    ).bind(limit=limit)
    return [
        LeadActivityRow(
            lead_id=str(r["lead_id"]),
            employee_id=str(r["employee_id"]),
            first_call_at_ms=int(r["first_call_at_ms"]),
            time_to_first_call_s=int(r["time_to_first_call_s"]),
            calls=int(r["calls"]),
            connected_calls=int(r["connected_calls"]),
            last_call_at_ms=int(r["last_call_at_ms"]),
        )
        for r in await db.named_rows(query)
    ]
