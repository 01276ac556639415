"""Numbers a tenant keeps out of reports (personal numbers), and erasure of a number's data.

What keeps a number erased afterwards is its tombstone in ``erasures`` (``Directory.put_erasure``),
held in memory with the identities and checked by ingest; this module only deletes.
"""

from __future__ import annotations

from dataclasses import dataclass

from callsight.storage.database import Database
from callsight.storage.sql import Sql


@dataclass(frozen=True)
class Erased:
    """How many records held an erased number (each call, contact or lead once)."""

    calls: int
    contacts: int
    leads: int


# A call holds its number as a client key (the first 8 bytes of the blind index).
_CLIENT_KEY = "reinterpretAsUInt64(substring({b:FixedString(32)}, 1, 8))"
# Per table: the rows that hold the number, and the keys of the records whose newest version
# holds it. Every row of such a record goes, so an older version cannot resurface; an older row
# that held the number goes too, while the record's newer version (without it) stays.
_ERASE = (
    ("calls", f"client_key = {_CLIENT_KEY}", "(device_id, call_id)"),
    ("contacts", "has(numbers_bidx, {b:FixedString(32)})", "(device_id, contact_id)"),
    (
        "leads",
        "(primary_bidx = {b:FixedString(32)} OR secondary_bidx = {b:FixedString(32)})",
        "lead_id",
    ),
)


async def set_excluded(
    db: Database, tenant_id: str, numbers: dict[bytes, bytes], version: int
) -> int:
    """Replaces the tenant's excluded numbers with ``numbers`` (blind index -> ciphertext).

    ``version`` is the clock's nanoseconds: it must exceed the versions of the current rows.
    """
    current = {
        bytes(r["number_bidx"])
        for r in await db.named_rows(
            Sql(
                "SELECT number_bidx FROM excluded_numbers FINAL WHERE tenant_id = {t:String}",
                {"t": tenant_id},
            )
        )
    }
    rows = [(tenant_id, bidx, enc, version, 0) for bidx, enc in numbers.items()]
    # Numbers no longer listed get a deleted version, which FINAL leaves out.
    rows += [(tenant_id, bidx, b"", version, 1) for bidx in current - numbers.keys()]
    if rows:
        await db.insert_rows(
            "excluded_numbers",
            rows,
            ["tenant_id", "number_bidx", "number_enc", "version", "is_deleted"],
        )
    return len(numbers)


async def erase_number(db: Database, tenant_id: str, bidx: bytes) -> Erased:
    """Deletes every call, contact and lead of the tenant with the number whose blind index is
    ``bidx``, the number's ciphertexts and names (``parties``) and the number from the excluded
    list; returns how many records held it."""
    params = {"t": tenant_id, "b": bidx}
    counts: dict[str, int] = {}
    for table, holds, key in _ERASE:
        rows = await db.named_rows(
            Sql(
                f"SELECT count() AS records FROM {table} FINAL"
                f" WHERE tenant_id = {{t:String}} AND {holds}",
                params,
            )
        )
        counts[table] = int(rows[0]["records"])
        if table == "calls":
            # The versions dedup loads (call_versions, filled by a materialized view) go too:
            # else a call sent again after a lift, or after a restart, is taken for a duplicate.
            await db.command(
                f"DELETE FROM call_versions WHERE tenant_id = {{t:String}} AND {key} IN ("
                f"SELECT {key} FROM calls FINAL WHERE tenant_id = {{t:String}} AND {holds})",
                params,
            )
        # Lightweight DELETE: the rows vanish from every read at once; parts are cleaned later.
        await db.command(
            f"DELETE FROM {table} WHERE tenant_id = {{t:String}} AND ({holds} OR {key} IN ("
            f"SELECT {key} FROM {table} FINAL WHERE tenant_id = {{t:String}} AND {holds}))",
            params,
        )
    # After the calls, so a report never finds a call without its party.
    await db.command(
        f"DELETE FROM parties WHERE tenant_id = {{t:String}} AND client_key = {_CLIENT_KEY}",
        params,
    )
    await db.command(
        "DELETE FROM excluded_numbers WHERE tenant_id = {t:String}"
        " AND number_bidx = {b:FixedString(32)}",
        params,
    )
    return Erased(calls=counts["calls"], contacts=counts["contacts"], leads=counts["leads"])
