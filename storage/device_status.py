"""The state of a tenant's devices: as enrolled, what the server last heard from each
(``device_activity``, see ``storage.activity``) and its latest telemetry sample.

One query reads a whole page: the page's devices from ``devices``, then, for those devices only,
their activity (max over the rows every process wrote) and their latest sample (``max`` over
``telemetry_latest``, one row per device after merges, kept by a materialized view on
``telemetry``). Device health is the same query over every device of the tenant not revoked,
keeping those with an issue: each issue is decided in SQL; it reads one row per device, not the
fleet's telemetry history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from callsight.storage.database import Database
from callsight.storage.sql import Sql, compose

_STATUS = """
WITH page AS (
    SELECT device_id, employee_id, model, manufacturer, app_version, android_version,
        toUnixTimestamp64Milli(registered_at) AS registered_at_ms, revoked
    FROM devices FINAL
    WHERE tenant_id = {tenant:String} AND $where
    $limit
)
SELECT
    p.device_id AS device_id,
    p.employee_id AS employee_id,
    p.model AS model,
    p.manufacturer AS manufacturer,
    p.registered_at_ms AS registered_at_ms,
    p.revoked AS revoked,
    p.app_version AS enrolled_app_version,
    if(tm.app_version != '', tm.app_version, p.app_version) AS app_version,
    if(tm.android_version != '', tm.android_version, p.android_version) AS android_version,
    a.last_seen_ms AS last_seen_ms,
    a.last_sync_ms AS last_sync_ms,
    tupleElement(a.last_batch, 2) AS last_result,
    tm.telemetry_at_ms AS telemetry_at_ms,
    if(tm.telemetry_at_ms > 0, toInt32(tm.battery_pct), -1) AS battery_pct,
    tm.charging AS charging,
    tm.network AS network
FROM page AS p
LEFT JOIN
(
    SELECT device_id, max(last_seen_ms) AS last_seen_ms, max(last_sync_ms) AS last_sync_ms,
        max(last_batch) AS last_batch
    FROM device_activity
    WHERE tenant_id = {tenant:String} AND device_id IN (SELECT device_id FROM page)
    GROUP BY device_id
) AS a ON a.device_id = p.device_id
LEFT JOIN
(
    SELECT device_id, toUnixTimestamp64Milli(latest.1) AS telemetry_at_ms,
        latest.2 AS battery_pct, latest.3 AS charging, latest.4 AS network,
        latest.5 AS app_version, latest.6 AS android_version
    FROM
    (
        SELECT device_id, max(latest) AS latest
        FROM telemetry_latest
        WHERE tenant_id = {tenant:String} AND device_id IN (SELECT device_id FROM page)
        GROUP BY device_id
    )
) AS tm ON tm.device_id = p.device_id
"""

# A dotted version as numbers: "3.10.2-beta" -> [3, 10, 2]; a part without leading digits is 0.
_PARTS = "arrayMap(x -> toUInt64OrZero(extract(x, '^[0-9]+')), splitByChar('.', app_version))"

_HEALTH = """
SELECT *,
    last_sync_ms < {silent_before:UInt64} AS silent,
    telemetry_at_ms > 0 AND battery_pct <= {low_battery:Int32} AND NOT charging AS low_battery,
    notEmpty({min_version:Array(UInt64)}) AND app_version != ''
        AND arrayResize($parts, greatest(length($parts), length({min_version:Array(UInt64)})), 0)
            < arrayResize({min_version:Array(UInt64)},
                greatest(length($parts), length({min_version:Array(UInt64)})), 0) AS old_app
FROM ($status)
WHERE silent OR low_battery OR old_app
ORDER BY last_sync_ms, last_seen_ms, employee_id, registered_at_ms, device_id
"""


@dataclass(frozen=True)
class DeviceKey:
    """Where a device sits in a listing: by employee, then registration time."""

    employee_id: str
    registered_at_ms: int
    device_id: str


@dataclass(frozen=True)
class DeviceState:
    """A device as enrolled, with what the server last heard from it; times in epoch ms."""

    device_id: str
    employee_id: str
    model: str
    manufacturer: str
    registered_at_ms: int
    revoked: bool
    enrolled_app_version: str
    app_version: str  # the latest sample's, else the enrollment's
    android_version: str  # likewise
    last_seen_ms: int  # 0: never
    last_sync_ms: int  # last accepted batch; 0: never
    last_result: int  # UploadResult of the last batch; 0: none
    telemetry_at_ms: int  # 0: no sample
    battery_pct: int  # -1: no sample
    charging: bool
    network: int  # NetworkType

    @property
    def key(self) -> DeviceKey:
        return DeviceKey(self.employee_id, self.registered_at_ms, self.device_id)


@dataclass(frozen=True)
class DeviceHealth:
    """A device with at least one issue."""

    state: DeviceState
    silent: bool
    low_battery: bool
    old_app: bool


_STATE_FIELDS = tuple(DeviceState.__dataclass_fields__)


def _state(row: dict[str, Any]) -> DeviceState:
    return DeviceState(**{name: row[name] for name in _STATE_FIELDS})


async def page(
    db: Database,
    tenant_id: str,
    employee_ids: Sequence[str],
    include_revoked: bool,
    snapshot_ms: int,
    after: DeviceKey | None,
    limit: int,
) -> list[DeviceState]:
    """Up to ``limit`` devices registered by ``snapshot_ms``, after ``after`` in listing order."""
    where = Sql("registered_at <= fromUnixTimestamp64Milli({snapshot:Int64}, 'UTC')").bind(
        snapshot=snapshot_ms
    )
    if employee_ids:
        where += Sql(" AND employee_id IN {employees:Array(String)}", {"employees": employee_ids})
    if not include_revoked:
        where += " AND NOT revoked"
    if after is not None:
        where += Sql(
            " AND (employee_id, toUnixTimestamp64Milli(registered_at), device_id)"
            " > ({after_e:String}, {after_r:Int64}, {after_d:String})",
            {
                "after_e": after.employee_id,
                "after_r": after.registered_at_ms,
                "after_d": after.device_id,
            },
        )
    query = compose(
        _STATUS + "ORDER BY employee_id, registered_at_ms, device_id",
        where=where,
        limit=Sql(
            "ORDER BY employee_id, registered_at, device_id LIMIT {limit:UInt32}", {"limit": limit}
        ),
    ).bind(tenant=tenant_id)
    return [_state(row) for row in await db.named_rows(query)]


async def unhealthy(
    db: Database,
    tenant_id: str,
    silent_before_ms: int,
    low_battery_pct: int,
    min_version: Sequence[int],
) -> list[DeviceHealth]:
    """Every device not revoked that has not synced since ``silent_before_ms``, whose latest
    sample has the battery at or below ``low_battery_pct`` and not charging, or whose agent is
    older than ``min_version`` (empty: not checked); the least recently synced first."""
    status = compose(_STATUS, where="NOT revoked", limit="")
    query = compose(_HEALTH, status=status, parts=_PARTS).bind(
        tenant=tenant_id,
        silent_before=silent_before_ms,
        low_battery=low_battery_pct,
        min_version=list(min_version),
    )
    return [
        DeviceHealth(
            _state(row), bool(row["silent"]), bool(row["low_battery"]), bool(row["old_app"])
        )
        for row in await db.named_rows(query)
    ]
