"""Rollups: exact aggregates of whole UTC months and days of calls, reused while unchanged.

A summary over a long range spends nearly all of its time aggregating calls that no longer
change. A *unit run* holds what a summary needs of one unit of time for one tenant, time zone and
excluded-numbers setting: the figures per (employee, client) and per (employee, local day),
computed by ``storage/summaries.py`` from the newest version of each call (``filtered_calls``,
FINAL). A unit is a whole UTC month (a partition of ``calls``, kind "month") or a whole UTC day
(kind "day"): the days of a range before its first whole month and after its last one. A *span
run* adds up the unit runs of consecutive units, without the employee: one row per client, the
edge days of the span, and one row with the figures and working seconds of every day that lies
wholly within it. A summary with no employee filter reads a span run; one with an employee
filter reads the unit runs.

A run is exact because it is only read while nothing it was computed from has changed. A run is
stamped with the *state* of its unit, read before computing it, and of ``excluded_numbers``:

- a month: the highest block number and the highest data version of the active parts of its
  partition. Every insert (a new call, a re-sent one, a newer version) takes a block number above
  all earlier ones, and every mutation (a lightweight DELETE too) a data version above all
  earlier ones, so a state is never seen again once the data changed; merges may change the
  state too, which only costs a recomputation.
- a day: the highest ``_block_number`` among the tenant's rows in it (every row keeps the block
  number of the insert that wrote it, see migration 0004; each part is read for it once, see
  ``_PartDays``) and the newest mutation of ``calls``
  (while a mutation is under way, a read may see it half done: nothing is rolled up then).
  An insert that changes what FINAL gives for the day leaves a row with a block number above all
  earlier ones (until an even newer one replaces it); inserts into other days or by other
  tenants, and merges, leave it alone, so a busy current month does not invalidate its settled
  days.
- ``excluded_numbers``: the block numbers and data versions of its parts, as for a month.

A span run is stamped with the states of all its units. A report uses a run only if the state it
reads now is the one the run was stamped with, and makes a new run otherwise: consecutive missing
units of one kind in one read of the calls, a missing span from the unit runs. Runs of one state
made twice (two requests at once) are equal; readers pick the same one. A run's rows are written
before its entry in ``call_rollup_runs``, so a run that died half-way is never read.

Only days that ended ``day_settle_ms`` ago and months that ended ``month_settle_ms`` ago are
rolled up, since the latest days change all the time, and only for filters a run can answer: any
time zone and employees, but no call types, durations, receive-time ranges, hidden numbers left
out or channels (methods, modes): those narrow the calls like call types do, and keying runs by
them would multiply a tenant's sets for filters that are rare next to the plain summary. A unit
that keeps changing anyway (a device backfilling weeks of calls) has its runs made at most every
``remake_interval_s`` per service; in between, summaries read its calls. Month runs are read for
30 days, day runs and spans for two (``RollupSettings``), and dropped a day later with their
partition of ``call_rollups``, so superseded runs cost neither a mutation nor lasting space.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.storage.database import Database
from callsight.storage.filters import CallFilter
from callsight.storage.sql import Sql, compose
from callsight.storage.tables import DEFAULT_TABLES, Tables

K = TypeVar("K")
V = TypeVar("V")

DAY_MS = 86_400_000


@dataclass(frozen=True)
class RollupSettings:
    """When units are rolled up, how often a changing one is made again, how long runs are read.

    The defaults are the production settings.
    """

    # The latest days keep changing for a while (late syncs, notes added): a day is rolled up
    # once it ended a day ago, a month (whose run costs a read of the whole month) three days.
    day_settle_ms: int = DAY_MS
    month_settle_ms: int = 3 * DAY_MS
    # A unit's run is made again at most this often by one service (see ``Rollups.cover``).
    remake_interval_s: float = 600.0
    # Runs are read for this many days after they were made, by kind: a month run costs a read
    # of the whole month to make and rarely changes; day runs and spans are cheap and superseded
    # often. Their entries and rows expire a day later (rows by whole partitions of the day
    # they were made, so superseded runs go without a mutation).
    month_read_days: int = 30
    day_read_days: int = 2
    span_read_days: int = 2
    # Bounds of the service's memory: parts of calls read, and units made.
    max_part_entries: int = 20_000
    max_made_entries: int = 100_000
    # A tenant's runs come in sets, one per (time zone, include_excluded) asked for, each about
    # as large as its calls (a year of 2M calls: 2.2M rows, ~92 MB). Besides the sets of the
    # tenant's own time zone, at most this many are made; a summary in any other set reads its
    # calls (see ``Rollups.cover``), so a tenant's rollups hold at most 2 + max_sets sets.
    max_sets: int = 2

    def read_days(self) -> dict[str, int]:
        """Days a run is read, by kind ("month", "day", "span")."""
        return {
            "month": self.month_read_days,
            "day": self.day_read_days,
            "span": self.span_read_days,
        }

    def keep_days(self) -> dict[str, int]:
        """Days an entry holds its set's place, by kind: as long as its rows are kept.

        A claim ("set", no rows) holds it for a day: its runs, once made, hold it on.
        """
        return {**{kind: days + 1 for kind, days in self.read_days().items()}, "set": 1}


DEFAULT_SETTINGS = RollupSettings()

# The columns of call_rollups that a unit query fills, besides ``unit_start_ms`` (the start of
# the unit the row belongs to), in this order. Figures add up across runs, except the first and
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

# The rows of units, from a filter spanning them: a SELECT of ``unit_start_ms`` and
# ROLLUP_COLUMNS over the given tables. With ``by_month`` each UTC month of the filter's range is
# a unit; without, the range is one unit. ``whole_day`` may be 0 for a day that lies within its
# unit (that costs a row) but never 1 for a day that reaches out of it.
UnitQuery = Callable[[CallFilter, bool, Tables], Sql]


@dataclass(frozen=True)
class Cover:
    """Rollup runs that stand in for the filter's calls that started in [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class Unit:
    """A whole UTC month or a whole UTC day."""

    start_ms: int
    end_ms: int
    is_month: bool

    @property
    def code(self) -> int:
        """yyyymm of a month, yyyymmdd of a day."""
        return _yyyymmdd(self.start_ms) // (100 if self.is_month else 1)

    @property
    def kind(self) -> str:
        return "month" if self.is_month else "day"


def _yyyymmdd(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, UTC)
    return day.year * 10_000 + day.month * 100 + day.day


def _month_end(ms: int) -> int:
    # The end of the UTC month holding ``ms``.
    day = datetime.fromtimestamp(ms / 1000, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def units(
    from_ms: int, to_ms: int, now_ms: int, settings: RollupSettings = DEFAULT_SETTINGS
) -> list[Unit]:
    """The settled whole UTC days within [from_ms, to_ms) as units, oldest first, without gaps.

    A whole month that ended ``month_settle_ms`` ago is one unit; every other day that ended
    ``day_settle_ms`` ago is a unit of its own.
    """
    begin = -(-from_ms // DAY_MS) * DAY_MS
    last_day = min(to_ms, now_ms - settings.day_settle_ms) // DAY_MS * DAY_MS
    out: list[Unit] = []
    while begin < last_day:
        month_end = _month_end(begin)
        settled = min(to_ms, now_ms - settings.month_settle_ms)
        if _yyyymmdd(begin) % 100 == 1 and month_end <= settled:
            out.append(Unit(begin, month_end, is_month=True))
            begin = month_end
        else:
            out.append(Unit(begin, begin + DAY_MS, is_month=False))
            begin += DAY_MS
    return out


def answerable(f: CallFilter) -> bool:
    """Whether rollups can answer this filter (they hold every call of every type, duration,
    presentation and channel, by start)."""
    return (
        not f.sync_time
        and not f.call_types
        and f.min_duration_s == 0
        and f.max_duration_s is None
        and not f.exclude_private
        and not f.call_methods
        and not f.call_modes
    )


def _remember(entries: OrderedDict[K, V], key: K, value: V, max_entries: int) -> None:
    # Sets an entry of a bounded memo, forgetting the ones set longest ago beyond the bound.
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > max_entries:
        entries.popitem(last=False)


class _PartDays:
    """The highest block number per UTC day among one tenant's rows of a part of ``calls``.

    A part never changes once written (inserts, merges and mutations write new parts), so each
    part is read once per tenant and remembered, by its path (which names the table by its UUID)
    and name; a day's state is the highest number over the active parts. Bounded: the parts read
    longest ago are forgotten first.
    """

    def __init__(self, max_entries: int = DEFAULT_SETTINGS.max_part_entries) -> None:
        self._max_entries = max_entries
        self._days: OrderedDict[tuple[str, str], dict[int, int]] = OrderedDict()

    async def day_maxima(
        self,
        db: Database,
        tenant_id: str,
        parts: list[tuple[str, str]],
        tables: Tables = DEFAULT_TABLES,
    ) -> dict[int, int]:
        """The highest block number per yyyymmdd over ``parts`` ((name, path) of active parts).

        Parts not remembered are read, and so is every part that replaced one of ``parts``
        since they were listed: whatever a read sees is either remembered or read, so a day's
        number is never below what the day holds (above it only costs a recomputation).
        """
        known = {name: self._days[(tenant_id, path)] for name, path in parts
                 if (tenant_id, path) in self._days}  # fmt: skip
        partitions = sorted({name.split("_", 1)[0] for name, _ in parts})
        read: dict[str, dict[int, int]] = {name: {} for name, _ in parts if name not in known}
        if read:
            rows = await db.named_rows(
                Sql(
                    "SELECT _part AS part, toYYYYMMDD(started_at, 'UTC') AS day,"
                    f" max(_block_number) AS block FROM {tables.calls}"
                    " WHERE tenant_id = {tenant:String}"
                    " AND _partition_id IN {partitions:Array(String)}"
                    " AND _part NOT IN {known:Array(String)}"
                    " GROUP BY part, day",
                    {"tenant": tenant_id, "partitions": partitions, "known": list(known)},
                )
            )
            for row in rows:
                read.setdefault(str(row["part"]), {})[int(row["day"])] = int(row["block"])
        paths = dict(parts)
        for name, days in read.items():
            if name in paths:
                _remember(self._days, (tenant_id, paths[name]), days, self._max_entries)
        maxima: dict[int, int] = {}
        for days in (*known.values(), *read.values()):
            for day, block in days.items():
                maxima[day] = max(block, maxima.get(day, 0))
        return maxima


class _Made:
    """When this service last made a run of each unit, to make a changing unit's runs rarely.

    A unit that keeps changing (a device backfilling weeks of calls, late syncs) would otherwise
    be read and written again by every summary, and its superseded runs kept until they expire.
    """

    def __init__(self, interval_s: float, clock: Clock, max_entries: int) -> None:
        self._interval_ms = interval_s * 1000
        self._clock = clock
        self._max_entries = max_entries
        self._made: OrderedDict[tuple[str, str, str, bool, str, int], int] = OrderedDict()

    @staticmethod
    def _key(f: CallFilter, u: Unit, tables: Tables) -> tuple[str, str, str, bool, str, int]:
        return (tables.calls, f.tenant_id, f.timezone, f.include_excluded, u.kind, u.code)

    def recent(self, f: CallFilter, u: Unit, tables: Tables) -> bool:
        made = self._made.get(self._key(f, u, tables))
        return made is not None and self._clock.now_ms() - made < self._interval_ms

    def note(self, f: CallFilter, u: Unit, tables: Tables) -> None:
        _remember(self._made, self._key(f, u, tables), self._clock.now_ms(), self._max_entries)


_RunKey = tuple[str, int, int, str]  # kind, first unit, last unit, state


class Rollups:
    """The rollups of one service: its settings, its clock and what it remembers between calls.

    Made once by the service and handed to every summary that reads rollups; a summary made
    without one (a benchmark, a script) gets a fresh one that remembers nothing.
    """

    def __init__(
        self, settings: RollupSettings = DEFAULT_SETTINGS, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._part_days = _PartDays(settings.max_part_entries)
        self._made = _Made(settings.remake_interval_s, clock, settings.max_made_entries)

    async def cover(
        self,
        db: Database,
        f: CallFilter,
        unit_rows: UnitQuery,
        *,
        tables: Tables = DEFAULT_TABLES,
        home_timezone: str | None = None,
    ) -> Cover | None:
        """Rollup runs for the settled whole days of ``f``'s range, making the missing ones.

        None when ``f`` cannot use rollups or its range holds no settled whole day. A unit that
        this service made a run of less than ``remake_interval_s`` ago is not made again: the
        cover ends before it, and the calls from there on are read as they are. Runs are only
        made for a set (``f``'s time zone and include_excluded) that ``_admitted``: the tenant's
        own time zone (``home_timezone``; None for none) or one of the first ``max_sets`` others;
        otherwise None, unless every run needed exists already.
        """
        if not answerable(f):
            return None
        found = units(f.from_ms, f.to_ms, self._clock.now_ms(), self.settings)
        if not found:
            return None
        states, known = await asyncio.gather(
            self._states(db, f, found, tables), self._find(db, f, found, tables)
        )
        if states is None:
            return None
        runs = {
            u: known.get((u.kind, u.code, u.code, s)) for u, s in zip(found, states, strict=True)
        }
        remade = (
            i for i, u in enumerate(found) if runs[u] is None and self._made.recent(f, u, tables)
        )
        churning = next(remade, None)
        if churning is not None:
            found, states = found[:churning], states[:churning]
            if not found:
                return None
        first, last = _yyyymmdd(found[0].start_ms), _yyyymmdd(found[-1].end_ms - DAY_MS)
        span_state = ",".join(f"{u.code}:{s}" for u, s in zip(found, states, strict=True))
        if f.employee_ids is None:
            span = known.get(("span", first, last, span_state))
            if span is not None:
                return Cover(found[0].start_ms, found[-1].end_ms, (span,))
        missing = [(u, s) for u, s in zip(found, states, strict=True) if runs[u] is None]
        # Something is made from here on (units, or at least a span): only for an admitted set.
        if not await self._admitted(db, f, home_timezone, tables):
            return None
        # Consecutive missing units of one kind are made in one read of the calls.
        while missing:
            batch = [missing.pop(0)]
            while missing and missing[0][0].is_month == batch[0][0].is_month:
                if missing[0][0].start_ms != batch[-1][0].end_ms:
                    break
                batch.append(missing.pop(0))
            runs.update(await self._make_units(db, f, batch, unit_rows, tables))
            for u, _ in batch:
                self._made.note(f, u, tables)
        unit_runs = tuple(str(runs[u]) for u in found)
        if f.employee_ids is not None:
            return Cover(found[0].start_ms, found[-1].end_ms, unit_runs)
        span = await self._make_span(db, f, found, span_state, unit_runs, tables)
        return Cover(found[0].start_ms, found[-1].end_ms, (span,))

    async def _admitted(
        self, db: Database, f: CallFilter, home_timezone: str | None, tables: Tables
    ) -> bool:
        """Whether runs may be made for ``f``'s set (its time zone and include_excluded).

        A tenant's sets other than its own time zone's are ranked by their oldest entry that
        still holds rows, and only the first ``max_sets`` are made, so that however many time
        zones are asked for, at most that many sets besides the home zone's take space. A set
        not ranked yet claims a place (an entry of kind "set", no rows) if one is free, and
        reads the ranking again: of two services claiming the last place at once, the one that
        wrote second sees the other ahead of it (block numbers, migration 0008) and gives way.
        """
        if f.timezone == home_timezone:
            return True
        me = (f.timezone, f.include_excluded)
        ranked = await self._sets(db, f.tenant_id, home_timezone, tables)
        if me not in ranked:
            if len(ranked) >= self.settings.max_sets:
                return False
            claim = "|all" if f.include_excluded else "|"
            await _register(db, f, [("set", 0, 0, claim, str(uuid.uuid4()))], tables)
            ranked = await self._sets(db, f.tenant_id, home_timezone, tables)
        return me in ranked[: self.settings.max_sets]

    async def _sets(
        self, db: Database, tenant_id: str, home_timezone: str | None, tables: Tables
    ) -> list[tuple[str, bool]]:
        """The tenant's sets other than the home zone's that hold rows, oldest entry first."""
        keep_days = self.settings.keep_days()
        rows = await db.named_rows(
            Sql(
                "SELECT timezone, endsWith(state, '|all') AS everything,"
                " min(_block_number) AS first"
                f" FROM {tables.call_rollup_runs}"
                " WHERE tenant_id = {tenant:String} AND timezone != {home:String}"
                " AND created_at > now() - toIntervalDay("
                " {keep_days:Array(UInt32)}[indexOf({keep_kinds:Array(String)}, kind)])"
                " GROUP BY timezone, everything ORDER BY first, timezone, everything",
                {
                    "tenant": tenant_id,
                    "home": home_timezone or "",
                    "keep_kinds": list(keep_days),
                    "keep_days": list(keep_days.values()),
                },
            )
        )
        return [(str(r["timezone"]), bool(r["everything"])) for r in rows]

    async def _states(
        self, db: Database, f: CallFilter, found: list[Unit], tables: Tables
    ) -> list[str] | None:
        """The state of each unit (see the module's doc); None while one can't tell."""
        day_partitions = sorted({str(u.code // 100) for u in found if not u.is_month})
        rows = await db.named_rows(
            Sql(
                "SELECT table AS what, partition_id AS unit,"
                " concat(toString(max(max_block_number)), '.', toString(max(data_version)))"
                " AS stamp"
                " FROM system.parts WHERE database = currentDatabase() AND active AND ("
                " (table = {calls_table:String} AND partition_id IN {months:Array(String)})"
                " OR table = {excluded_table:String})"
                " GROUP BY table, partition_id"
                " UNION ALL"
                " SELECT 'mutation', toString(countIf(NOT is_done)),"
                " toString(max(arrayMax(block_numbers.number)))"
                " FROM system.mutations WHERE database = currentDatabase()"
                " AND table = {calls_table:String}"
                " UNION ALL"
                " SELECT 'part', name, path FROM system.parts"
                " WHERE database = currentDatabase() AND table = {calls_table:String} AND active"
                " AND partition_id IN {day_partitions:Array(String)}",
                {
                    "calls_table": tables.calls,
                    "excluded_table": tables.excluded_numbers,
                    "months": [str(u.code) for u in found if u.is_month],
                    "day_partitions": day_partitions,
                },
            )
        )
        states = {(str(r["what"]), str(r["unit"])): str(r["stamp"]) for r in rows}
        if ("mutation", "0") not in states:
            # A mutation of calls (an erasure) is under way: what a read sees may still change
            # without a new state. Nothing is rolled up until it is done.
            return None
        if f.include_excluded:
            excluded = "all"
        else:
            excluded = ",".join(
                sorted(s for (w, _), s in states.items() if w == tables.excluded_numbers)
            )
        mutation = states[("mutation", "0")]
        days: dict[int, int] = {}
        if day_partitions:
            parts = [(str(r["unit"]), str(r["stamp"])) for r in rows if r["what"] == "part"]
            days = await self._part_days.day_maxima(db, f.tenant_id, parts, tables)
        # Runs of a copy of the calls (a benchmark's) never stand in for the calls' own.
        source = "" if tables.calls == DEFAULT_TABLES.calls else f"{tables.calls}:"
        # A unit without rows has no calls: its (empty) run is stamped "-".
        return [
            source
            + (
                f"{states.get((tables.calls, str(u.code)), '-')}|{excluded}"
                if u.is_month
                else f"{days.get(u.code, '-')}.m{mutation}|{excluded}"
            )
            for u in found
        ]

    async def _find(
        self, db: Database, f: CallFilter, found: list[Unit], tables: Tables
    ) -> dict[_RunKey, str]:
        """The runs of these units, and of spans starting with the first, whatever their state.

        Read alongside the states, so it cannot ask for them; the caller picks.
        """
        read_days = self.settings.read_days()
        rows = await db.named_rows(
            Sql(
                "SELECT kind, first_unit, last_unit, state, toString(min(run_id)) AS run"
                f" FROM {tables.call_rollup_runs}"
                " WHERE tenant_id = {tenant:String} AND timezone = {tz:String}"
                " AND (kind, first_unit) IN {wanted:Array(Tuple(String, UInt32))}"
                " AND created_at > now() - toIntervalDay("
                " {read_days:Array(UInt32)}[indexOf({read_kinds:Array(String)}, kind)])"
                " GROUP BY kind, first_unit, last_unit, state",
                {
                    "tenant": f.tenant_id,
                    "tz": f.timezone,
                    "wanted": [(u.kind, u.code) for u in found]
                    + [("span", _yyyymmdd(found[0].start_ms))],
                    "read_kinds": list(read_days),
                    "read_days": list(read_days.values()),
                },
            )
        )
        return {
            (str(r["kind"]), int(r["first_unit"]), int(r["last_unit"]), str(r["state"])): str(
                r["run"]
            )
            for r in rows
        }

    async def _make_units(
        self,
        db: Database,
        f: CallFilter,
        batch: list[tuple[Unit, str]],
        unit_rows: UnitQuery,
        tables: Tables,
    ) -> dict[Unit, str]:
        """Makes and registers the runs of consecutive units of one kind in one read; by unit."""
        made = {u: str(uuid.uuid4()) for u, _ in batch}
        # Every call of the tenant in those units; excluded numbers as the filter asks.
        unit_filter = CallFilter(
            tenant_id=f.tenant_id,
            from_ms=batch[0][0].start_ms,
            to_ms=batch[-1][0].end_ms,
            timezone=f.timezone,
            include_excluded=f.include_excluded,
        )
        columns = ", ".join(ROLLUP_COLUMNS)
        statement = compose(
            f"INSERT INTO {tables.call_rollups} (tenant_id, run_id, {columns}, created_at,"
            " keep_days) SELECT {rollup_tenant:String},"
            " {rollup_ids:Array(UUID)}[indexOf({rollup_starts:Array(Int64)}, unit_start_ms)],"
            f" {columns}, now(), {{rollup_keep_days:UInt16}} FROM ($select)",
            select=unit_rows(unit_filter, batch[0][0].is_month, tables),
        ).bind(
            rollup_keep_days=self.settings.read_days()[batch[0][0].kind] + 1,
            rollup_tenant=f.tenant_id,
            rollup_starts=[u.start_ms for u in made],
            rollup_ids=list(made.values()),
        )
        await db.command(statement)
        await _register(
            db, f, [(u.kind, u.code, u.code, state, made[u]) for u, state in batch], tables
        )
        return made

    async def _make_span(
        self,
        db: Database,
        f: CallFilter,
        found: list[Unit],
        state: str,
        unit_runs: tuple[str, ...],
        tables: Tables,
    ) -> str:
        """Adds up unit runs into a span run (no employee) and registers it; its run id.

        Clients add up across employees and units. A day cut by the edge between two of the
        units is whole within the span: its working seconds are final. Every day whole within
        the span adds its figures and working seconds to one row; days cut by the span's own
        edges stay rows, to be merged with the calls read around the span.
        """
        run_id = str(uuid.uuid4())
        rollups = tables.call_rollups
        sums = [f"sum({x})" for x in SUMMED]
        runs = (
            "tenant_id = {rollup_tenant:String} AND run_id IN {rollup_runs:Array(UUID)}"
            " AND is_client = {client:UInt8}"
        )
        edges = (
            "toDate(fromUnixTimestamp64Milli({span_from_ms:Int64}, 'UTC'), {tz:String}),"
            " toDate(fromUnixTimestamp64Milli({span_to_ms:Int64} - 1, 'UTC'), {tz:String})"
        )
        head = (
            f"INSERT INTO {rollups}"
            f" (tenant_id, run_id, {', '.join(ROLLUP_COLUMNS)}, created_at, keep_days)"
            " SELECT {rollup_tenant:String}, {rollup_span:UUID}, *, now(),"
            " {rollup_keep_days:UInt16} FROM (SELECT "
        )
        whole_days = (
            f"SELECT {', '.join(f'sum({x}) AS s_{x}' for x in SUMMED)}, sum(day_seconds) AS seconds"
            f" FROM {rollups} WHERE {runs} AND whole_day"
            " UNION ALL"
            f" SELECT {', '.join(f'sum({x})' for x in SUMMED)},"
            " intDiv(max(last_call_end_ms) - min(first_call_at_ms), 1000)"
            f" FROM {rollups} WHERE {runs} AND NOT whole_day AND day NOT IN ({edges})"
            " GROUP BY employee_id, day"
        )
        # One statement per kind of row (each binds its own is_client); columns are named apart
        # from the table's, so that no name in a WHERE means an output column.
        statements = [
            _row(["1", "0", "''", "client_key", "toDate(0)", *sums, "min(first_call_at_ms)",
                  "max(last_call_at_ms)", "max(last_call_end_ms)", "toInt64(0)"])
            + f" FROM {rollups} WHERE {runs} GROUP BY client_key",
            _row(["0", "0", "employee_id", "0", "day", *sums, "min(first_call_at_ms)",
                  "max(last_call_at_ms)", "max(last_call_end_ms)", "toInt64(0)"])
            + f" FROM {rollups} WHERE {runs} AND NOT whole_day AND day IN ({edges})"
            " GROUP BY employee_id, day",
            _row(["0", "1", "''", "0", "toDate(0)", *(f"sum(s_{x})" for x in SUMMED),
                  "toInt64(0)", "toInt64(0)", "toInt64(0)", "toInt64(sum(seconds))"])
            + f" FROM ({whole_days})",
        ]  # fmt: skip
        params = {
            "rollup_tenant": f.tenant_id,
            "rollup_span": run_id,
            "rollup_keep_days": self.settings.span_read_days + 1,
            "rollup_runs": list(unit_runs),
            "span_from_ms": found[0].start_ms,
            "span_to_ms": found[-1].end_ms,
            "tz": f.timezone,
        }
        for client, statement in zip((1, 0, 0), statements, strict=True):
            await db.command(Sql(head + statement + ")", {**params, "client": client}))
        first, last = _yyyymmdd(found[0].start_ms), _yyyymmdd(found[-1].end_ms - DAY_MS)
        await _register(db, f, [("span", first, last, state, run_id)], tables)
        return run_id


def _row(expressions: list[str]) -> str:
    # One value per column of ROLLUP_COLUMNS, each under a name of its own.
    return ", ".join(f"{e} AS r{i}" for i, e in enumerate(expressions))


async def _register(
    db: Database, f: CallFilter, runs: list[tuple[str, int, int, str, str]], tables: Tables
) -> None:
    # Lists runs whose rows are all written: (kind, first unit, last unit, state, run id) each.
    # The wall clock, not the service's: runs are read and expire by ClickHouse's now().
    created_at = datetime.now(UTC).replace(microsecond=0)
    await db.insert_rows(
        tables.call_rollup_runs,
        [
            (f.tenant_id, kind, first, last, f.timezone, state, uuid.UUID(run_id), created_at)
            for kind, first, last, state, run_id in runs
        ],
        (
            "tenant_id",
            "kind",
            "first_unit",
            "last_unit",
            "timezone",
            "state",
            "run_id",
            "created_at",
        ),
    )
