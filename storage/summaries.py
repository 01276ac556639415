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

from callsight.storage.database import Database
from callsight.storage.filters import (
    BLOCKED,
    INCOMING,
    MISSED,
    OUTGOING,
    REJECTED,
    UNANSWERED,
    CallFilter,
    filtered_calls,
)
from callsight.storage.rollups import SUMMED, Rollups
from callsight.storage.sql import Sql, compose
from callsight.storage.tables import DEFAULT_TABLES, Tables

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

# The Summary fields over per-client rows, under the names of ``Totals`` (working_seconds apart).
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
    f: CallFilter,
    snapshot_ms: int | None = None,
    skip_started: tuple[int, int] | None = None,
    *,
    tables: Tables,
) -> Sql:
    # The filtered calls as a subquery; local days and hours bind the time zone themselves.
    return (
        "("
        + filtered_calls(f, _COLUMNS, snapshot_ms, skip_started=skip_started, tables=tables)
        + ")"
    )


def _unit_rollup(f: CallFilter, by_month: bool, tables: Tables) -> Sql:
    # What rollup runs hold of the units of ``f`` (rollups.ROLLUP_COLUMNS), in one read: its
    # UTC months, or its UTC days. Every local day but the ones holding a unit's first and last
    # instant lies wholly within it.
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
    return compose(
        f"""
        SELECT unit_start_ms,
            grouping(client_key) = 0 AS is_client,
            NOT is_client AND day NOT IN ({edges}) AS whole_day,
            employee_id, client_key, {_DAY} AS day,
            {_GROUP_SUMS},
            if(whole_day, intDiv(last_call_end_ms - first_call_at_ms, 1000), 0) AS day_seconds
        FROM (SELECT *, {unit} FROM $calls)
        GROUP BY GROUPING SETS (
            (unit_start_ms, unit_end_ms, employee_id, client_key),
            (unit_start_ms, unit_end_ms, employee_id, day)
        )
        """,
        calls=_calls(f, tables=tables),
    ).bind(tz=f.timezone)


# The Summary figures that add up over days, and their ``Totals`` names; CallSummary's day rows,
# from the calls (``_GROUP_SUMS``) and from rollups (``_GROUP_COLUMNS``), carry them.
_DAY_FIGURES = {
    "calls": "total_calls",
    "incoming": "incoming_calls",
    "outgoing": "outgoing_calls",
    "missed": "missed_calls",
    "rejected": "rejected_calls",
    "connected": "connected_calls",
    "duration": "total_duration_s",
    "incoming_duration": "incoming_duration_s",
    "outgoing_duration": "outgoing_duration_s",
}
# The columns of call_rollups that hold ``_GROUP_SUMS``, in its order.
_GROUP_COLUMNS = ", ".join([*SUMMED, "last_call_at_ms", "first_call_at_ms", "last_call_end_ms"])
# A client's part of the judgements, per call (or per rollup row, with the same names).
_CLIENT_PART = f"""
    client_key,
    duration_s > 0 AS connected,
    toUInt64({UNANSWERED}) AS unanswered,
    toUInt64(type = {OUTGOING}) AS outgoing"""


def _totals(row: dict[str, Any]) -> Totals:
    return Totals(**{column.name: int(row[column.name]) for column in fields(Totals)})


async def call_summary(
    db: Database,
    f: CallFilter,
    use_rollups: bool = True,
    *,
    rollups: Rollups | None = None,
    tables: Tables = DEFAULT_TABLES,
    home_timezone: str | None = None,
) -> Totals:
    """Totals over the filtered calls, from two groupings, each its own read of the calls.

    Clients: each client's calls judged together (unique clients, never attended, not picked by
    client). Employees' local days: working seconds, and every figure that adds up. The settled
    whole days of the range come from rollups when the filter allows (``use_rollups=False`` reads
    every call, for comparisons): their clients are judged together with the same clients'
    calls read around them, and their days cut by the edges of the rollups merged with the same
    days read from the calls; whole days come summed up. ``rollups`` is the service's; without
    one, a fresh one (default settings, system clock, nothing remembered) is used.
    ``home_timezone`` is the tenant's own time zone, whose rollups are always made (see
    ``Rollups.cover``).
    """
    cover = None
    if use_rollups:
        keeper = rollups if rollups is not None else Rollups()
        cover = await keeper.cover(db, f, _unit_rollup, tables=tables, home_timezone=home_timezone)
    calls = _calls(f, skip_started=(cover.start_ms, cover.end_ms) if cover else None, tables=tables)
    clients = compose(f"SELECT {_CLIENT_PART} FROM $calls", calls=calls)
    days = compose(
        f"SELECT employee_id, {_DAY} AS day, {_GROUP_SUMS} FROM $calls GROUP BY employee_id, day",
        calls=calls,
    )
    whole_days = Sql("")
    if cover is not None:
        runs = Sql(
            "tenant_id = {tenant:String} AND run_id IN {rollup_runs:Array(UUID)}",
            {"tenant": f.tenant_id, "rollup_runs": list(cover.run_ids)},
        )
        if f.employee_ids is not None:
            runs += Sql(
                " AND employee_id IN {employee_ids:Array(String)}",
                {"employee_ids": list(f.employee_ids)},
            )
        parts: dict[str, Sql | str] = {"rollups": tables.call_rollups, "runs": runs}
        clients += compose(
            " UNION ALL SELECT client_key, connected > 0, toUInt64(missed + rejected),"
            " toUInt64(outgoing) FROM $rollups WHERE $runs AND is_client",
            **parts,
        )
        days += compose(
            f" UNION ALL SELECT employee_id, day, {_GROUP_COLUMNS}"
            " FROM $rollups WHERE $runs AND NOT is_client AND NOT whole_day",
            **parts,
        )
        whole_days = compose(
            f" UNION ALL SELECT {', '.join(f'sum({x})' for x in _DAY_FIGURES)}, sum(day_seconds)"
            " FROM $rollups WHERE $runs AND NOT is_client AND whole_day",
            **parts,
        )
    query = compose(
        f"""
        SELECT {", ".join(f"day_sums.{x} AS {name}" for x, name in _DAY_FIGURES.items())},
            never_attended_calls, not_picked_by_client_calls, unique_clients, working_seconds
        FROM (
            SELECT count() AS unique_clients,
                sumIf(unanswered, NOT connected) AS never_attended_calls,
                sumIf(outgoing, NOT connected) AS not_picked_by_client_calls
            FROM (
                SELECT max(connected) AS connected, sum(unanswered) AS unanswered,
                    sum(outgoing) AS outgoing
                FROM ($clients) GROUP BY client_key
            )
        ) AS judged
        CROSS JOIN (
            SELECT {", ".join(f"sum(day_{x}) AS {x}" for x in _DAY_FIGURES)},
                sum(seconds) AS working_seconds
            FROM (
                SELECT {", ".join(f"sum({x}) AS day_{x}" for x in _DAY_FIGURES)},
                    intDiv(max(last_call_end_ms) - min(first_call_at_ms), 1000) AS seconds
                FROM ($days) GROUP BY employee_id, day
                $whole_days
            )
        ) AS day_sums
        """,
        clients=clients,
        days=days,
        whole_days=whole_days,
    ).bind(tz=f.timezone)
    (row,) = await db.named_rows(query)
    return _totals(row)


async def employee_summary(
    db: Database,
    f: CallFilter,
    snapshot_ms: int,
    after: str | None,
    limit: int,
    *,
    tables: Tables = DEFAULT_TABLES,
) -> list[EmployeeTotals]:
    """Up to ``limit`` employees with calls, by employee_id, starting after ``after``.

    Never attended and not picked by client are judged per (employee, client). Calls received
    after ``snapshot_ms`` are left out so that every page sees the same calls.
    """
    page = Sql("")
    if after is not None:
        page = Sql("WHERE employee_id > {after:String}", {"after": after})
    query = compose(
        f"""
        SELECT employee_id, {", ".join(column.name for column in fields(Totals))},
            {_ratio("total_duration_s", "connected_calls")} AS avg_duration_s,
            {_ratio("incoming_duration_s", "connected_incoming")} AS avg_incoming_duration_s,
            {_ratio("outgoing_duration_s", "connected_outgoing")} AS avg_outgoing_duration_s,
            last_call_at_ms
        FROM (
            SELECT employee_id, {_TOTALS},
                sum(connected_incoming) AS connected_incoming,
                sum(connected_outgoing) AS connected_outgoing,
                max(last_call_at_ms) AS last_call_at_ms
            FROM (SELECT employee_id, client_key, {_SUMS}
                  FROM $calls $page GROUP BY employee_id, client_key)
            GROUP BY employee_id
            ORDER BY employee_id
            LIMIT {{limit:UInt32}}
        ) AS clients
        LEFT JOIN (
            SELECT employee_id, sum(working_seconds) AS working_seconds
            FROM (SELECT employee_id, {_DAY} AS day, {_PER_DAY}
                  FROM $calls $page GROUP BY employee_id, day)
            GROUP BY employee_id
        ) AS days USING (employee_id)
        ORDER BY employee_id
        """,
        calls=_calls(f, snapshot_ms, tables=tables),
        page=page,
    ).bind(tz=f.timezone, limit=limit)
    return [
        EmployeeTotals(
            employee_id=str(row["employee_id"]),
            totals=_totals(row),
            avg_duration_s=float(row["avg_duration_s"]),
            avg_incoming_duration_s=float(row["avg_incoming_duration_s"]),
            avg_outgoing_duration_s=float(row["avg_outgoing_duration_s"]),
            last_call_at_ms=int(row["last_call_at_ms"]),
        )
        for row in await db.named_rows(query)
    ]


# The leaders of CallAnalysis (``Analysis`` field names) and the per-employee figure of each.
_LEADERS = {
    "top_dialer": "outgoing",
    "top_answered": "connected_incoming",
    "top_caller": "calls",
    "longest_call": "longest",
    "highest_total_duration": "duration",
}


def _leader(name: str, figure: str) -> str:
    # Highest figure first, ties to the smallest employee_id; nobody when every figure is 0.
    return (
        f"if(max({figure}) = 0, '', argMin(employee_id, (-toInt64({figure}), employee_id)))"
        f" AS {name}_id, max({figure}) AS {name}_value"
    )


async def call_analysis(
    db: Database, f: CallFilter, *, tables: Tables = DEFAULT_TABLES
) -> Analysis:
    """Averages and top performers in one scan grouped by employee."""
    query = compose(
        f"""
        SELECT
            {_ratio("sum(duration)", "sum(connected)")} AS avg_duration_per_call_s,
            {_ratio("sum(duration)", "uniqExactArray(days)")} AS avg_duration_per_day_s,
            {_ratio("sum(incoming_duration)", "sum(connected_incoming)")}
                AS avg_incoming_duration_s,
            {_ratio("sum(outgoing_duration)", "sum(connected_outgoing)")}
                AS avg_outgoing_duration_s,
            {", ".join(_leader(name, figure) for name, figure in _LEADERS.items())}
        FROM (
            SELECT employee_id, {_SUMS},
                max(duration_s) AS longest,
                groupUniqArray({_DAY}) AS days
            FROM $calls GROUP BY employee_id
        )
        """,
        calls=_calls(f, tables=tables),
    ).bind(tz=f.timezone)
    (row,) = await db.named_rows(query)
    return Analysis(
        avg_duration_per_call_s=float(row["avg_duration_per_call_s"]),
        avg_duration_per_day_s=float(row["avg_duration_per_day_s"]),
        avg_incoming_duration_s=float(row["avg_incoming_duration_s"]),
        avg_outgoing_duration_s=float(row["avg_outgoing_duration_s"]),
        **{name: Leader(str(row[f"{name}_id"]), int(row[f"{name}_value"])) for name in _LEADERS},
    )


# Calls, connected calls and seconds talked of one bucket (``Slot``).
_SLOT = "count() AS calls, countIf(duration_s > 0) AS connected_calls, sum(duration_s) AS talked_s"


async def hourly(db: Database, f: CallFilter, *, tables: Tables = DEFAULT_TABLES) -> list[Slot]:
    """Calls per local hour of the day (0-23), only the hours that have calls."""
    query = compose(
        f"SELECT toHour(started_at, {{tz:String}}) AS hour, {_SLOT}"
        " FROM $calls GROUP BY hour ORDER BY hour",
        calls=_calls(f, tables=tables),
    ).bind(tz=f.timezone)
    return [
        Slot(int(r["hour"]), int(r["calls"]), int(r["connected_calls"]), int(r["talked_s"]))
        for r in await db.named_rows(query)
    ]


async def daywise(db: Database, f: CallFilter, *, tables: Tables = DEFAULT_TABLES) -> list[Slot]:
    """Calls per local date ("YYYY-MM-DD"), oldest first, only the days that have calls."""
    query = compose(
        f"SELECT toString({_DAY}) AS date, {_SLOT} FROM $calls GROUP BY date ORDER BY date",
        calls=_calls(f, tables=tables),
    ).bind(tz=f.timezone)
    return [
        Slot(str(r["date"]), int(r["calls"]), int(r["connected_calls"]), int(r["talked_s"]))
        for r in await db.named_rows(query)
    ]


async def working_hours(
    db: Database, f: CallFilter, *, tables: Tables = DEFAULT_TABLES
) -> list[WorkingDay]:
    """One row per employee and local day with calls, by employee then date."""
    query = compose(
        f"""
        SELECT employee_id, toString(day) AS date, first_call_at_ms, last_call_end_ms,
            working_seconds, calls, talk_seconds
        FROM (SELECT employee_id, {_DAY} AS day, {_PER_DAY}
              FROM $calls GROUP BY employee_id, day)
        ORDER BY employee_id, day
        """,
        calls=_calls(f, tables=tables),
    ).bind(tz=f.timezone)
    return [
        WorkingDay(
            employee_id=str(r["employee_id"]),
            date=str(r["date"]),
            first_call_at_ms=int(r["first_call_at_ms"]),
            last_call_end_ms=int(r["last_call_end_ms"]),
            working_seconds=int(r["working_seconds"]),
            calls=int(r["calls"]),
            talk_seconds=int(r["talk_seconds"]),
        )
        for r in await db.named_rows(query)
    ]
