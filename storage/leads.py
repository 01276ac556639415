"""Leads: prospective clients imported by a tenant and assigned to its employees.

A lead is written whole with a new ``version`` (ReplacingMergeTree(version, is_deleted)) and read
with ``FINAL``. Names, company, numbers, e-mail, address, city and zip code are ciphertexts made
by the caller (any of them can hold a number; state and country are not secret); numbers
also carry their blind index, which matches a lead to existing leads (primary number) and to
calls (either number). A lead without a secondary number has a secondary index of 32 zero bytes,
which no number's HMAC equals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from callsight.storage.database import Database
from callsight.storage.sql import Sql

NO_NUMBER = bytes(32)
# Blind indexes per lookup query: keeps the bound parameter well below URL limits over HTTP.
_LOOKUP_CHUNK = 1000


@dataclass(frozen=True)
class Lead:
    """One lead as stored; ``*_enc`` are ciphertexts, ``*_bidx`` blind indexes."""

    tenant_id: str
    lead_id: str
    employee_id: str
    first_name_enc: bytes
    last_name_enc: bytes
    company_enc: bytes
    primary_enc: bytes
    primary_bidx: bytes
    secondary_enc: bytes
    secondary_bidx: bytes
    email_enc: bytes
    address_enc: bytes
    city_enc: bytes
    state: str
    country: str
    zipcode_enc: bytes
    tags: tuple[str, ...]
    created_at_ms: int


_COLUMNS = tuple(f.name for f in fields(Lead))
# The imported content of a lead: what OVERWRITE replaces and FILL_BLANKS fills.
_CONTENT = (
    "first_name_enc",
    "last_name_enc",
    "company_enc",
    "primary_enc",
    "email_enc",
    "address_enc",
    "city_enc",
    "state",
    "country",
    "zipcode_enc",
    "tags",
)
# The columns of a lead that hold bytes.
BINARY = [c for c in _COLUMNS if c.endswith("_enc")]


def overwrite(existing: Lead, imported: Lead, employee_id: str | None = None) -> Lead:
    """``imported`` in place of ``existing``; id, creation and (unless given) assignee kept."""
    return replace(
        imported,
        lead_id=existing.lead_id,
        created_at_ms=existing.created_at_ms,
        employee_id=employee_id or existing.employee_id,
    )


def fill_blanks(existing: Lead, imported: Lead) -> Lead:
    """``existing`` with its empty fields taken from ``imported``."""
    changes: dict[str, Any] = {
        name: getattr(imported, name)
        for name in _CONTENT
        if not getattr(existing, name) and getattr(imported, name)
    }
    # The secondary number's ciphertext and blind index go together.
    if existing.secondary_bidx == NO_NUMBER and imported.secondary_bidx != NO_NUMBER:
        changes["secondary_enc"] = imported.secondary_enc
        changes["secondary_bidx"] = imported.secondary_bidx
    return replace(existing, **changes)


def from_row(row: dict[str, Any]) -> Lead:
    """A lead from a row read with ``select_list()``."""
    values = dict(row)
    for name in BINARY + ["primary_bidx", "secondary_bidx"]:
        values[name] = bytes(values[name])
    values["tags"] = tuple(values["tags"])
    return Lead(**values)


def select_list() -> str:
    """The SELECT list of a ``Lead`` (``created_at`` as ``created_at_ms``)."""
    return ", ".join(
        "toUnixTimestamp64Milli(created_at) AS created_at_ms" if c == "created_at_ms" else c
        for c in _COLUMNS
    )


async def by_primary(db: Database, tenant_id: str, primary_bidxs: Iterable[bytes]) -> list[Lead]:
    """The tenant's current leads whose primary number has one of these blind indexes."""
    wanted = sorted(set(primary_bidxs))
    found: list[Lead] = []
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        rows = await db.named_rows(
            Sql(
                f"SELECT {select_list()} FROM leads FINAL WHERE tenant_id = {{t:String}}"
                " AND primary_bidx IN {b:Array(FixedString(32))} ORDER BY lead_id",
                {"t": tenant_id, "b": wanted[start : start + _LOOKUP_CHUNK]},
            ),
            binary=BINARY,
        )
        found += [from_row(row) for row in rows]
    return found


async def all_leads(db: Database, tenant_id: str) -> list[Lead]:
    """Every current lead of the tenant, by lead id."""
    rows = await db.named_rows(
        Sql(
            f"SELECT {select_list()} FROM leads FINAL WHERE tenant_id = {{t:String}}"
            " ORDER BY lead_id",
            {"t": tenant_id},
        ),
        binary=BINARY,
    )
    return [from_row(row) for row in rows]


async def open_leads(db: Database, tenant_id: str) -> dict[str, int]:
    """How many current leads each employee of the tenant is assigned."""
    rows = await db.named_rows(
        Sql(
            "SELECT employee_id, count() AS leads FROM leads FINAL WHERE tenant_id = {t:String}"
            " GROUP BY employee_id",
            {"t": tenant_id},
        )
    )
    return {str(r["employee_id"]): int(r["leads"]) for r in rows}


async def put(db: Database, leads: Sequence[Lead], version: int) -> None:
    """Writes new leads or new versions of existing ones, all under one fresh ``version``."""
    if not leads:
        return
    rows = []
    for lead in leads:
        row = [getattr(lead, c) for c in _COLUMNS]
        row[_COLUMNS.index("created_at_ms")] = datetime.fromtimestamp(
            lead.created_at_ms / 1000, UTC
        )
        row[_COLUMNS.index("tags")] = list(lead.tags)
        rows.append((*row, version, 0))
    names = ["created_at" if c == "created_at_ms" else c for c in _COLUMNS]
    await db.insert_rows("leads", rows, [*names, "version", "is_deleted"])
