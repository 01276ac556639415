"""SQL of the reads of what a tenant stored: calls by id, excluded numbers, leads and contacts.

Every record is read at its newest version and still encrypted; the server decrypts what it
returns. Listings are keyset-paged, never OFFSET: each query takes the sort key of the last row
served and returns the next ``limit`` rows after it.

* Calls by id: ``calls`` is sorted by start time first, so a call's (device, call id) is no prefix
  of its key. ``FINAL`` would merge every call of the tenant before the ids narrow them (1.5 s on
  20M rows); instead the ids narrow the rows first and ``LIMIT 1 BY`` keeps each call's newest
  version (10-700 ms there). Calls with an excluded number are left out, as in every report.
* A lead's first call is its assigned employee's first call, at or after the lead's creation,
  with any of its numbers, the way LeadActivity counts it (``storage/listings.py``), at each
  call's newest version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from callsight.storage import leads
from callsight.storage.database import Database
from callsight.storage.listings import (
    HISTORY_BINARY,
    HISTORY_COLUMNS,
    HISTORY_SELECT,
    HistoryRow,
    history_rows,
    lead_numbers,
)
from callsight.storage.sql import Sql, compose, joined
from callsight.storage.tables import DEFAULT_TABLES, Tables


@dataclass(frozen=True)
class CallRef:
    """A call by its device and its id there."""

    device_id: str
    call_id: str


async def calls_by_ref(
    db: Database, tenant_id: str, refs: Sequence[CallRef], *, tables: Tables = DEFAULT_TABLES
) -> dict[CallRef, HistoryRow]:
    """The tenant's calls among ``refs``, each at its newest version, by ref; calls not stored,
    of another tenant or with an excluded number are not in it."""
    wanted = sorted({(r.device_id, r.call_id) for r in refs})
    if not wanted:
        return {}
    query = compose(
        f"""
SELECT {HISTORY_SELECT}
FROM (
    SELECT {HISTORY_COLUMNS} FROM {tables.calls}
    WHERE tenant_id = {{tenant:String}}
      AND device_id IN {{devices:Array(String)}}
      AND (device_id, call_id) IN {{refs:Array(Tuple(String, String))}}
    ORDER BY version DESC
    LIMIT 1 BY device_id, call_id
) AS c
LEFT JOIN ($leads) AS l ON l.client_key = c.client_key
WHERE c.client_key NOT IN (
    SELECT reinterpretAsUInt64(substring(number_bidx, 1, 8))
    FROM {tables.excluded_numbers} FINAL WHERE tenant_id = {{tenant:String}}
)
""",
        leads=lead_numbers(tenant_id, tables),
    ).bind(tenant=tenant_id, devices=sorted({d for d, _ in wanted}), refs=wanted)
    rows = await db.named_rows(query, binary=HISTORY_BINARY)
    return {
        CallRef(r.device_id, r.call_id): r
        for r in await history_rows(db, tenant_id, rows, tables=tables)
    }


async def excluded_numbers(db: Database, tenant_id: str) -> list[bytes]:
    """The ciphertexts of the tenant's excluded numbers (SetExcludedNumbers stores them)."""
    rows = await db.named_rows(
        Sql(
            "SELECT number_enc FROM excluded_numbers FINAL WHERE tenant_id = {t:String}"
            " AND number_enc != ''",
            {"t": tenant_id},
        ),
        binary=["number_enc"],
    )
    return [bytes(r["number_enc"]) for r in rows]


@dataclass(frozen=True)
class LeadKey:
    """Where a lead sits in ListLeads' order (newest first); the keyset cursor."""

    created_at_ms: int
    lead_id: str


@dataclass(frozen=True)
class LeadFilter:
    """Which leads ListLeads lists; ``None`` and empty mean all."""

    tenant_id: str
    employee_ids: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    uncalled_only: bool = False


@dataclass(frozen=True)
class StoredLead:
    """A lead as stored, with its first call (epoch ms, 0 for none)."""

    lead: leads.Lead
    first_call_at_ms: int

    @property
    def key(self) -> LeadKey:
        """This lead's position in the listing."""
        return LeadKey(self.lead.created_at_ms, self.lead.lead_id)


async def leads_page(
    db: Database, f: LeadFilter, after: LeadKey | None, limit: int
) -> list[StoredLead]:
    """The tenant's leads in ``f``, newest first (then by lead id, descending), after ``after``.

    Without ``uncalled_only`` the page is cut first and only its leads' first calls are looked
    up; with it, every candidate's first call is needed to know which are uncalled.
    """
    conditions = [Sql("tenant_id = {tenant:String}", {"tenant": f.tenant_id})]
    if f.employee_ids is not None:
        conditions.append(
            Sql(
                "employee_id IN {employee_ids:Array(String)}",
                {"employee_ids": list(f.employee_ids)},
            )
        )
    if f.tags:
        conditions.append(Sql("hasAny(tags, {tags:Array(String)})", {"tags": list(f.tags)}))
    if after is not None:
        conditions.append(
            Sql(
                "(created_at, lead_id) < (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'),"
                " {after_lead:String})",
                {"after_ms": after.created_at_ms, "after_lead": after.lead_id},
            )
        )
    cut = "" if f.uncalled_only else "LIMIT {limit:UInt32}"
    uncalled = "WHERE f.calls = 0" if f.uncalled_only else ""
    query = compose(
        f"""
WITH candidates AS (
    SELECT {leads.select_list()}
    FROM leads FINAL
    WHERE $conditions
    ORDER BY created_at DESC, lead_id DESC
    {cut}
),
numbers AS (
    -- arrayDistinct: a lead whose two numbers are equal is matched once.
    SELECT lead_id, employee_id, created_at_ms,
           reinterpretAsUInt64(substring(bidx, 1, 8)) AS client_key
    FROM candidates
    ARRAY JOIN arrayDistinct([primary_bidx, secondary_bidx]) AS bidx
    WHERE bidx != toFixedString('', 32)
),
newest AS (
    -- Each call with one of the numbers, at its newest version (whose number must match too).
    SELECT argMax(employee_id, version) AS employee_id,
           argMax(client_key, version) AS client_key,
           toUnixTimestamp64Milli(any(started_at)) AS started_ms
    FROM calls
    WHERE tenant_id = {{tenant:String}} AND (device_id, call_id) IN (
        SELECT device_id, call_id FROM calls
        WHERE tenant_id = {{tenant:String}} AND client_key IN (SELECT client_key FROM numbers)
    )
    GROUP BY device_id, call_id
),
firsts AS (
    SELECT n.lead_id AS lead_id, count() AS calls, min(c.started_ms) AS first_ms
    FROM newest AS c
    INNER JOIN numbers AS n ON c.employee_id = n.employee_id AND c.client_key = n.client_key
    WHERE c.started_ms >= n.created_at_ms
    GROUP BY n.lead_id
)
SELECT p.*, if(f.calls > 0, f.first_ms, 0) AS first_call_at_ms
FROM candidates AS p
LEFT JOIN firsts AS f ON f.lead_id = p.lead_id
{uncalled}
ORDER BY p.created_at_ms DESC, p.lead_id DESC
LIMIT {{limit:UInt32}}
""",
        conditions=joined(" AND ", conditions),
    ).bind(limit=limit)
    rows = await db.named_rows(query, binary=leads.BINARY)
    found = []
    for r in rows:
        first_call_at_ms = int(r.pop("first_call_at_ms"))
        found.append(StoredLead(leads.from_row(r), first_call_at_ms))
    return found


@dataclass(frozen=True)
class ContactKey:
    """Where a contact sits in ListContacts' order; the keyset cursor."""

    device_id: str
    contact_id: str


def contact_conditions(
    tenant_id: str, employee_ids: Sequence[str] | None, after: ContactKey | None
) -> list[Sql]:
    """Which contacts a listing or an export of ``tenant_id`` reads: of ``employee_ids``'
    devices (None: all), after the cursor ``after`` in (device, contact id) order."""
    conditions = [Sql("tenant_id = {tenant:String}", {"tenant": tenant_id})]
    if employee_ids is not None:
        conditions.append(
            Sql(
                "device_id IN (SELECT device_id FROM devices FINAL WHERE tenant_id ="
                " {tenant:String} AND employee_id IN {employee_ids:Array(String)})",
                {"tenant": tenant_id, "employee_ids": list(employee_ids)},
            )
        )
    if after is not None:
        # The first condition lets the primary index skip the devices before the cursor's.
        conditions.append(
            Sql(
                "device_id >= {after_device:String}"
                " AND (device_id, contact_id) > ({after_device:String}, {after_contact:String})",
                {"after_device": after.device_id, "after_contact": after.contact_id},
            )
        )
    return conditions


def contacts_query(tenant_id: str, conditions: list[Sql], limit: int, version: str) -> Sql:
    """The first ``limit`` contacts meeting ``conditions``, not deleted, newest version, with
    their device's employee, by device then contact id; ``version`` selects the version column
    as the caller wants it."""
    return compose(
        """
SELECT c.device_id AS device_id, d.employee_id AS employee_id, c.contact_id AS contact_id,
       c.name_enc AS name_enc, c.numbers_enc AS numbers_enc, $version
FROM (
    -- deleted is outside the sorting key, so it is judged on the newest version (FINAL first).
    SELECT device_id, contact_id, name_enc, numbers_enc, version
    FROM contacts FINAL
    WHERE $conditions AND NOT deleted
    ORDER BY device_id, contact_id
    LIMIT {limit:UInt32}
) AS c
LEFT JOIN (
    SELECT device_id, employee_id FROM devices FINAL WHERE tenant_id = {tenant:String}
) AS d ON d.device_id = c.device_id
ORDER BY c.device_id, c.contact_id
""",
        conditions=joined(" AND ", conditions),
        version=version,
    ).bind(limit=limit, tenant=tenant_id)


@dataclass(frozen=True)
class ContactRow:
    """A contact at its newest version, name and numbers still encrypted."""

    device_id: str
    employee_id: str
    contact_id: str
    name_enc: bytes
    numbers_enc: tuple[bytes, ...]
    updated_at_ms: int

    @property
    def key(self) -> ContactKey:
        """This contact's position in the listing."""
        return ContactKey(self.device_id, self.contact_id)


async def contacts_page(
    db: Database,
    tenant_id: str,
    employee_ids: tuple[str, ...] | None,
    after: ContactKey | None,
    limit: int,
) -> list[ContactRow]:
    """The tenant's contacts (of ``employee_ids``' devices; None: all), deleted ones left out,
    by device then contact id, after ``after``."""
    conditions = contact_conditions(tenant_id, employee_ids, after)
    query = contacts_query(tenant_id, conditions, limit, "c.version AS version")
    rows = await db.named_rows(query, binary=["name_enc", "numbers_enc"])
    return [
        ContactRow(
            device_id=str(r["device_id"]),
            employee_id=str(r["employee_id"]),
            contact_id=str(r["contact_id"]),
            name_enc=bytes(r["name_enc"]),
            numbers_enc=tuple(bytes(n) for n in r["numbers_enc"]),
            updated_at_ms=int(r["version"]),
        )
        for r in rows
    ]
