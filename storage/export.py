"""SQL of the bulk exports: calls, contacts and leads as Arrow tables, keyset-paged.

Rows come out of ClickHouse in its Arrow format (clickhouse-connect ``query_arrow``), never as
Python rows; the server only decrypts what a chunk holds and encodes it.

* Calls are read like CallHistory (the newest version of each call, ``FINAL``, as of the export's
  snapshot), in the table's own order (started_at, device_id, call_id) ascending. A chunk is read
  from start-time windows after the cursor: the density of the rows a window held tells how wide
  the next one should be (about twice a chunk's worth, so that one query mostly fills a chunk; an
  empty window is widened eightfold), so every query reads about a chunk's worth of the primary
  index however long the range or deep the cursor. Enum columns come out as the contract's names
  without their prefix (``INCOMING``). Calls hold client keys; the ciphertexts of numbers and
  names are read from ``parties`` (``call_parties``) once per distinct client of a chunk.
* Contacts are read by (device_id, contact_id), leads by lead_id, both ``FINAL``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import EnumDescriptor

from callsight.storage.database import Database
from callsight.storage.filters import CallFilter, filtered_calls
from callsight.storage.listings import lead_numbers
from callsight.storage.reads import ContactKey, contact_conditions, contacts_query
from callsight.storage.sql import Sql, compose
from callsight.storage.tables import DEFAULT_TABLES, Tables
from callsight.v1 import common_pb2

DAY_MS = 86_400_000
# The first window a chunk of calls is read from, and how much a window too sparse is widened.
FIRST_WINDOW_MS = DAY_MS
_WIDEN = 8
# A window is sized for this many times the rows still wanted, at the last window's density
# (days and nights differ: 5/4 left most chunks needing a second query).
_MARGIN = 2
# The most calls one read returns: each query has a fixed cost (about 35 ms of CPU in chDB,
# measured), so exports read this many at a time whatever their message size.
READ_ROWS = 100_000


def enum_names(column: str, enum: EnumDescriptor, prefix: str) -> str:
    """SQL turning a column of the contract's enum numbers into their names without ``prefix``
    (``CALL_TYPE_INCOMING`` -> ``INCOMING``); numbers and names come from the contract."""
    values = [(v.number, v.name.removeprefix(prefix)) for v in enum.values if v.number]
    numbers = ", ".join(str(number) for number, _ in values)
    names = ", ".join(f"'{name}'" for _, name in values)
    return f"transform({column}, [{numbers}], [{names}], '')"


_CALL_SELECT = f"""
c.call_id AS call_id, c.device_id AS device_id, c.employee_id AS employee_id,
lower(hex(c.client_key)) AS client, c.client_key AS client_key, c.name_key AS name_key,
{enum_names("c.type", common_pb2.CallType.DESCRIPTOR, "CALL_TYPE_")} AS type,
c.started_at AS started_at, c.duration_s AS duration_s, c.synced_at AS synced_at,
c.sim_slot AS sim_slot,
{enum_names("c.presentation", common_pb2.NumberPresentation.DESCRIPTOR, "NUMBER_PRESENTATION_")}
    AS presentation,
{enum_names("c.method", common_pb2.CallMethod.DESCRIPTOR, "CALL_METHOD_")} AS method,
{enum_names("c.mode", common_pb2.CallMode.DESCRIPTOR, "CALL_MODE_")} AS mode,
l.lead_id AS lead_id"""
_CALL_COLUMNS = (
    "call_id, device_id, employee_id, client_key, name_key, type, started_at, duration_s,"
    " synced_at, sim_slot, presentation, method, mode"
)
# Read for ADMIN keys only: the ciphertexts the server decrypts.
_SEALED_SELECT = ", c.note_enc AS note_enc, c.recording_uri_enc AS recording_uri_enc"
_SEALED_COLUMNS = ", note_enc, recording_uri_enc"
# Text columns: ClickHouse's Arrow output gives every String as binary (ciphertexts are not
# UTF-8), so these are cast back.
_CALL_TEXT = (
    *("call_id", "device_id", "employee_id", "client", "type", "presentation"),
    *("method", "mode", "lead_id"),
)


@dataclass(frozen=True)
class CallKey:
    """Where a call sits in the export's order; the resume cursor."""

    started_at_ms: int
    device_id: str
    call_id: str


@dataclass(frozen=True)
class CallRange:
    """What an export of calls reads: the filter, its snapshot and the start times to walk."""

    filter: CallFilter
    snapshot_ms: int
    # Start times the windows walk, half-open: the filter's range for call time, or all
    # plausible starts for sync time (a call starts before it is received, plus clock skew).
    start_ms: int
    end_ms: int
    sealed: bool  # read the ciphertexts of notes and recording URIs (ADMIN)


@dataclass(frozen=True)
class CallChunk:
    """The next calls of an export and the window width to read the chunk after with."""

    rows: pa.Table
    next_window_ms: int
    # True when no call follows these in the range.
    last: bool


def call_range(f: CallFilter, snapshot_ms: int, sealed: bool) -> CallRange:
    """The start times an export of ``f`` walks (see ``CallRange``)."""
    if f.sync_time:
        return CallRange(f, snapshot_ms, 0, min(f.to_ms, snapshot_ms) + 2 * DAY_MS, sealed)
    return CallRange(f, snapshot_ms, f.from_ms, f.to_ms, sealed)


def _texts(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    for name in names:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.cast(table.column(i), pa.string()))
    return table


async def _call_window(
    db: Database,
    r: CallRange,
    after: CallKey | None,
    started: tuple[int, int],
    limit: int,
    tables: Tables,
) -> pa.Table:
    """The first ``limit`` calls after ``after`` that started within ``started``, in order."""
    where = Sql("")
    if after is not None:
        where = Sql(
            " WHERE (started_at, device_id, call_id) > (fromUnixTimestamp64Milli("
            "{after_ms:Int64}, 'UTC'), {after_device:String}, {after_call:String})",
            {
                "after_ms": after.started_at_ms,
                "after_device": after.device_id,
                "after_call": after.call_id,
            },
        )
    columns = _CALL_COLUMNS + (_SEALED_COLUMNS if r.sealed else "")
    select = _CALL_SELECT + (_SEALED_SELECT if r.sealed else "")
    # The chunk is cut first, so only its rows are joined with the leads.
    query = compose(
        f"""
SELECT {select}
FROM (
    SELECT * FROM ($calls)$where
    ORDER BY started_at, device_id, call_id
    LIMIT {{limit:UInt32}}
) AS c
LEFT JOIN ($leads) AS l ON l.client_key = c.client_key
ORDER BY c.started_at, c.device_id, c.call_id
""",
        calls=filtered_calls(r.filter, columns, r.snapshot_ms, started, tables=tables),
        where=where,
        leads=lead_numbers(r.filter.tenant_id, tables),
    ).bind(limit=limit)
    params = dict(query.params)
    table = await db.run(lambda c: c.query_arrow(query.text, parameters=params, use_strings=False))
    return _texts(table, _CALL_TEXT)


async def _first_start(db: Database, r: CallRange, tables: Tables) -> int | None:
    """The start time of the tenant's first call in the range (None: no call), so that the
    first window starts there: an export "from the beginning" otherwise walks empty windows
    (five queries for the first call a year back). Any version of a call starts at the same
    time (it is in the sorting key), so this reads one row without FINAL."""
    rows = await db.named_rows(
        Sql(
            "SELECT toUnixTimestamp64Milli(started_at) AS first"
            f" FROM {tables.calls} WHERE tenant_id = {{tenant:String}}"
            " AND started_at >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')"
            " AND started_at < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')"
            " ORDER BY tenant_id, started_at LIMIT 1",
            {"tenant": r.filter.tenant_id, "from_ms": r.start_ms, "to_ms": r.end_ms},
        )
    )
    return int(rows[0]["first"]) if rows else None


async def calls_chunk(
    db: Database,
    r: CallRange,
    after: CallKey | None,
    limit: int,
    window_ms: int = FIRST_WINDOW_MS,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> CallChunk:
    """Up to ``limit`` calls after ``after`` in (started_at, device_id, call_id) order, read
    window by window from ``window_ms`` wide; fewer only at the end of the range.

    Numbers and names are left as ``client_key`` and ``name_key`` (see ``storage.parties``).
    """
    if after is None:
        first = await _first_start(db, r, tables)
        if first is None:
            return CallChunk(_empty(r), window_ms, True)
        lower = first
    else:
        lower = max(r.start_ms, after.started_at_ms)
    parts: list[pa.Table] = []
    got = 0
    while got < limit and lower < r.end_ms:
        upper = min(r.end_ms, lower + window_ms)
        part = await _call_window(db, r, after, (lower, upper), limit - got, tables)
        if part.num_rows:
            parts.append(part)
        if part.num_rows >= limit - got:
            # Full: the next window should hold a chunk with margin, at this window's density.
            newest = pc.max(pc.cast(part.column("started_at"), pa.int64())).as_py()
            span = max(1, newest - lower + 1)
            window_ms = max(1, span * limit * _MARGIN // part.num_rows)
            got += part.num_rows
            break
        got += part.num_rows
        if part.num_rows:
            # Too few: wide enough for the rest at this window's density, at most _WIDEN times.
            wanted = window_ms * (limit - got) * _MARGIN // part.num_rows
            window_ms = min(window_ms * _WIDEN, max(window_ms, wanted))
        else:
            window_ms *= _WIDEN
        window_ms = min(window_ms, max(1, r.end_ms - r.start_ms))
        lower = upper
    rows = pa.concat_tables(parts) if parts else None
    if rows is None:
        return CallChunk(_empty(r), window_ms, True)
    return CallChunk(rows.combine_chunks(), window_ms, lower >= r.end_ms and got < limit)


async def call_parties(
    db: Database, tenant_id: str, client_keys: pa.Array, *, tables: Tables = DEFAULT_TABLES
) -> pa.Table:
    """The party rows (client_key, name_key, number_enc, name_enc) of ``client_keys``: one per
    (client key, name key), as Arrow (``parties.lookup`` builds a dict per row, and a chunk of
    calls has tens of thousands of clients)."""
    query = Sql(
        "SELECT client_key, name_key, number_enc, name_enc"
        f" FROM {tables.parties} WHERE tenant_id = {{tenant:String}}"
        " AND client_key IN {keys:Array(UInt64)} LIMIT 1 BY client_key, name_key",
        {"tenant": tenant_id, "keys": client_keys.to_pylist()},
    )
    params = dict(query.params)
    return await db.run(lambda c: c.query_arrow(query.text, parameters=params, use_strings=False))


def _empty(r: CallRange) -> pa.Table:
    fields = [
        *(pa.field(n, pa.string()) for n in _CALL_TEXT[:4]),
        pa.field("client_key", pa.uint64()),
        pa.field("name_key", pa.uint32()),
        pa.field("type", pa.string()),
        pa.field("started_at", pa.timestamp("ms", tz="UTC")),
        pa.field("duration_s", pa.uint32()),
        pa.field("synced_at", pa.timestamp("ms", tz="UTC")),
        pa.field("sim_slot", pa.int32()),
        *(pa.field(n, pa.string()) for n in ("presentation", "method", "mode", "lead_id")),
    ]
    if r.sealed:
        fields += [pa.field("note_enc", pa.binary()), pa.field("recording_uri_enc", pa.binary())]
    return pa.schema(fields).empty_table()


async def contacts_chunk(
    db: Database,
    tenant_id: str,
    employee_ids: tuple[str, ...] | None,
    snapshot_ms: int,
    after: ContactKey | None,
    limit: int,
) -> pa.Table:
    """Up to ``limit`` of the tenant's contacts (of ``employee_ids``' devices; None: all) after
    ``after``, by device then contact id, deleted ones and those received after ``snapshot_ms``
    left out; name and numbers still encrypted."""
    conditions = [
        *contact_conditions(tenant_id, employee_ids, after),
        Sql(
            "synced_at <= fromUnixTimestamp64Milli({snapshot_ms:Int64}, 'UTC')",
            {"snapshot_ms": snapshot_ms},
        ),
    ]
    query = contacts_query(
        tenant_id,
        conditions,
        limit,
        "fromUnixTimestamp64Milli(toInt64(c.version), 'UTC') AS updated_at",
    )
    params = dict(query.params)
    table = await db.run(lambda c: c.query_arrow(query.text, parameters=params, use_strings=False))
    return _texts(table, ("device_id", "employee_id", "contact_id"))


# The lead columns an export reads, ciphertexts still sealed.
LEAD_SEALED = (
    "first_name_enc",
    "last_name_enc",
    "company_enc",
    "primary_enc",
    "secondary_enc",
    "email_enc",
    "address_enc",
    "city_enc",
    "zipcode_enc",
)


async def leads_chunk(
    db: Database,
    tenant_id: str,
    employee_ids: tuple[str, ...] | None,
    after: str | None,
    limit: int,
) -> pa.Table:
    """Up to ``limit`` of the tenant's leads (assigned to ``employee_ids``; None: all) after
    lead id ``after``, by lead id; personal fields still encrypted."""
    conditions = Sql("tenant_id = {tenant:String}", {"tenant": tenant_id})
    if employee_ids is not None:
        conditions += Sql(
            " AND employee_id IN {employee_ids:Array(String)}",
            {"employee_ids": list(employee_ids)},
        )
    if after is not None:
        conditions += Sql(" AND lead_id > {after:String}", {"after": after})
    query = compose(
        f"""
SELECT lead_id, employee_id, {", ".join(LEAD_SEALED)}, state, country, tags, created_at
FROM leads FINAL
WHERE $conditions
ORDER BY lead_id
LIMIT {{limit:UInt32}}
""",
        conditions=conditions,
    ).bind(limit=limit)
    params = dict(query.params)
    table = await db.run(lambda c: c.query_arrow(query.text, parameters=params, use_strings=False))
    table = _texts(table, ("lead_id", "employee_id", "state", "country"))
    tags = table.column("tags")
    return table.set_column(
        table.schema.get_field_index("tags"), "tags", pc.cast(tags, pa.list_(pa.string()))
    )
