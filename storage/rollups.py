"""Month rollups: exact aggregates of a tenant's calls in whole UTC months, reused while unchanged.

A summary over a long range spends nearly all of its time aggregating months that no longer
change. A *month run* holds what a summary needs of one partition of ``calls`` (a UTC month) for
one tenant, time zone and excluded-numbers setting: the figures per (employee, client) and per
(employee, local day), computed by ``storage/summaries.py`` from the newest version of each call
(``filtered_calls``, FINAL). A *span run* adds up the month runs of consecutive months, without
the employee: one row per client, the edge days of the span, and the working seconds of every
day that lies wholly within it. A summary with no employee filter reads a span run; one with an
employee filter reads the month runs.

A run is exact because it is only read while nothing it was computed from has changed. A month
run is stamped with the *state* of the month's partition of ``calls`` and of
``excluded_numbers``, read before computing it: the highest block number and the highest data
version of their active parts. Every insert (a new call, a re-sent one, a newer version) takes a
block number above all earlier ones, and every mutation (a lightweight DELETE too) a data
version above all earlier ones, so a state is never seen again once the data changed; merges
may change the state too, which only costs a recomputation. A span run is stamped with the
states of all its months. A report uses a run only if the state it reads now is the one the run
was stamped with, and makes a new run otherwise: missing months in one read of the calls, a
missing span from the month runs. Runs of one state made twice (two requests at once) are
equal; readers pick the same one. A run's rows are written before its entry in
``call_rollup_runs``, so a run that died half-way is never read.

Only months that ended ``SETTLE_MS`` ago or earlier are rolled up, since the current month
changes all the time, and only for filters a run can answer: any time zone and employees, but no
call types, durations or receive-time ranges.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.database import Database
from storage.filters import CallFilter

DAY_MS = 86_400_000
# The month that just ended keeps changing for a while (late syncs, notes added).
SETTLE_MS = 3 * DAY_MS
# Runs are read for this long; call_rollup_runs expires a day later and call_rollups two.
_RUN_LIFETIME_DAYS = 30

# The columns of call_rollups that a month query fills, besides ``month`` (toYYYYMM of the UTC
# month the row belongs to), in this order. Figures add up across runs, except the first and
# latest instants, which take the minimum and the maximum.
SUMMED = (
    "calls",
    "incoming",
    "outgoing",
    "missed",
    "rejected",
    "connected",
    "connected_incoming",
    "connected_outgoing",
    "duration",
    "incoming_duration",
    "outgoing_duration",
)
ROLLUP_COLUMNS = (
    "is_client",
    "whole_day",
    "employee_id",
    "client_key",
    "day",
    *SUMMED,
    "first_call_at_ms",
    "last_call_at_ms",
    "last_call_end_ms",
    "day_seconds",
)

# The rows of consecutive months, from a filter spanning them: (SELECT of ``month`` and
# ROLLUP_COLUMNS, its parameters). ``whole_day`` may be 0 for a day that lies within its month
# (that costs a row) but never 1 for a day that reaches into another month.
MonthQuery = Callable[[CallFilter], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Cover:
    """Rollup runs that stand in for the filter's calls that started in [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class _Month:
    yyyymm: int
    start_ms: int
    end_ms: int


def _month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def full_months(from_ms: int, to_ms: int) -> list[_Month]:
    """The UTC months that lie wholly within [from_ms, to_ms), oldest first."""
    start = datetime.fromtimestamp(from_ms / 1000, UTC)
    year, month = start.year, start.month
    if _month_start(year, month) < from_ms:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    months: list[_Month] = []
    while True:
        nxt = (year + 1, 1) if month == 12 else (year, month + 1)
        begin, end = _month_start(year, month), _month_start(*nxt)
        if end > to_ms:
            return months
        months.append(_Month(year * 100 + month, begin, end))
        year, month = nxt


def answerable(f: CallFilter) -> bool:
    """Whether rollups can answer this filter (they hold every type and duration, by start)."""
    return (
        not f.sync_time and not f.call_types and f.min_duration_s == 0 and f.max_duration_s is None
    )


async def _states(db: Database, months: list[_Month], include_excluded: bool) -> dict[int, str]:
    """The state of each month's partition of calls (and of the excluded numbers), by month."""
    rows = await db.query(
        "SELECT table, partition_id,"
        " concat(toString(max(max_block_number)), '.', toString(max(data_version)))"
        " FROM system.parts"
        " WHERE database = currentDatabase() AND active AND ("
        " (table = 'calls' AND partition_id IN {months:Array(String)})"
        " OR table = 'excluded_numbers')"
        " GROUP BY table, partition_id",
        {"months": [str(m.yyyymm) for m in months]},
    )
    calls = {int(p): str(s) for t, p, s in rows if t == "calls"}
    excluded = ",".join(sorted(str(s) for t, _, s in rows if t != "calls"))
    if include_excluded:
        excluded = "all"
    # A month without parts has no calls: its (empty) run is stamped "-".
    return {m.yyyymm: f"{calls.get(m.yyyymm, '-')}|{excluded}" for m in months}


async def cover(db: Database, f: CallFilter, month_rows: MonthQuery, now_ms: int) -> Cover | None:
    """Rollup runs for the settled whole months of ``f``'s range, making the missing ones.

    None when ``f`` cannot use rollups or its range holds no settled whole month.
    """
    if not answerable(f):
        return None
    months = full_months(f.from_ms, min(f.to_ms, now_ms - SETTLE_MS))
    if not months:
        return None
    states = await _states(db, months, f.include_excluded)
    span_state = ",".join(f"{m}:{s}" for m, s in states.items())
    first, last = months[0].yyyymm, months[-1].yyyymm
    wanted = [("month", m, m, s) for m, s in states.items()]
    if f.employee_ids is None:
        wanted.append(("span", first, last, span_state))
    found = await db.query(
        "SELECT kind, month, last_month, toString(min(run_id)) FROM call_rollup_runs"
        " WHERE tenant_id = {tenant:String} AND timezone = {tz:String}"
        " AND (kind, month, last_month, state)"
        " IN {wanted:Array(Tuple(String, UInt32, UInt32, String))}"
        f" AND created_at > now() - INTERVAL {_RUN_LIFETIME_DAYS} DAY"
        " GROUP BY kind, month, last_month",
        {"tenant": f.tenant_id, "tz": f.timezone, "wanted": wanted},
    )
    runs = {(str(kind), int(month)): str(run_id) for kind, month, _, run_id in found}
    span = runs.get(("span", first))
    if span is not None:
        return Cover(months[0].start_ms, months[-1].end_ms, (span,))
    missing = [m for m in months if ("month", m.yyyymm) not in runs]
    # Consecutive missing months are made in one read of the calls.
    while missing:
        stretch = [missing.pop(0)]
        while missing and missing[0].start_ms == stretch[-1].end_ms:
            stretch.append(missing.pop(0))
        made = await _make_months(db, f, stretch, states, month_rows)
        runs.update((("month", m), run_id) for m, run_id in made.items())
    month_runs = tuple(runs[("month", m.yyyymm)] for m in months)
    if f.employee_ids is not None:
        return Cover(months[0].start_ms, months[-1].end_ms, month_runs)
    span = await _make_span(db, f, months, span_state, month_runs)
    return Cover(months[0].start_ms, months[-1].end_ms, (span,))


def _row(expressions: list[str]) -> str:
    # One value per column of ROLLUP_COLUMNS, each under a name of its own.
    return ", ".join(f"{e} AS r{i}" for i, e in enumerate(expressions))


async def _register(
    db: Database, f: CallFilter, kind: str, first: int, last: int, state: str, run_id: str
) -> None:
    await db.command(
        "INSERT INTO call_rollup_runs"
        " (tenant_id, kind, month, last_month, timezone, state, run_id, created_at)"
        " SELECT {tenant:String}, {kind:String}, {first:UInt32}, {last:UInt32}, {tz:String},"
        " {state:String}, {run:UUID}, now()",
        {
            "tenant": f.tenant_id,
            "kind": kind,
            "first": first,
            "last": last,
            "tz": f.timezone,
            "state": state,
            "run": run_id,
        },
    )


async def _make_months(
    db: Database,
    f: CallFilter,
    months: list[_Month],
    states: dict[int, str],
    month_rows: MonthQuery,
) -> dict[int, str]:
    """Makes and registers the runs of consecutive months in one read; run id by month."""
    run_ids = {m.yyyymm: str(uuid.uuid4()) for m in months}
    # Every call of the tenant in those months; excluded numbers as the filter asks.
    span_filter = CallFilter(
        tenant_id=f.tenant_id,
        from_ms=months[0].start_ms,
        to_ms=months[-1].end_ms,
        timezone=f.timezone,
        include_excluded=f.include_excluded,
    )
    select, params = month_rows(span_filter)
    columns = ", ".join(ROLLUP_COLUMNS)
    await db.command(
        f"INSERT INTO call_rollups (tenant_id, run_id, {columns}, created_at)"
        " SELECT {rollup_tenant:String},"
        " {rollup_ids:Array(UUID)}[indexOf({rollup_months:Array(UInt32)}, month)],"
        f" {columns}, now() FROM ({select})",
        {
            **params,
            "rollup_tenant": f.tenant_id,
            "rollup_months": list(run_ids),
            "rollup_ids": list(run_ids.values()),
        },
    )
    for m in months:
        await _register(db, f, "month", m.yyyymm, m.yyyymm, states[m.yyyymm], run_ids[m.yyyymm])
    return run_ids


async def _make_span(
    db: Database, f: CallFilter, months: list[_Month], state: str, month_runs: tuple[str, ...]
) -> str:
    """Adds up month runs into a span run (no employee) and registers it; its run id.

    Clients add up across employees and months. A day cut by the edge between two of the months
    is whole within the span: its working seconds are final. Days cut by the span's own edges
    stay rows, to be merged with the calls read around the span.
    """
    run_id = str(uuid.uuid4())
    sums = [f"sum({x})" for x in SUMMED]
    runs = (
        "tenant_id = {rollup_tenant:String} AND run_id IN {rollup_months:Array(UUID)}"
        " AND is_client = {client:UInt8}"
    )
    edges = (
        "toDate(fromUnixTimestamp64Milli({span_from_ms:Int64}, 'UTC'), {tz:String}),"
        " toDate(fromUnixTimestamp64Milli({span_to_ms:Int64} - 1, 'UTC'), {tz:String})"
    )
    head = (
        f"INSERT INTO call_rollups (tenant_id, run_id, {', '.join(ROLLUP_COLUMNS)}, created_at)"
        " SELECT {rollup_tenant:String}, {rollup_span:UUID}, *, now() FROM (SELECT "
    )
    whole_days = (
        "SELECT sum(day_seconds) AS seconds"
        f" FROM call_rollups WHERE {runs} AND whole_day"
        " UNION ALL"
        " SELECT intDiv(max(last_call_end_ms) - min(first_call_at_ms), 1000)"
        f" FROM call_rollups WHERE {runs} AND NOT whole_day AND day NOT IN ({edges})"
        " GROUP BY employee_id, day"
    )
    # One statement per kind of row (each binds its own is_client); columns are named apart
    # from the table's, so that no name in a WHERE means an output column.
    statements = [
        _row(["1", "0", "''", "client_key", "toDate(0)", *sums, "min(first_call_at_ms)",
              "max(last_call_at_ms)", "max(last_call_end_ms)", "toInt64(0)"])
        + f" FROM call_rollups WHERE {runs} GROUP BY client_key",
        _row(["0", "0", "employee_id", "0", "day", *sums, "min(first_call_at_ms)",
              "max(last_call_at_ms)", "max(last_call_end_ms)", "toInt64(0)"])
        + f" FROM call_rollups WHERE {runs} AND NOT whole_day AND day IN ({edges})"
        " GROUP BY employee_id, day",
        _row(["0", "1", "''", "0", "toDate(0)", *("0" for _ in SUMMED), "toInt64(0)",
              "toInt64(0)", "toInt64(0)", "toInt64(sum(seconds))"])
        + f" FROM ({whole_days})",
    ]  # fmt: skip
    params = {
        "rollup_tenant": f.tenant_id,
        "rollup_span": run_id,
        "rollup_months": list(month_runs),
        "client": 0,
        "span_from_ms": months[0].start_ms,
        "span_to_ms": months[-1].end_ms,
        "tz": f.timezone,
    }
    for client, statement in zip((1, 0, 0), statements, strict=True):
        await db.command(head + statement + ")", {**params, "client": client})
    await _register(db, f, "span", months[0].yyyymm, months[-1].yyyymm, state, run_id)
    return run_id
