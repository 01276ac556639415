"""Live CallSummary totals for WatchSummary, kept up to date from acked batches.

Watchers with equal filters share one ``Counters``: the totals and per-employee totals of the
filter, loaded once by a query (``storage.summaries``) and then kept by the ingest path. Ingest
hands every acked batch of calls over with one call (``calls_acked``: a reference to the batch's
columns, O(1)); the hub's next tick, on the event loop's next turn, adds up the batches acked
since the previous tick per counter set with numpy, one pass per batch and set of its tenant, and
publishes the sets that changed: it wakes their watchers.

When updates go out: a set publishes at most once per ``interval_s`` (0.5 s). A change to a set
that has not published for that long goes out at once; one inside the interval waits for its end,
together with the changes after it. So a batch's change goes out at most ``interval_s`` after its
ack (plus the time to count it and to send), at once when changes are rare.

What a watcher sends is built once per set, state of its counters and what the watcher has
already seen: the watchers of a set that are caught up share one message object (building it per
watcher took most of the event loop with 1,000 watchers).

What is exact and what is refreshed:

* Counts and talk seconds (total, incoming, outgoing, missed, rejected, connected; total,
  incoming and outgoing seconds) of calls stored for the first time add up exactly, per set and
  per employee, as soon as their batch is counted.
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
import contextlib
import itertools
import math
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
from callsight.v1 import report_pb2

FIELDS = tuple(f.name for f in fields(Totals))
_AT = {name: i for i, name in enumerate(FIELDS)}
# Batches waiting for the next tick; past this many the oldest sets are refreshed instead.
MAX_PENDING_BATCHES = 10_000
# Employee changes a set remembers for its watchers' next updates (trimmed to the slowest).
_MAX_LOG = 100_000
# The shortest gap between two updates of a set: a batch's change waits at most this after its
# ack to go out (1 s gave p99 staleness over the 1 s the issue asks for).
UPDATE_INTERVAL_S = 0.5
# How old a built update may be when another watcher takes it (its as_of_ms), in ms.
_FRESH_MS = 100
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


def summary_of(vector: Vector) -> report_pb2.Summary:
    """A counter vector as the contract's ``Summary`` (its fields are ``Totals``'s)."""
    return report_pb2.Summary(**dict(zip(FIELDS, vector.tolist(), strict=True)))


@dataclass
class _Batch:
    tenant_id: str
    employee_id: str
    rows: RowChunk
    outcomes: npt.NDArray[np.uint8]
    ack_ms: int


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
        # When the hub last woke the watchers (monotonic s).
        self.published_at = -math.inf
        # Updates built since the last change (at ``built_ms``, for _FRESH_MS), by what their
        # watchers had seen (None: nothing, every employee); shared by those that saw the same.
        self.updates: dict[int | None, report_pb2.WatchSummaryUpdate] = {}
        self.built_ms = 0
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
        self.updates.clear()

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
        self.updates.clear()

    def update(self, since: int | None, now_ms: int) -> report_pb2.WatchSummaryUpdate:
        """The totals now and the employees changed since change ``since`` (None, or changes
        already forgotten: every employee), built once per state and ``since``."""
        if since is not None and since < self.log_start:
            since = None
        if now_ms - self.built_ms > _FRESH_MS:
            self.updates.clear()
            self.built_ms = now_ms
        update = self.updates.get(since)
        if update is None:
            if since is None:
                changed = sorted(self.employees)
            else:
                changed = sorted(set(itertools.islice(self.log, since - self.log_start, None)))
            update = self.updates[since] = report_pb2.WatchSummaryUpdate(
                summary=summary_of(self.totals),
                employees=[
                    report_pb2.EmployeeDelta(employee_id=e, summary=summary_of(self.employees[e]))
                    for e in changed
                    if e in self.employees
                ],
                as_of_ms=now_ms,
                newest_ack_ms=self.newest_ack_ms,
            )
        return update

    def trim(self) -> None:
        # Changes every watcher has sent are forgotten.
        if len(self.log) <= _MAX_LOG // 10:
            return
        seen = (w.position for w in self.watchers if w.position is not None)
        oldest = min(seen, default=self.log_end)
        oldest = max(oldest, self.log_end - _MAX_LOG)
        while self.log_start < oldest:
            self.log.popleft()
            self.log_start += 1


class Watcher:
    """One WatchSummary stream: waits for its counters' publishes and takes their updates."""

    def __init__(self, counters: Counters, clock_ms: Callable[[], int]) -> None:
        self.counters = counters
        self.changed = asyncio.Event()
        # The change the next update starts from; None: nothing sent, every employee goes out.
        self.position: int | None = None
        self._clock_ms = clock_ms

    def update(self) -> report_pb2.WatchSummaryUpdate:
        """The totals now and the employees changed since the previous update (shared with the
        other watchers of the counters that had seen as much: not to be changed)."""
        c = self.counters
        self.changed.clear()
        update = c.update(self.position, self._clock_ms())
        self.position = c.log_end
        return update


@dataclass
class WatchStats:
    """What the hub did, for logs and tests."""

    batches: int = 0
    queries: int = 0
    dropped_batches: int = 0
    publishes: int = 0


class WatchHub:
    """Counter sets of every watched filter of this process, fed by ingest's acks."""

    def __init__(
        self,
        loader: Loader,
        excluded: Callable[[str], npt.NDArray[np.uint64]],
        clock_ms: Callable[[], int],
        *,
        tick_s: float = 0.1,
        interval_s: float = UPDATE_INTERVAL_S,
        refresh_s: float = 5.0,
        max_watchers: int = 10_000,
    ) -> None:
        """``excluded(tenant)``: the tenant's excluded numbers as sorted client keys;
        ``tick_s``: how often stale sets are looked for (batches are counted at once)."""
        self._loader = loader
        self._excluded = excluded
        self._clock_ms = clock_ms
        self.tick_s = tick_s
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self.max_watchers = max_watchers
        self._sets: dict[WatchFilter, Counters] = {}
        self._by_tenant: dict[str, set[Counters]] = {}
        self._pending: deque[_Batch] = deque()
        # Sets changed since they last published.
        self._changed: set[Counters] = set()
        # Set when batches wait to be counted or a set's change to be published.
        self._soon = asyncio.Event()
        self._refreshed_at = 0.0
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
        """Ingest's hand-over of one acked batch of new call rows (O(1); counted on the event
        loop's next turn). ``outcomes`` holds ACCEPTED or UPDATED per row."""
        tenant_sets = self._by_tenant.get(tenant_id)
        if tenant_sets is None or not rows.num_rows:
            return
        if len(self._pending) >= MAX_PENDING_BATCHES:
            # Ticks cannot keep up: forget the batch, refresh its sets from the database.
            self.stats.dropped_batches += 1
            for counters in tenant_sets:
                counters.stale = True
            return
        self._pending.append(_Batch(tenant_id, employee_id, rows, outcomes, ack_ms))
        self._soon.set()

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
                self._changed.discard(counters)
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
            self._changed.add(counters)  # published like a batch's change
            self._soon.set()
        else:
            self._changed.discard(counters)  # the watchers' first updates show it
        counters.loaded.set()

    def tick(self) -> None:
        """Adds up the batches acked since the last tick and publishes the sets changed since
        they last published, those that have not for ``interval_s``; the others wait."""
        while self._pending:
            batch = self._pending.popleft()
            self.stats.batches += 1
            for counters in self._by_tenant.get(batch.tenant_id, ()):
                if self._count(counters, batch):
                    self._changed.add(counters)
        now = time.monotonic()
        due = [
            c
            for c in self._changed
            if c.loaded.is_set() and c.published_at + self.interval_s <= now
        ]
        for counters in due:
            self._changed.discard(counters)
            counters.published_at = now
            for watcher in counters.watchers:
                watcher.changed.set()
            self.stats.publishes += 1
            counters.trim()

    def _next_tick_s(self) -> float:
        # After tick_s, or when the first changed set's interval ends if sooner.
        waiting = (c.published_at for c in self._changed if c.loaded.is_set())
        due = min(waiting, default=math.inf) + self.interval_s
        return max(0.0, min(self.tick_s, due - time.monotonic()))

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_tick_s()):
                    await self._soon.wait()
            self._soon.clear()
            self.tick()
            now = time.monotonic()
            if now - self._refreshed_at >= self.tick_s:
                self._refreshed_at = now
                self._refresh()
