"""What webhook events are derived from: reads of rows ingest has already made durable.

Nothing here runs on the ingest path. A webhook's dispatcher polls ``calls`` for the rows synced
since its cursor (a min-max index of ``synced_at`` skips older granules, migration 0016), and
asks the few follow-up questions an event needs: is this the first call to a lead, did the
client get a connected call since, which devices have gone silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from callsight.storage.database import Database
from callsight.storage.sql import Sql

# CallType numbers of the contract.
INCOMING, OUTGOING, MISSED, REJECTED = 1, 2, 3, 5
# The calls one poll reads at most; the cursor then moves only as far as the last one read.
MAX_CALLS_PER_POLL = 5_000


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)


@dataclass(frozen=True)
class SyncedCall:
    """A call row as stored (one version of it)."""

    device_id: str
    call_id: str
    employee_id: str
    type: int
    started_at_ms: int
    duration_s: int
    client_key: int
    name_key: int
    synced_at_ms: int


async def synced_calls(
    db: Database, tenant_id: str, types: Iterable[int], synced_after_ms: int, started_after_ms: int
) -> list[SyncedCall]:
    """Calls of ``types`` synced after ``synced_after_ms`` that started after
    ``started_after_ms``, in sync order, at most ``MAX_CALLS_PER_POLL``."""
    rows = await db.named_rows(
        Sql(
            "SELECT device_id, call_id, employee_id, type, started_at, duration_s, client_key,"
            " name_key, synced_at FROM calls"
            " WHERE tenant_id = {t:String} AND started_at > {started:DateTime64(3, 'UTC')}"
            " AND synced_at > {synced:DateTime64(3, 'UTC')} AND type IN {types:Array(UInt8)}"
            " ORDER BY synced_at, device_id, call_id LIMIT {limit:UInt32}",
            {
                "t": tenant_id,
                "started": _time(started_after_ms),
                "synced": _time(synced_after_ms),
                "types": sorted(set(types)),
                "limit": MAX_CALLS_PER_POLL,
            },
        )
    )
    return [
        SyncedCall(
            device_id=r["device_id"],
            call_id=r["call_id"],
            employee_id=r["employee_id"],
            type=int(r["type"]),
            started_at_ms=_ms(r["started_at"]),
            duration_s=int(r["duration_s"]),
            client_key=int(r["client_key"]),
            name_key=int(r["name_key"]),
            synced_at_ms=_ms(r["synced_at"]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class LeadOfClient:
    """A lead whose primary number is a client's, with what a lead event shows of it."""

    lead_id: str
    employee_id: str
    client_key: int
    created_at_ms: int
    first_name_enc: bytes
    last_name_enc: bytes
    primary_enc: bytes


async def leads_of_clients(
    db: Database, tenant_id: str, client_keys: Iterable[int]
) -> list[LeadOfClient]:
    """The tenant's leads whose primary number has one of ``client_keys``."""
    keys = sorted(set(client_keys))
    if not keys:
        return []
    rows = await db.named_rows(
        Sql(
            "SELECT lead_id, employee_id, created_at, first_name_enc, last_name_enc, primary_enc,"
            " reinterpretAsUInt64(substring(primary_bidx, 1, 8)) AS client_key"
            " FROM leads FINAL WHERE tenant_id = {t:String} AND client_key IN {k:Array(UInt64)}",
            {"t": tenant_id, "k": keys},
        ),
        binary=["first_name_enc", "last_name_enc", "primary_enc"],
    )
    return [
        LeadOfClient(
            lead_id=r["lead_id"],
            employee_id=r["employee_id"],
            client_key=int(r["client_key"]),
            created_at_ms=_ms(r["created_at"]),
            first_name_enc=bytes(r["first_name_enc"]),
            last_name_enc=bytes(r["last_name_enc"]),
            primary_enc=bytes(r["primary_enc"]),
        )
        for r in rows
    ]


async def first_outgoing(
    db: Database, tenant_id: str, since_by_key: dict[int, int]
) -> dict[int, tuple[int, str, str]]:
    """Per client key, the earliest outgoing call started at or after that key's since (ms):
    (started ms, device id, call id)."""
    if not since_by_key:
        return {}
    keys = sorted(since_by_key)
    rows = await db.named_rows(
        Sql(
            "SELECT client_key, min(started_at) AS first,"
            " argMin((device_id, call_id), (started_at, device_id, call_id)) AS call"
            " FROM calls WHERE tenant_id = {t:String} AND type = {out:UInt8}"
            " AND started_at >= {since:DateTime64(3, 'UTC')} AND client_key IN {k:Array(UInt64)}"
            # Each key from its own since: an earlier lead's must not hide a later lead's call.
            " AND toUnixTimestamp64Milli(started_at)"
            " >= transform(client_key, {k:Array(UInt64)}, {s:Array(Int64)}, toInt64(0))"
            " GROUP BY client_key",
            {
                "t": tenant_id,
                "out": OUTGOING,
                "since": _time(min(since_by_key.values())),
                "k": keys,
                "s": [since_by_key[k] for k in keys],
            },
        )
    )
    return {int(r["client_key"]): (_ms(r["first"]), r["call"][0], r["call"][1]) for r in rows}


async def last_connected(
    db: Database, tenant_id: str, client_keys: Iterable[int], since_ms: int
) -> dict[int, int]:
    """Per client key, the start (ms) of its latest connected call (incoming or outgoing with
    a duration) started after ``since_ms``; keys without one are absent."""
    keys = sorted(set(client_keys))
    if not keys:
        return {}
    rows = await db.named_rows(
        Sql(
            "SELECT client_key, max(started_at) AS last FROM calls"
            " WHERE tenant_id = {t:String} AND started_at > {since:DateTime64(3, 'UTC')}"
            " AND type IN {types:Array(UInt8)} AND duration_s > 0"
            " AND client_key IN {k:Array(UInt64)} GROUP BY client_key",
            {"t": tenant_id, "since": _time(since_ms), "types": [INCOMING, OUTGOING], "k": keys},
        )
    )
    return {int(r["client_key"]): _ms(r["last"]) for r in rows}


@dataclass(frozen=True)
class SilentDevice:
    """A device whose last accepted batch is older than the silence asked about."""

    device_id: str
    employee_id: str
    last_sync_ms: int


async def silent_devices(
    db: Database, tenant_id: str, synced_before_ms: int, synced_after_ms: int
) -> list[SilentDevice]:
    """The tenant's live devices whose last accepted batch (device_activity, every process's
    maximum) was between ``synced_after_ms`` and ``synced_before_ms``."""
    rows: list[dict[str, Any]] = await db.named_rows(
        Sql(
            "SELECT a.device_id AS device_id, d.employee_id AS employee_id,"
            " a.last_sync AS last_sync_ms"
            " FROM (SELECT device_id, max(last_sync_ms) AS last_sync FROM device_activity"
            "       WHERE tenant_id = {t:String} GROUP BY device_id) AS a"
            " INNER JOIN (SELECT device_id, employee_id FROM devices FINAL"
            "       WHERE tenant_id = {t:String} AND NOT revoked) AS d ON a.device_id = d.device_id"
            " WHERE a.last_sync > {after:UInt64} AND a.last_sync <= {before:UInt64}",
            {"t": tenant_id, "after": max(0, synced_after_ms), "before": synced_before_ms},
        )
    )
    return [SilentDevice(r["device_id"], r["employee_id"], int(r["last_sync_ms"])) for r in rows]
