"""The newest stored version of every record of some devices: the ground truth for dedup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from callsight.storage.database import Database
from callsight.storage.sql import Sql

# Where to look, and the identity of a record within its device as SQL over that table's columns.
_SOURCE = {"calls": "call_versions", "contacts": "contacts", "telemetry": "telemetry"}
_KEY = {
    "calls": ("call_id", "version"),
    "contacts": ("contact_id", "version"),
    "telemetry": ("toString(toUnixTimestamp64Milli(captured_at))", "toUInt64(0)"),
}


async def stored_versions(
    db: Database, table: str, tenant_id: str, device_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """device_id -> record key -> newest stored version, for the given devices of a tenant."""
    key, version = _KEY[table]
    rows = await db.named_rows(
        Sql(
            f"SELECT device_id, {key} AS key, max({version}) AS newest FROM {_SOURCE[table]}"
            " WHERE tenant_id = {tenant:String} AND device_id IN {devices:Array(String)}"
            " GROUP BY device_id, key",
            {"tenant": tenant_id, "devices": list(device_ids)},
        )
    )
    stored: dict[str, dict[str, int]] = {d: {} for d in device_ids}
    for row in rows:
        stored[row["device_id"]][row["key"]] = int(row["newest"])
    return stored


async def stored_versions_of(
    db: Database, table: str, tenant_id: str, keys: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, int]]:
    """device_id -> record key -> newest stored version, for the given keys of each device (a key
    not stored is absent); one query for every device."""
    key, version = _KEY[table]
    wanted = [k for device_keys in keys.values() for k in device_keys]
    rows = await db.named_rows(
        Sql(
            f"SELECT device_id, {key} AS key, max({version}) AS newest FROM {_SOURCE[table]}"
            " WHERE tenant_id = {tenant:String} AND device_id IN {devices:Array(String)}"
            f" AND {key} IN {{keys:Array(String)}}"
            " GROUP BY device_id, key",
            {"tenant": tenant_id, "devices": list(keys), "keys": wanted},
        )
    )
    asked = {device_id: set(device_keys) for device_id, device_keys in keys.items()}
    stored: dict[str, dict[str, int]] = {d: {} for d in keys}
    for row in rows:
        # Another device's key of the same name matched too: not asked for, not kept.
        if row["key"] in asked[row["device_id"]]:
            stored[row["device_id"]][row["key"]] = int(row["newest"])
    return stored
