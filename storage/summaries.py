"""Summary-shaped report SQL: totals, per-employee totals, analysis, hourly, daily, working days.

Every query starts from ``filtered_calls`` (the newest version of each call, via FINAL) and
aggregates in ClickHouse; callers get a handful of rows back, never the calls themselves.

Two grouping patterns recur. Grouping by ``client_key`` first gives the plain totals (sums of
the per-client sums) and the per-client judgements in the same pass: a client with no connected
call contributes its missed and rejected calls to never attended and its outgoing calls to not
picked by client. Grouping by employee and local day gives working seconds (latest end minus
first start of each day). Local days and hours use the filter's IANA time zone.

CallSummary does both groupings (each its own read of the calls) and takes the settled whole
days of its range (whole UTC months and days) from rollups (``storage/rollups.py``): exact per
(employee, client) and per (employee, local day) figures of those days, which it adds up with
the rest of the range read from the calls. Sums add up, first
starts take the minimum and latest ends the maximum, so a client's judgement and a day that
spans two units come out as from the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from callsight.storage import rollups
from callsight.storage.database import Database
from callsight.storage.filters import CallFilter, filtered_calls

from callsight.core.clock import SYSTEM_CLOCK

# Android's CallLog.Calls.TYPE values, as in common.proto's CallType.
INCOMING, OUTGOING, MISSED, REJECTED, BLOCKED = 1, 2, 3, 5, 6

_COLUMNS = "employee_id, client_key, type, duration_s, started_at"
_DAY = "toDate(started_at, {tz:String})"
_START_MS = "toUnixTimestamp64Milli(started_at)"
_END_MS = f"({_START_MS} + toInt64(duration_s) * 1000)"

# Sums over one group of calls (a client, an employee); the client level feeds ``_TOTALS``.
_SUMS = f"""
    count() AS calls,
    countIf(type = {INCOMING}) AS incoming,
    countIf(type = {OUTGOING}) AS outgoing,
    countIf(type = {MISSED}) AS missed,
    countIf(type IN ({REJECTED}, {BLOCKED})) AS rejected,
    countIf(duration_s > 0) AS connected,
    countIf(type = {INCOMING} AND duration_s > 0) AS connected_incoming,
    countIf(type = {OUTGOING} AND duration_s > 0) AS connected_outgoing,
    sum(duration_s) AS duration,
    sumIf(duration_s, type = {INCOMING}) AS incoming_duration,
    sumIf(duration_s, type = {OUTGOING}) AS outgoing_duration,
    max({_START_MS}) AS last_call_at_ms"""

# The Summary fields over per-client rows, in ``Totals`` field order (working_seconds apart).
_TOTALS = """
    sum(calls) AS total_calls,
    sum(incoming) AS incoming_calls,
    sum(outgoing) AS outgoing_calls,
    sum(missed) AS missed_calls,
    sum(rejected) AS rejected_calls,
    sum(connected) AS connected_calls,
    sumIf(missed + rejected, connected = 0) AS never_attended_calls,
    sumIf(outgoing, connected = 0) AS not_picked_by_client_calls,
    sum(duration) AS total_duration_s,
    sum(incoming_duration) AS incoming_duration_s,
    sum(outgoing_duration) AS outgoing_duration_s,
    count() AS unique_clients"""

# ``_SUMS`` with the first start and the latest end: what a rollup holds of a group, and what
# CallSummary adds up per employee and local day.
_GROUP_SUMS = f"""{_SUMS},
    min({_START_MS}) AS first_call_at_ms,
    max({_END_MS}) AS last_call_end_ms"""

# One employee's local day: first start, latest end, and the seconds between (whole seconds).
_PER_DAY = f"""
    min({_START_MS}) AS first_call_at_ms,
    max({_END_MS}) AS last_call_end_ms,
    intDiv(last_call_end_ms - first_call_at_ms, 1000) AS working_seconds,
    count() AS calls,
    sum(duration_s) AS talk_seconds"""


def _ratio(numerator: str, denominator: str) -> str:
    # An average over nothing is 0, not NaN.
    return f"if({denominator} = 0, 0., {numerator} / {denominator})"


@dataclass(frozen=True)
class Totals:
    """The Summary fields (same names as the proto message)."""

    total_calls: int
    incoming_calls: int
    outgoing_calls: int
    missed_calls: int
    rejected_calls: int
    connected_calls: int
    never_attended_calls: int
    not_picked_by_client_calls: int
    total_duration_s: int
    incoming_duration_s: int
    outgoing_duration_s: int
    unique_clients: int
    working_seconds: int


@dataclass(frozen=True)
class EmployeeTotals:
    """One employee's totals, judged within the employee's own calls."""

    employee_id: str
    totals: Totals
    avg_duration_s: float
    avg_incoming_duration_s: float
    avg_outgoing_duration_s: float
    last_call_at_ms: int


@dataclass(frozen=True)
class Leader:
    """The employee leading one ranking (empty id when nobody has a non-zero figure)."""

    employee_id: str
    value: int


@dataclass(frozen=True)
class Analysis:
    """Averages and top performers."""

    avg_duration_per_call_s: float
    avg_duration_per_day_s: float
    avg_incoming_duration_s: float
    avg_outgoing_duration_s: float
    top_dialer: Leader
    top_answered: Leader
    top_caller: Leader
    longest_call: Leader
    highest_total_duration: Leader


@dataclass(frozen=True)
class Slot:
    """Calls in one bucket (an hour of the day, or a local date)."""

    key: int | str
    calls: int
    connected_calls: int
    duration_s: int


@dataclass(frozen=True)
class WorkingDay:
    """One employee's local day."""

    employee_id: str
    date: str
    first_call_at_ms: int
    last_call_end_ms: int
    working_seconds: int
    calls: int
    talk_seconds: int


def _calls(
    f: CallFilter, snapshot_ms: int | None = None, skip_started: tuple[int, int] | None = None
) -> tuple[str, dict[str, Any]]:
    # The filtered calls as a subquery, with the time zone that local days and hours use.
    sql, params = filtered_calls(f, _COLUMNS, snapshot_ms=snapshot_ms, skip_started=skip_started)
    return f"({sql})", {**params, "tz": f.timezone}


def _unit_rollup(f: CallFilter, by_month: bool) -> tuple[str, dict[str, Any]]:
    # What rollup runs hold of the units of ``f`` (rollups.ROLLUP_COLUMNS), in one read: its
    # UTC months, or its UTC days. Every local day but the ones holding a unit's first and last
    # instant lies wholly within it.
    calls, params = _calls(f)
    start = "toStartOfMonth(started_at, 'UTC')" if by_month else "toDate(started_at, 'UTC')"
    end = f"addMonths({start}, 1)" if by_month else f"addDays({start}, 1)"
    unit = (
        f"toInt64(toUnixTimestamp(toDateTime({start}, 'UTC'))) * 1000 AS unit_start_ms,"
        f" toInt64(toUnixTimestamp(toDateTime({end}, 'UTC'))) * 1000 AS unit_end_ms"
    )
    edges = (
        "toDate(fromUnixTimestamp64Milli(unit_start_ms, 'UTC'), {tz:String}),"
        " toDate(fromUnixTimestamp64Milli(unit_end_ms - 1, 'UTC'), {tz:String})"
    )
    sql = f"""
        SELECT unit_start_ms,
            grouping(client_key) = 0 AS is_client,
            NOT is_client AND day NOT IN ({edges}) AS whole_day,
            employee_id, client_key, {_DAY} AS day,
            {_GROUP_SUMS},
            if(whole_day, intDiv(last_call_end_ms - first_call_at_ms, 1000), 0) AS day_seconds
        FROM (SELECT *, {unit} FROM {calls})
        GROUP BY GROUPING SETS (
            (unit_start_ms, unit_end_ms, employee_id, client_key),
            (unit_start_ms, unit_end_ms, employee_id, day)
        )
    """
    return sql, params


# The Summary figures that add up over days (``Totals`` order); CallSummary's day rows, from the
# calls (``_GROUP_SUMS``) and from rollups (``_GROUP_COLUMNS``), carry them.
_DAY_FIGURES = (
    "calls",
    "incoming",
    "outgoing",
    "missed",
    "rejected",
    "connected",
    "duration",
    "incoming_duration",
    "outgoing_duration",
)
# The columns of call_rollups that hold ``_GROUP_SUMS``, in its order.
_GROUP_COLUMNS = ", ".join(
    [*rollups.SUMMED, "last_call_at_ms", "first_call_at_ms", "last_call_end_ms"]
)
# A client's part of the judgements, per call (or per rollup row, with the same names).
_CLIENT_PART = f"""
    client_key,
    duration_s > 0 AS connected,
    toUInt64(type IN ({MISSED}, {REJECTED}, {BLOCKED})) AS unanswered,
    toUInt64(type = {OUTGOING}) AS outgoing"""


async def call_summary(db: Database, f: CallFilter, use_rollups: bool = True) -> Totals:
    """Totals over the filtered calls, from two groupings, each its own read of the calls.

    Clients: each client's calls judged together (unique clients, never attended, not picked by
    client). Employees' local days: working seconds, and every figure that adds up. The settled
    whole days of the range come from rollups when the filter allows (``use_rollups=False`` reads
    every call, for comparisons): their clients are judged together with the same clients'
    calls read around them, and their days cut by the edges of the rollups merged with the same
    days read from the calls; whole days come summed up.
    """
    cover = await rollups.cover(db, f, _unit_rollup, SYSTEM_CLOCK.now_ms()) if use_rollups else None
    calls, params = _calls(f, skip_started=(cover.start_ms, cover.end_ms) if cover else None)
    clients = f"SELECT {_CLIENT_PART} FROM {calls}"
    days = f"SELECT employee_id, {_DAY} AS day, {_GROUP_SUMS} FROM {calls}"
    days += " GROUP BY employee_id, day"
    whole_days = ""
    if cover is not None:
        runs = "tenant_id = {tenant:String} AND run_id IN {rollup_runs:Array(UUID)}"
        if f.employee_ids is not None:
            runs += " AND employee_id IN {employee_ids:Array(String)}"
        params["rollup_runs"] = list(cover.run_ids)
        clients += (
            " UNION ALL SELECT client_key, connected > 0, toUInt64(missed + rejected),"
            f" toUInt64(outgoing) FROM call_rollups WHERE {runs} AND is_client"
        )
        days += (
            f" UNION ALL SELECT employee_id, day, {_GROUP_COLUMNS}"
            f" FROM call_rollups WHERE {runs} AND NOT is_client AND NOT whole_day"
        )
        whole_days = (
            f" UNION ALL SELECT {', '.join(f'sum({x})' for x in _DAY_FIGURES)}, sum(day_seconds)"
            f" FROM call_rollups WHERE {runs} AND NOT is_client AND whole_day"
        )
    sql = f"""
        SELECT {", ".join(f"day_sums.{x}" for x in _DAY_FIGURES[:6])},
            never_attended_calls, not_picked_by_client_calls,
            {", ".join(f"day_sums.{x}" for x in _DAY_FIGURES[6:])},
            unique_clients, working_seconds
        FROM (
            SELECT count() AS unique_clients,
                sumIf(unanswered, NOT connected) AS never_attended_calls,
                sumIf(outgoing, NOT connected) AS not_picked_by_client_calls
            FROM (
                SELECT max(connected) AS connected, sum(unanswered) AS unanswered,
                    sum(outgoing) AS outgoing
                FROM ({clients}) GROUP BY client_key
            )
        ) AS judged
        CROSS JOIN (
            SELECT {", ".join(f"sum(day_{x}) AS {x}" for x in _DAY_FIGURES)},
                sum(seconds) AS working_seconds
            FROM (
                SELECT {", ".join(f"sum({x}) AS day_{x}" for x in _DAY_FIGURES)},
                    intDiv(max(last_call_end_ms) - min(first_call_at_ms), 1000) AS seconds
                FROM ({days}) GROUP BY employee_id, day
                {whole_days}
            )
        ) AS day_sums
    """
    (row,) = await db.query(sql, params)
    return Totals(*(int(v) for v in row))


async def employee_summary(
    db: Database, f: CallFilter, after: str | None, limit: int, snapshot_ms: int
) -> list[EmployeeTotals]:
    """Up to ``limit`` employees with calls, by employee_id, starting after ``after``.

    Never attended and not picked by client are judged per (employee, client). Calls received
    after ``snapshot_ms`` are left out so that every page sees the same calls.
    """
    calls, params = _calls(f, snapshot_ms)
    page = "WHERE employee_id > {after:String}" if after is not None else ""
    sql = f"""
        SELECT employee_id, {", ".join(column.name for column in fields(Totals))},
            {_ratio("total_duration_s", "connected_calls")},
            {_ratio("incoming_duration_s", "connected_incoming")},
            {_ratio("outgoing_duration_s", "connected_outgoing")},
            last_call_at_ms
        FROM (
            SELECT employee_id, {_TOTALS},
                sum(connected_incoming) AS connected_incoming,
                sum(connected_outgoing) AS connected_outgoing,
                max(last_call_at_ms) AS last_call_at_ms
            FROM (SELECT employee_id, client_key, {_SUMS}
                  FROM {calls} {page} GROUP BY employee_id, client_key)
            GROUP BY employee_id
            ORDER BY employee_id
            LIMIT {{limit:UInt32}}
        ) AS clients
        LEFT JOIN (
            SELECT employee_id, sum(working_seconds) AS working_seconds
            FROM (SELECT employee_id, {_DAY} AS day, {_PER_DAY}
                  FROM {calls} {page} GROUP BY employee_id, day)
            GROUP BY employee_id
        ) AS days USING (employee_id)
        ORDER BY employee_id
    """
    rows = await db.query(sql, {**params, "after": after or "", "limit": limit})
    width = len(fields(Totals))
    return [
        EmployeeTotals(
            employee_id=str(row[0]),
            totals=Totals(*(int(v) for v in row[1 : 1 + width])),
            avg_duration_s=float(row[1 + width]),
            avg_incoming_duration_s=float(row[2 + width]),
            avg_outgoing_duration_s=float(row[3 + width]),
            last_call_at_ms=int(row[4 + width]),
        )
        for row in rows
    ]


def _leader(figure: str) -> str:
    # Highest figure first, ties to the smallest employee_id; nobody when every figure is 0.
    return (
        f"if(max({figure}) = 0, '', argMin(employee_id, (-toInt64({figure}), employee_id))),"
        f" max({figure})"
    )


async def call_analysis(db: Database, f: CallFilter) -> Analysis:
    """Averages and top performers in one scan grouped by employee."""
    calls, params = _calls(f)
    sql = f"""
        SELECT
            {_ratio("sum(duration)", "sum(connected)")},
            {_ratio("sum(duration)", "uniqExactArray(days)")},
            {_ratio("sum(incoming_duration)", "sum(connected_incoming)")},
            {_ratio("sum(outgoing_duration)", "sum(connected_outgoing)")},
            {_leader("outgoing")},
            {_leader("connected_incoming")},
            {_leader("calls")},
            {_leader("longest")},
            {_leader("duration")}
        FROM (
            SELECT employee_id, {_SUMS},
                max(duration_s) AS longest,
                groupUniqArray({_DAY}) AS days
            FROM {calls} GROUP BY employee_id
        )
    """
    (row,) = await db.query(sql, params)
    leaders = [Leader(str(row[i]), int(row[i + 1])) for i in range(4, 14, 2)]
    return Analysis(float(row[0]), float(row[1]), float(row[2]), float(row[3]), *leaders)


async def hourly(db: Database, f: CallFilter) -> list[Slot]:
    """Calls per local hour of the day (0-23), only the hours that have calls."""
    calls, params = _calls(f)
    sql = f"""
        SELECT toHour(started_at, {{tz:String}}) AS hour,
            count(), countIf(duration_s > 0), sum(duration_s)
        FROM {calls} GROUP BY hour ORDER BY hour
    """
    return [Slot(int(h), int(c), int(k), int(d)) for h, c, k, d in await db.query(sql, params)]


async def daywise(db: Database, f: CallFilter) -> list[Slot]:
    """Calls per local date ("YYYY-MM-DD"), oldest first, only the days that have calls."""
    calls, params = _calls(f)
    sql = f"""
        SELECT toString({_DAY}) AS date, count(), countIf(duration_s > 0), sum(duration_s)
        FROM {calls} GROUP BY date ORDER BY date
    """
    return [Slot(str(day), int(c), int(k), int(d)) for day, c, k, d in await db.query(sql, params)]


async def working_hours(db: Database, f: CallFilter) -> list[WorkingDay]:
    """One row per employee and local day with calls, by employee then date."""
    calls, params = _calls(f)
    sql = f"""
        SELECT employee_id, toString(day), first_call_at_ms, last_call_end_ms, working_seconds,
            calls, talk_seconds
        FROM (SELECT employee_id, {_DAY} AS day, {_PER_DAY}
              FROM {calls} GROUP BY employee_id, day)
        ORDER BY employee_id, day
    """
    return [
        WorkingDay(str(e), str(d), int(first), int(end), int(s), int(c), int(t))
        for e, d, first, end, s, c, t in await db.query(sql, params)
    ]
