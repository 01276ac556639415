"""The calls a report looks at, as one SQL subquery with bound parameters.

Every report starts from ``filtered_calls``: the newest version of each call (``FINAL``) of one
tenant in a time range, narrowed by employees, types, durations, excluded numbers, hidden
numbers (the "private" client) and channels (method and mode). Filters on
columns outside the sorting key are applied after FINAL merges the versions, so an old version
can never stand in for a newer one that the filter drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callsight.storage.sql import Sql
from callsight.storage.tables import DEFAULT_TABLES, Tables
from callsight.v1 import common_pb2

# CallType numbers from the contract; report SQL formats these ints, never a request's values.
INCOMING = int(common_pb2.CALL_TYPE_INCOMING)
OUTGOING = int(common_pb2.CALL_TYPE_OUTGOING)
MISSED = int(common_pb2.CALL_TYPE_MISSED)
REJECTED = int(common_pb2.CALL_TYPE_REJECTED)
BLOCKED = int(common_pb2.CALL_TYPE_BLOCKED)
# The calls a client never answered or the employee never took: missed, rejected, blocked.
UNANSWERED = f"type IN ({MISSED}, {REJECTED}, {BLOCKED})"
# How a shown number is presented; every other presentation is the "private" client.
SHOWN = int(common_pb2.NUMBER_PRESENTATION_ALLOWED)


@dataclass(frozen=True)
class CallFilter:
    """A validated report filter; the tenant comes from the caller, never from the request."""

    tenant_id: str
    from_ms: int
    to_ms: int
    timezone: str
    sync_time: bool = False
    # None means every employee; an empty tuple means none (e.g. a tag nobody has).
    employee_ids: tuple[str, ...] | None = None
    call_types: tuple[int, ...] = ()
    min_duration_s: int = 0
    max_duration_s: int | None = None
    include_excluded: bool = False
    # Leave out the calls from hidden numbers (presentation other than SHOWN).
    exclude_private: bool = False
    # CallMethod and CallMode numbers; empty means all.
    call_methods: tuple[int, ...] = ()
    call_modes: tuple[int, ...] = ()


def filtered_calls(
    f: CallFilter,
    columns: str = "*",
    snapshot_ms: int | None = None,
    started: tuple[int | None, int | None] = (None, None),
    skip_started: tuple[int, int] | None = None,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> Sql:
    """``SELECT columns FROM calls FINAL WHERE <filter>``, binding its parameters.

    ``snapshot_ms`` leaves out calls received after that instant (stable paging). ``started``
    (epoch ms, half-open) further narrows the calls by start time whatever the filter's time
    field, each end optional: started_at leads the sorting key, so this narrows what is read.
    ``skip_started`` (epoch ms, half-open) leaves out the calls that started within it.
    """
    time_column = "synced_at" if f.sync_time else "started_at"
    conditions = [
        "tenant_id = {tenant:String}",
        f"{time_column} >= fromUnixTimestamp64Milli({{from_ms:Int64}}, 'UTC')",
        f"{time_column} < fromUnixTimestamp64Milli({{to_ms:Int64}}, 'UTC')",
    ]
    params: dict[str, Any] = {"tenant": f.tenant_id, "from_ms": f.from_ms, "to_ms": f.to_ms}
    if f.employee_ids is not None:
        conditions.append("employee_id IN {employee_ids:Array(String)}")
        params["employee_ids"] = list(f.employee_ids)
    if f.call_types:
        conditions.append("type IN {call_types:Array(UInt8)}")
        params["call_types"] = list(f.call_types)
    if f.min_duration_s:
        conditions.append("duration_s >= {min_duration_s:UInt32}")
        params["min_duration_s"] = f.min_duration_s
    if f.max_duration_s is not None:
        conditions.append("duration_s <= {max_duration_s:UInt32}")
        params["max_duration_s"] = f.max_duration_s
    if f.exclude_private:
        conditions.append(f"presentation = {SHOWN}")
    if f.call_methods:
        conditions.append("method IN {call_methods:Array(UInt8)}")
        params["call_methods"] = list(f.call_methods)
    if f.call_modes:
        conditions.append("mode IN {call_modes:Array(UInt8)}")
        params["call_modes"] = list(f.call_modes)
    if not f.include_excluded:
        # The excluded numbers of the tenant, as client keys (first 8 bytes of the blind index).
        conditions.append(
            "client_key NOT IN (SELECT reinterpretAsUInt64(substring(number_bidx, 1, 8))"
            f" FROM {tables.excluded_numbers} FINAL WHERE tenant_id = {{tenant:String}})"
        )
    if snapshot_ms is not None:
        conditions.append("synced_at <= fromUnixTimestamp64Milli({snapshot_ms:Int64}, 'UTC')")
        params["snapshot_ms"] = snapshot_ms
    started_from_ms, started_to_ms = started
    if started_from_ms is not None:
        conditions.append("started_at >= fromUnixTimestamp64Milli({started_from_ms:Int64}, 'UTC')")
        params["started_from_ms"] = started_from_ms
    if started_to_ms is not None:
        conditions.append("started_at < fromUnixTimestamp64Milli({started_to_ms:Int64}, 'UTC')")
        params["started_to_ms"] = started_to_ms
    if skip_started is not None:
        conditions.append(
            "(started_at < fromUnixTimestamp64Milli({skip_from_ms:Int64}, 'UTC')"
            " OR started_at >= fromUnixTimestamp64Milli({skip_to_ms:Int64}, 'UTC'))"
        )
        params["skip_from_ms"], params["skip_to_ms"] = skip_started
    return Sql(
        f"SELECT {columns} FROM {tables.calls} FINAL WHERE " + " AND ".join(conditions), params
    )
