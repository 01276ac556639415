"""Live CallSummary totals for WatchSummary, kept up to date from acked batches.

Watchers with equal filters share one ``Counters``: the totals and per-employee totals of the
filter, loaded once by a query (``storage.summaries``) and then kept by the ingest path. Ingest
hands every acked batch of calls over with one call (``calls_acked``: a reference to the batch's
columns, O(1)); a tick every ``tick_s`` adds the batches up per counter set with numpy, one
pass per batch and set of its tenant, and wakes the watchers of the sets that changed. Each
watcher then sends at most one update every half second (server/report_export.py), so changes in
between are coalesced.

What is exact and what is refreshed:

* Counts and talk seconds (total, incoming, outgoing, missed, rejected, connected; total,
  incoming and outgoing seconds) of calls stored for the first time add up exactly, per set and
  per employee, within a tick.
* A new version of a stored call (UPDATED) may change its type or duration, and the judged
  figures (never attended, not picked by client, unique clients, working seconds) depend on
  calls beyond the batch: a set such a batch touched is queried again, at most once per
  ``refresh_s``, one query at a time in the process. Those figures lag by up to about
  ``refresh_s``; the counts above never wait for it.
* Batches acked while a set's query runs are added on top of its result. A batch whose write
  finished in the few milliseconds between the query being sent and ClickHouse taking its
  snapshot is counted twice until the set's next query; any later batch of the filter triggers
  that query.

Only employee_ids (and tags, resolved to ids when the watch starts), call_types,
include_excluded_numbers (the tenant's excluded numbers as ingest knows them) and timezone (for
working seconds) apply; the range is from ``from_ms`` on, open-ended. Counters are per process:
with several server processes a watcher sees only the batches its own process acked between
refreshes (see the README).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from callsight.core.errors import ResourceExhausted
from callsight.pipeline.chunk import RowChunk
from callsight.pipeline.dedup import Outcome
from callsight.storage.filters import BLOCKED, INCOMING, MISSED, OUTGOING, REJECTED
from callsight.storage.summaries import Totals

FIELDS = tuple(f.name for f in fields(Totals))
_AT = {name: i for i, name in enumerate(FIELDS)}
# Batches waiting for the next tick; past this many the oldest sets are refreshed instead.
MAX_PENDING_BATCHES = 10_000
# Employee changes a set remembers for its watchers' next updates (trimmed to the slowest).
_MAX_LOG = 100_000
Vector = npt.NDArray[np.int64]


@dataclass(frozen=True)
class WatchFilter:
    """The fields of a ReportFilter a watch applies; equal filters share counters."""

    tenant_id: str
    from_ms: int
    timezone: str
    employee_ids: tuple[str, ...] | None = None
    call_types: tuple[int, ...] = ()
    include_excluded: bool = False


@dataclass(frozen=True)
class Loaded:
    """What a query of a filter found: its totals and each employee's, as of the query."""

    totals: Totals
    employees: dict[str, Totals]


# Reads a filter's totals (the server runs it on the report database).
Loader = Callable[[WatchFilter], Awaitable[Loaded]]


def _vector(totals: Totals) -> Vector:
    return np.array([getattr(totals, name) for name in FIELDS], dtype=np.int64)


def totals_of(vector: Vector) -> Totals:
    """A counter vector as ``Totals``."""
    return Totals(**{name: int(v) for name, v in zip(FIELDS, vector.tolist(), strict=True)})


@dataclass
class _Batch:
    tenant_id: str
    employee_id: str
    rows: RowChunk
    outcomes: npt.NDArray[np.uint8]
    ack_ms: int


@dataclass(frozen=True)
class Update:
    """What a watcher sends: the totals, the employees changed since its previous update."""

    totals: Totals
    employees: dict[str, Totals]
    as_of_ms: int
    newest_ack_ms: int


class Counters:
    """The totals of one filter, shared by its watchers."""

    def __init__(self, watch_filter: WatchFilter) -> None:
        self.filter = watch_filter
        self.totals = np.zeros(len(FIELDS), dtype=np.int64)
        self.employees: dict[str, Vector] = {}
        self.watchers: set[Watcher] = set()
        self.loaded = asyncio.Event()
        self.load_error: BaseException | None = None
        self.newest_ack_ms = 0
        # Employee changes, in order: (change number, employee); ``log_start`` numbers the first.
        self.log: deque[str] = deque()
        self.log_start = 0
        # Set when a batch touched what only a query can tell; when it last ran (monotonic s).
        self.stale = False
        self.queried_at = 0.0
        # While a query runs: what batches acked meanwhile added (put on top of its result).
        self.in_flight: tuple[Vector, dict[str, Vector]] | None = None

    @property
    def log_end(self) -> int:
        return self.log_start + len(self.log)

    def add(self, employee_id: str, delta: Vector, ack_ms: int) -> None:
        self.totals += delta
        mine = self.employees.get(employee_id)
        if mine is None:
            mine = self.employees[employee_id] = np.zeros(len(FIELDS), dtype=np.int64)
        mine += delta
        if self.in_flight is not None:
            totals, employees = self.in_flight
            totals += delta
            flight = employees.setdefault(employee_id, np.zeros(len(FIELDS), dtype=np.int64))
            flight += delta
        self.log.append(employee_id)
        self.newest_ack_ms = max(self.newest_ack_ms, ack_ms)

    def replace(self, loaded: Loaded) -> None:
        """Takes a query's result, plus what batches acked while it ran added."""
        added_totals, added = self.in_flight or (np.zeros(len(FIELDS), dtype=np.int64), {})
        self.in_flight = None
        totals = _vector(loaded.totals) + added_totals
        employees = {e: _vector(t) for e, t in loaded.employees.items()}
        for employee_id, delta in added.items():
            if employee_id in employees:
                employees[employee_id] = employees[employee_id] + delta
            else:
                employees[employee_id] = delta.copy()
        for employee_id in employees.keys() | self.employees.keys():
            old, new = self.employees.get(employee_id), employees.get(employee_id)
            if old is None or new is None or not np.array_equal(old, new):
                self.log.append(employee_id)
        self.totals, self.employees = totals, employees

    def trim(self) -> None:
        # Changes every watcher has sent are forgotten.
        if len(self.log) <= _MAX_LOG // 10:
            return
        oldest = min((w.position for w in self.watchers), default=self.log_end)
        oldest = max(oldest, self.log_end - _MAX_LOG)
        while self.log_start < oldest:
            self.log.popleft()
            self.log_start += 1


class Watcher:
    """One WatchSummary stream: waits for changes and takes updates of its counters."""

    def __init__(self, counters: Counters, clock_ms: Callable[[], int]) -> None:
        self.counters = counters
        self.changed = asyncio.Event()
        self.position = counters.log_start  # the first update sends every employee
        self._clock_ms = clock_ms
        self._first = True

    def update(self) -> Update:
        """The totals now and the employees changed since the previous update."""
        c = self.counters
        self.changed.clear()
        if self._first:
            changed = set(c.employees)
            self._first = False
        else:
            start = max(0, self.position - c.log_start)
            changed = {c.log[i] for i in range(start, len(c.log))}
        self.position = c.log_end
        return Update(
            totals=totals_of(c.totals),
            employees={e: totals_of(c.employees[e]) for e in sorted(changed) if e in c.employees},
            as_of_ms=self._clock_ms(),
            newest_ack_ms=c.newest_ack_ms,
        )


@dataclass
class WatchStats:
    """What the hub did, for logs and tests."""

    batches: int = 0
    queries: int = 0
    dropped_batches: int = 0
    wakes: int = 0


class WatchHub:
    """Counter sets of every watched filter of this process, fed by ingest's acks."""

    def __init__(
        self,
        loader: Loader,
        excluded: Callable[[str], npt.NDArray[np.uint64]],
        clock_ms: Callable[[], int],
        *,
        tick_s: float = 0.1,
        refresh_s: float = 5.0,
        max_watchers: int = 10_000,
    ) -> None:
        """``excluded(tenant)``: the tenant's excluded numbers as sorted client keys."""
        self._loader = loader
        self._excluded = excluded
        self._clock_ms = clock_ms
        self.tick_s = tick_s
        self.refresh_s = refresh_s
        self.max_watchers = max_watchers
        self._sets: dict[WatchFilter, Counters] = {}
        self._by_tenant: dict[str, set[Counters]] = {}
        self._pending: deque[_Batch] = deque()
        self._watchers = 0
        self.stats = WatchStats()

    @property
    def watchers(self) -> int:
        """Open watches in this process."""
        return self._watchers

    @property
    def counter_sets(self) -> int:
        """Distinct filters watched."""
        return len(self._sets)

    def calls_acked(
        self,
        tenant_id: str,
        employee_id: str,
        rows: RowChunk,
        outcomes: npt.NDArray[np.uint8],
        ack_ms: int,
    ) -> None:
        """Ingest's hand-over of one acked batch of new call rows (O(1); counted at the next
        tick). ``outcomes`` holds ACCEPTED or UPDATED per row."""
        if tenant_id not in self._by_tenant or not rows.num_rows:
            return
        if len(self._pending) >= MAX_PENDING_BATCHES:
            # Ticks cannot keep up: forget the batch, refresh its sets from the database.
            self.stats.dropped_batches += 1
            for counters in self._by_tenant[tenant_id]:
                counters.stale = True
            return
        self._pending.append(_Batch(tenant_id, employee_id, rows, outcomes, ack_ms))

    @asynccontextmanager
    async def watch(self, watch_filter: WatchFilter) -> AsyncIterator[Watcher]:
        """A watcher of ``watch_filter``'s counters, loaded before it is handed out."""
        if self._watchers >= self.max_watchers:
            raise ResourceExhausted(
                f"this server has {self.max_watchers:,} watches open, the most it keeps; "
                "share one watch per dashboard or retry later",
                retry_after_s=30.0,
            )
        counters = self._sets.get(watch_filter)
        if counters is None:
            counters = self._sets[watch_filter] = Counters(watch_filter)
            self._by_tenant.setdefault(watch_filter.tenant_id, set()).add(counters)
            self._start_query(counters)
        watcher = Watcher(counters, self._clock_ms)
        counters.watchers.add(watcher)
        self._watchers += 1
        try:
            await counters.loaded.wait()
            if counters.load_error is not None:
                raise counters.load_error
            yield watcher
        finally:
            self._watchers -= 1
            counters.watchers.discard(watcher)
            if not counters.watchers and self._sets.get(watch_filter) is counters:
                del self._sets[watch_filter]
                tenant_sets = self._by_tenant[watch_filter.tenant_id]
                tenant_sets.discard(counters)
                if not tenant_sets:
                    del self._by_tenant[watch_filter.tenant_id]

    def _start_query(self, counters: Counters) -> asyncio.Task[None]:
        counters.in_flight = (np.zeros(len(FIELDS), dtype=np.int64), {})
        counters.stale = False
        counters.queried_at = time.monotonic()
        self.stats.queries += 1
        return asyncio.ensure_future(self._query(counters))

    async def _query(self, counters: Counters) -> None:
        try:
            loaded = await self._loader(counters.filter)
        except Exception as exc:
            counters.in_flight = None
            if not counters.loaded.is_set():
                counters.load_error = exc
                counters.loaded.set()
            else:
                counters.stale = True  # try again after refresh_s
            return
        counters.replace(loaded)
        if counters.loaded.is_set():
            self._wake(counters)
        counters.loaded.set()

    def _wake(self, counters: Counters) -> None:
        for watcher in counters.watchers:
            watcher.changed.set()
        self.stats.wakes += 1
        counters.trim()

    def tick(self) -> None:
        """Adds up the batches acked since the last tick and wakes the watchers they changed."""
        changed: set[Counters] = set()
        while self._pending:
            batch = self._pending.popleft()
            self.stats.batches += 1
            for counters in self._by_tenant.get(batch.tenant_id, ()):
                if self._count(counters, batch):
                    changed.add(counters)
        for counters in changed:
            if counters.loaded.is_set():
                self._wake(counters)

    def _count(self, counters: Counters, batch: _Batch) -> bool:
        """Adds ``batch`` to ``counters``; True when it matched any call."""
        f = counters.filter
        if f.employee_ids is not None and batch.employee_id not in f.employee_ids:
            return False
        rows = batch.rows
        schema = rows.schema

        def column(name: str) -> npt.NDArray[np.int64]:
            return np.asarray(rows.columns[schema.get_field_index(name)])

        started = column("started_at")
        mask = started >= f.from_ms
        kinds = column("type")
        if f.call_types:
            mask &= np.isin(kinds, np.array(f.call_types, dtype=kinds.dtype))
        if not f.include_excluded:
            excluded = self._excluded(f.tenant_id)
            if len(excluded):
                mask &= ~np.isin(column("client_key"), excluded)
        if not mask.any():
            return False
        # Anything matched changes the judged figures; an UPDATED call may change its type or
        # duration, which only a query can tell: refresh the set (rate-limited).
        counters.stale = True
        new = mask & (batch.outcomes == Outcome.ACCEPTED)
        if not new.any():
            return False
        kinds, seconds = kinds[new], column("duration_s")[new].astype(np.int64)
        incoming, outgoing = kinds == INCOMING, kinds == OUTGOING
        delta = np.zeros(len(FIELDS), dtype=np.int64)
        delta[_AT["total_calls"]] = len(kinds)
        delta[_AT["incoming_calls"]] = np.count_nonzero(incoming)
        delta[_AT["outgoing_calls"]] = np.count_nonzero(outgoing)
        delta[_AT["missed_calls"]] = np.count_nonzero(kinds == MISSED)
        delta[_AT["rejected_calls"]] = np.count_nonzero((kinds == REJECTED) | (kinds == BLOCKED))
        delta[_AT["connected_calls"]] = np.count_nonzero(seconds > 0)
        delta[_AT["total_duration_s"]] = seconds.sum()
        delta[_AT["incoming_duration_s"]] = seconds[incoming].sum()
        delta[_AT["outgoing_duration_s"]] = seconds[outgoing].sum()
        counters.add(batch.employee_id, delta, batch.ack_ms)
        return True

    def _refresh(self) -> None:
        # One query at a time, the set waiting longest first.
        if any(c.in_flight is not None for c in self._sets.values()):
            return
        due = time.monotonic() - self.refresh_s
        stale = [c for c in self._sets.values() if c.stale and c.queried_at <= due]
        if stale:
            self._start_query(min(stale, key=lambda c: c.queried_at))

    async def run(self) -> None:
        """Ticks until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()
            self._refresh()
