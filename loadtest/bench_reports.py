"""Report latency on a year of calls, next to the same reports computed naively in the same run.

Run ``python -m callsight.loadtest.bench_reports [--calls 20000000] [--employees 2000] [--days 365]
[--repeat 20] [--data-dir DIR] [--reuse] [--out loadtest/results/reports.json]``. White-box: a
year of calls cannot be streamed through gRPC in a benchmark's time, and the naive figures call
the storage functions directly.

1. Set-up through the public API (``loadtest.bootstrap``) on an in-process ``Service``: a tenant,
   its employees with a device each, a REPORTS key, ten excluded numbers and 2,000 leads.
2. ``--calls`` calls generated with numpy in columns (each employee calls a skewed pool of ~200
   clients from a shared 300,000; types, durations and hours as ``loadtest.generate`` draws
   them, the last ``--days`` days), every distinct number, name and note encrypted once. ~1%
   arrive twice and ~2% again as a newer version with a note, so FINAL has work. The numbers and
   names called go into ``parties`` once; the calls, which hold only their keys, in arrival
   order, ~1M per ``insert_arrow``, into ``calls`` and ``calls_naive`` (dedup-only layout: no
   time in the key, no partitions); then background merges settle (``--optimize``:
   ``OPTIMIZE TABLE .. FINAL`` first). The size of each table at rest is reported
   (``bytes_per_row``; ``bytes_per_call`` for ``calls``).
3. Every report through gRPC with the REPORTS key: ``--repeat`` calls after two warm-ups, p50/p95
   and this process's CPU p50 (server, chDB and client all run here). Rollups are dropped first,
   so the first CallSummary, reported on its own, makes them. The naive figures run the same
   ``storage`` functions, rollups off, on ``calls_naive`` next to ``calls`` (sql p50); both must
   agree, and CallSummary's ``total_calls`` must equal the distinct calls generated in range.

``--reuse`` keeps the data directory (default /tmp/bench-reports) and loads it once; otherwise it
is deleted at the end. Progress goes to stderr; the table to stdout and, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import operator
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import uvloop

from callsight.loadtest.bootstrap import DeviceIdentity, bootstrap
from callsight.loadtest.common import add_flags, auth, columns, cpu_s, write_json
from callsight.loadtest.common import say as _stderr
from callsight.loadtest.generate import (
    CALL_TYPE_SHARES,
    CALL_TYPES,
    DAY_MS,
    FIRST_NAMES,
    MINUTE_MS,
    NOTES,
    SURNAMES,
    contact_names,
    durations,
    ist_midnight_ms,
    mobile_numbers,
    start_times,
)
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import CALLS_SCHEMA, client_keys
from callsight.pipeline.keys import TenantKeys
from callsight.server import logs
from callsight.server.app import Service
from callsight.server.config import Config
from callsight.storage import listings, summaries
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.storage.filters import CallFilter
from callsight.storage.parties import PARTIES, PARTIES_SCHEMA, PARTY_COLUMNS
from callsight.storage.tables import DEFAULT_TABLES, Tables
from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, report_pb2, report_pb2_grpc

TIMEZONE = "Asia/Kolkata"
SHARED_POOL = 300_000
CLIENTS_PER_EMPLOYEE = 200
CHUNK_ROWS = 1_000_000
RESENT_RATE = 0.01
UPDATED_RATE = 0.02
EXCLUDED_NUMBERS = 10
LEADS = 2_000
PAGE_WALK = 20
STATE_FILE = "bench-state.json"
DATA_KEYS = ("calls", "employees", "days", "seed")  # what a --reuse run must match
NAIVE = Tables(calls="calls_naive")
# The columns of ``calls`` itself: the rows the writer gets, less what it stores in ``parties``.
STORED_CALLS = pa.schema([f for f in CALLS_SCHEMA if f.name not in PARTY_COLUMNS])

I64 = npt.NDArray[np.int64]


def _say(message: str) -> None:
    _stderr(f"[{time.strftime('%H:%M:%S')}] {message}")


# --- the calls ----------------------------------------------------------------------------------


@dataclass
class Calls:
    """The distinct calls, one row each at its first version, sorted by start."""

    employee: npt.NDArray[np.int32]  # index into the employees
    client: npt.NDArray[np.int32]  # index into the shared number pool
    type: npt.NDArray[np.uint8]
    started_ms: I64
    duration_s: npt.NDArray[np.uint32]
    call_no: I64  # call_id within the device
    sim_slot: npt.NDArray[np.int32]
    synced_ms: I64


def generate_calls(
    rng: np.random.Generator, n: int, employees: int, days: int, anchor_ms: int
) -> tuple[Calls, npt.NDArray[np.int32]]:
    """``n`` calls over the ``days`` local days before ``anchor_ms``, and each employee's pool."""
    # Skewed reuse: low indices of the shared pool are the numbers many employees call.
    pools = (SHARED_POOL * rng.random((employees, CLIENTS_PER_EMPLOYEE)) ** 2).astype(np.int32)
    activity = rng.gamma(4.0, 1.0, employees)
    employee = rng.choice(employees, size=n, p=activity / activity.sum()).astype(np.int32)
    # Within an employee's pool a few clients get most of the calls.
    rank = (CLIENTS_PER_EMPLOYEE * rng.random(n) ** 2.5).astype(np.int32)
    client = pools[employee, rank]
    kind = rng.choice(CALL_TYPES, size=n, p=CALL_TYPE_SHARES)
    duration = durations(rng, kind).astype(np.uint32)
    # Sorted, in IST working hours of the days before the anchor (a midnight), none after it.
    started = start_times(rng, n, anchor_ms - 1, days)
    # Android numbers its call log per device: call ids grow with time.
    counts = np.bincount(employee, minlength=employees)
    call_no = np.empty(n, dtype=np.int64)
    call_no[np.argsort(employee, kind="stable")] = (
        np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    )
    sim_slot = (rng.random(n) < 0.2).astype(np.int32)
    # Devices sync shortly after a call ends.
    synced = started + duration.astype(np.int64) * 1000 + rng.integers(5_000, 10 * MINUTE_MS, n)
    synced = np.minimum(synced, anchor_ms - 1)
    return Calls(
        employee, client, kind.astype(np.uint8), started, duration, call_no, sim_slot, synced
    ), pools


@dataclass
class Arrivals:
    """Every row that reaches ClickHouse, in arrival order: call index, version, note, sync."""

    index: I64
    version: I64
    note: npt.NDArray[np.int32]  # 0: no note, else index into the notes
    synced_ms: I64
    resent: int
    updated: int


def arrivals(rng: np.random.Generator, calls: Calls, anchor_ms: int, notes: int) -> Arrivals:
    """The first versions, ~1% re-sent with the same version and ~2% updated with a note."""
    n = len(calls.started_ms)
    resent = np.sort(rng.choice(n, size=int(n * RESENT_RATE), replace=False))
    updated = np.sort(rng.choice(n, size=int(n * UPDATED_RATE), replace=False))
    resent_sync = calls.synced_ms[resent] + rng.integers(MINUTE_MS, 120 * MINUTE_MS, len(resent))
    # A note typed between ten minutes and three days after the call.
    later = rng.integers(10 * MINUTE_MS, 3 * DAY_MS, len(updated))
    update_version = np.minimum(calls.started_ms[updated] + later, anchor_ms - MINUTE_MS)
    update_sync = np.minimum(
        update_version + rng.integers(5_000, 5 * MINUTE_MS, len(updated)), anchor_ms - 1
    )
    index = np.concatenate([np.arange(n, dtype=np.int64), resent, updated])
    version = np.concatenate([calls.started_ms, calls.started_ms[resent], update_version])
    note = np.concatenate(
        [np.zeros(n + len(resent), np.int32), rng.integers(1, notes, len(updated)).astype(np.int32)]
    )
    synced = np.concatenate([calls.synced_ms, np.minimum(resent_sync, anchor_ms - 1), update_sync])
    order = np.argsort(synced, kind="stable")
    return Arrivals(
        index[order], version[order], note[order], synced[order], len(resent), len(updated)
    )


Pools = dict[str, pa.Array]  # per-entity values the rows take from, encrypted once each


def build_pools(
    rng: np.random.Generator,
    keyring: Keyring,
    devices: Sequence[DeviceIdentity],
    numbers: Sequence[str],
) -> Pools:
    """Encrypts and blind-indexes each distinct number, name and note once."""
    cipher = keyring.current
    names = contact_names(rng, len(numbers), 0.6)
    bidx = cipher.blind_index_many(numbers)
    return {
        "tenant": pa.array([devices[0].tenant_id], pa.string()),
        "devices": pa.array([d.device_id for d in devices], pa.string()),
        "employees": pa.array([d.employee_id for d in devices], pa.string()),
        # Stored encrypted like the server stores them (one ciphertext per SIM, as its cache).
        "sims": pa.array(
            cipher.encrypt_many([f"8991{i:015d}" for i in range(2 * len(devices))]), pa.binary()
        ),
        "bidx": pa.array(bidx, pa.binary(32)),
        "client_key": pa.array(client_keys(bidx), pa.uint64()),
        "number_enc": pa.array(cipher.encrypt_many(numbers), pa.binary()),
        "name_enc": pa.array(cipher.encrypt_many(names), pa.binary()),
        "name_key": pa.array(cipher.name_keys(names), pa.uint32()),
        "notes": pa.array(cipher.encrypt_many(["", *NOTES]), pa.binary()),
    }


def parties_table(clients: npt.NDArray[np.int32], pools: Pools, version: int) -> pa.Table:
    """The ``parties`` rows of the numbers ``clients`` (each has one name, maybe empty)."""
    picks = pa.array(clients)
    columns = [
        pools["tenant"].take(pa.array(np.zeros(len(clients), dtype=np.int32))),
        *(pools[name].take(picks) for name in ("client_key", "name_key", "bidx")),
        *(pools[name].take(picks) for name in ("number_enc", "name_enc")),
        pa.array(np.full(len(clients), version, dtype=np.uint64)),
    ]
    return pa.Table.from_arrays(columns, schema=PARTIES_SCHEMA)


def chunk_table(
    calls: Calls, rows: Arrivals, start: int, stop: int, pools: Pools, keyring: Keyring
) -> pa.Table:
    """Rows ``start:stop`` of the arrivals as an Arrow table of ``calls`` (STORED_CALLS)."""
    i = rows.index[start:stop]
    employee, client, duration = calls.employee[i], calls.client[i], calls.duration_s[i]
    call_id = pc.cast(pa.array(calls.call_no[i]), pa.string())
    # Every tenth call (by a scramble of its id, not every tenth id) with a recording, whose URI
    # is stored encrypted (recorders name files after the number).
    recorded = np.flatnonzero(
        (duration > 0) & ((calls.call_no[i] * 2_654_435_761) % 1_000_003 % 10 == 0)
    )
    uris = pc.binary_join_element_wise(
        "content://recordings/", call_id.take(pa.array(recorded)), ".m4a", ""
    )
    sealed = [b""] * len(i)
    for k, blob in zip(recorded, keyring.current.encrypt_many(uris.to_pylist()), strict=True):
        sealed[k] = blob
    recording = pa.array(sealed, pa.binary())
    columns = [
        pools["tenant"].take(pa.array(np.zeros(len(i), dtype=np.int32))),
        pools["devices"].take(pa.array(employee)),
        call_id,
        pools["employees"].take(pa.array(employee)),
        pa.array(calls.type[i], pa.uint8()),
        pa.array(calls.started_ms[i], pa.timestamp("ms", tz="UTC")),
        pa.array(duration, pa.uint32()),
        pa.array(calls.sim_slot[i], pa.int32()),
        pools["sims"].take(pa.array(employee * 2 + calls.sim_slot[i])),
        pools["notes"].take(pa.array(rows.note[start:stop])),
        recording,
        pa.array(rows.version[start:stop].astype(np.uint64), pa.uint64()),
        pa.array(rows.synced_ms[start:stop], pa.timestamp("ms", tz="UTC")),
        pools["client_key"].take(pa.array(client)),
        pools["name_key"].take(pa.array(client)),
    ]
    return pa.Table.from_arrays(columns, schema=STORED_CALLS)


# --- set-up -------------------------------------------------------------------------------------


@dataclass
class State:
    """What a later ``--reuse`` run needs to find the loaded data again."""

    calls: int
    employees: int
    days: int
    seed: int
    tenant_id: str
    admin_key: str
    reports_key: str
    anchor_ms: int
    loaded: bool = False
    rows: int = 0
    load_s: float = 0.0
    # Distinct calls (not excluded) per measured range in days, as generated: the ground truth.
    truth: dict[str, int] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


async def load(
    db: Database,
    channel: grpc.aio.Channel,
    state: State,
    devices: list[DeviceIdentity],
    master_key: bytes,
) -> State:
    """Leads, excluded numbers and the calls, into both tables."""
    rng = np.random.default_rng(state.seed)
    t = time.perf_counter()
    numbers = [f"+91{n}" for n in mobile_numbers(rng, SHARED_POOL)]  # E.164, distinct
    calls, pools = generate_calls(rng, state.calls, state.employees, state.days, state.anchor_ms)
    rows = arrivals(rng, calls, state.anchor_ms, len(NOTES) + 1)
    _say(
        f"generated {state.calls:,} calls + {rows.resent:,} re-sent + {rows.updated:,} updated"
        f" in {time.perf_counter() - t:.1f} s"
    )
    # Excluded: ten of the most shared numbers (a colleague, the office landline...).
    state.excluded = numbers[:EXCLUDED_NUMBERS]
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await admin.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=state.excluded), metadata=auth(state.admin_key)
    )
    # Leads, each a client of the employee it is assigned to (EXPLICIT).
    t = time.perf_counter()
    leads: dict[int, admin_pb2.Lead] = {}
    for i in range(LEADS):
        e = i % len(devices)
        client = int(pools[e, int(rng.integers(0, CLIENTS_PER_EMPLOYEE))])
        if client not in leads:
            lead = admin_pb2.Lead(first_name=FIRST_NAMES[i % 9], last_name=SURNAMES[i % 7])
            lead.company, lead.primary_number = f"Company {i}", numbers[client]
            lead.city, lead.country, lead.employee_id = "Pune", "IN", devices[e].employee_id
            lead.tags.append("bench")
            leads[client] = lead
    imported = await admin.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=list(leads.values()), strategy=admin_pb2.ASSIGNMENT_STRATEGY_EXPLICIT
        ),
        metadata=auth(state.admin_key),
    )
    _say(f"{len(imported.leads)} leads via gRPC ImportLeads in {time.perf_counter() - t:.1f} s")
    keyring = await TenantKeys(Directory(db), master_key).keyring(state.tenant_id)
    t = time.perf_counter()
    arrow_pools = build_pools(rng, keyring, devices, numbers)
    _say(f"encrypted {len(numbers):,} numbers and names once in {time.perf_counter() - t:.1f} s")
    # Before the calls, as the ingest writer does: every call has its party.
    called = parties_table(np.unique(calls.client), arrow_pools, state.anchor_ms)
    await db.run(operator.methodcaller("insert_arrow", PARTIES, called))
    _say(f"{called.num_rows:,} parties (numbers called, each with its name)")
    # ``calls`` in the dedup-only layout: keyed by the call's identity, no time, no partitions.
    await db.command(
        f"CREATE TABLE IF NOT EXISTS {NAIVE.calls} AS calls ENGINE = ReplacingMergeTree(version)"
        " PARTITION BY tuple() ORDER BY (tenant_id, device_id, call_id)"
    )
    total = len(rows.index)
    spent = dict.fromkeys(("build", "calls", NAIVE.calls), 0.0)
    started = time.perf_counter()
    for start in range(0, total, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, total)
        t = time.perf_counter()
        table = chunk_table(calls, rows, start, stop, arrow_pools, keyring)
        spent["build"] += time.perf_counter() - t
        for target in ("calls", NAIVE.calls):
            t = time.perf_counter()
            await db.run(operator.methodcaller("insert_arrow", target, table))
            spent[target] += time.perf_counter() - t
        rates = ", ".join(f"{k} {stop / s:,.0f} rows/s" for k, s in spent.items())
        elapsed = time.perf_counter() - started
        _say(f"loaded {stop:,}/{total:,} rows into both tables in {elapsed:.0f} s ({rates})")
    state.rows = total
    state.load_s = round(time.perf_counter() - started, 1)
    excluded = np.isin(calls.client, np.arange(EXCLUDED_NUMBERS))
    for days in (30, state.days):
        in_range = calls.started_ms >= state.anchor_ms - days * DAY_MS
        state.truth[str(days)] = int(np.count_nonzero(in_range & ~excluded))
    state.loaded = True
    return state


# --- merges -------------------------------------------------------------------------------------


async def parts(db: Database) -> dict[str, Any]:
    """Active parts, rows and on-disk size (MiB, bytes a row) per table."""
    rows = await db.query(
        "SELECT table, count(), sum(rows), sum(bytes_on_disk), uniqExact(partition),"
        " max(level) FROM system.parts WHERE database = currentDatabase() AND active"
        " AND table IN ('calls', {naive:String}, {parties:String}) GROUP BY table ORDER BY table",
        {"naive": NAIVE.calls, "parties": PARTIES},
    )
    keys = ("parts", "rows", "mib", "bytes_per_row", "partitions", "max_level")
    return {
        str(t): dict(
            zip(
                keys,
                (
                    int(p),
                    int(r),
                    round(int(b) / 2**20),
                    round(int(b) / max(int(r), 1), 1),
                    int(n),
                    int(lv),
                ),
                strict=True,
            )
        )
        for t, p, r, b, n, lv in rows
    }


async def settle_merges(db: Database, quiet_s: float = 10.0, limit_s: float = 900.0) -> float:
    """Waits until no merge has run for ``quiet_s`` (or ``limit_s`` passed); returns the wait."""
    started = quiet_since = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        (running,) = await db.query(
            "SELECT count() FROM system.merges WHERE database = currentDatabase()"
        )
        if int(running[0]):
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since >= quiet_s:
            break
        await asyncio.sleep(1.0)
    return time.perf_counter() - started


# --- measuring ----------------------------------------------------------------------------------

# A report call through gRPC (awaiting what it returns gives the response), and a report run
# straight against the database with the storage functions, on the tables given.
Rpc = Callable[[], Awaitable[Any]]
Direct = Callable[[Tables], Awaitable[Any]]


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int, warmups: int) -> dict[str, float]:
    """``warmups`` untimed calls (the first one's latency is kept), then ``repeat`` timed ones:
    p50/p95 ms, and p50 of this process's CPU ms (server, chDB and client all run here)."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(warmups + repeat):
        started, cpu_started = time.perf_counter(), cpu_s()
        await fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((cpu_s() - cpu_started) * 1000)
    p50, p95 = np.percentile(wall[warmups:], [50, 95])
    cpu_p50 = np.percentile(cpu[warmups:], 50)
    figures = {"p50_ms": p50, "p95_ms": p95, "cpu_p50_ms": cpu_p50, "first_ms": wall[0]}
    return {key: round(float(value), 1) for key, value in figures.items()}


@dataclass
class Case:
    """One measured report through gRPC (from page ``token``), and optionally ``direct``: straight
    on ``calls`` and naively."""

    report: str
    range_days: int
    page: str
    target_ms: float | None
    token: str = ""
    direct: bool = False


LISTINGS: dict[str, Callable[..., Awaitable[Any]]] = {
    "NeverAttended": listings.never_attended,
    "NotPickedByClient": listings.not_picked_by_client,
    "UniqueClients": listings.unique_clients,
    "CallHistory": listings.call_history,
}
# fmt: off
SUMMARIES = (
    "EmployeeSummary", "CallAnalysis", "HourlyAnalytics", "DaywiseAnalytics", "WorkingHours",
)
# fmt: on


def walks(year: int) -> list[tuple[str, int]]:
    """The paged listings walked to page ``PAGE_WALK``, with their range in days."""
    return [(name, 30) for name in LISTINGS] + [("CallHistory", year)]


class Reports:
    """Builds the measured calls of one data set."""

    def __init__(self, channel: grpc.aio.Channel, db: Database, state: State) -> None:
        self.stub = report_pb2_grpc.ReportServiceStub(channel)
        self.db = db
        self.state = state
        self.snapshot_ms = int(time.time() * 1000)

    def rpc(self, name: str, days: int, token: str = "") -> Rpc:
        """The RPC ``name`` over the last ``days`` days (a page token for paged reports)."""
        anchor = self.state.anchor_ms
        request = getattr(report_pb2, f"{name}Request")(
            filter=report_pb2.ReportFilter(from_ms=anchor - days * DAY_MS, to_ms=anchor)
        )
        if token:
            request.page_token = token
        method = getattr(self.stub, name)
        return lambda: method(request, metadata=auth(self.state.reports_key))

    def direct(self, name: str, days: int) -> Direct:
        """CallSummary without rollups (the SQL that both layouts can answer), or the first page
        (100 rows and one more) of a paged listing."""
        anchor = self.state.anchor_ms
        f = CallFilter(self.state.tenant_id, anchor - days * DAY_MS, anchor, TIMEZONE)
        if name == "CallSummary":
            return lambda t: summaries.call_summary(self.db, f, use_rollups=False, tables=t)
        fn = LISTINGS[name]
        return lambda t: fn(self.db, f, self.snapshot_ms, None, 101, tables=t)


def cases(year: int, tokens: dict[str, str]) -> list[Case]:
    """Every measured report; ``tokens`` holds the page tokens of the later pages."""
    out = [Case("CallSummary", 30, "", 200, direct=True)]
    out.append(Case("CallSummary", year, "", 1000, direct=True))
    out += [
        Case(name, 30, "first" if name == "EmployeeSummary" else "", None) for name in SUMMARIES
    ]
    for name, days in walks(year):
        target = 100 if name == "CallHistory" else 500
        out.append(Case(name, days, "first", target, direct=days == 30))
        if token := tokens.get(f"{name}/{days}"):
            out.append(Case(name, days, f"page {PAGE_WALK}", target, token))
    return [*out, Case("LeadActivity", 30, "first", None)]


async def walk_tokens(r: Reports, year: int) -> dict[str, str]:
    """The page token of page ``PAGE_WALK`` of each listing, walking there page by page."""
    tokens: dict[str, str] = {}
    for name, days in walks(year):
        token = ""
        started = time.perf_counter()
        for page in range(1, PAGE_WALK):
            token = (await r.rpc(name, days, token)()).next_page_token
            if not token:
                _say(f"{name} {days} d has only {page} pages")
                break
        else:
            tokens[f"{name}/{days}"] = token
        _say(f"walked {name} {days} d to page {PAGE_WALK} in {time.perf_counter() - started:.1f} s")
    return tokens


async def measure(
    db: Database, channel: grpc.aio.Channel, state: State, repeat: int, naive_repeat: int
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Times every case; checks answers against the naive table and the generated truth."""
    r = Reports(channel, db, state)
    checks: dict[str, Any] = {}

    def check(key: str, ok: bool, detail: str = "") -> None:
        checks[key] = ok
        if not ok:
            _say(f"CHECK FAILED: {key}{detail}")

    # Rollups are made by the first summary that needs them: time that call on its own.
    for table in (DEFAULT_TABLES.call_rollup_runs, DEFAULT_TABLES.call_rollups):
        await db.command(f"TRUNCATE TABLE {table}")
    cold: dict[str, float] = {}
    for days in (state.days, 30):
        started = time.perf_counter()
        total = (await r.rpc("CallSummary", days)()).summary.total_calls
        cold[f"CallSummary {days} d"] = round((time.perf_counter() - started) * 1000, 1)
        key, truth = (
            f"CallSummary {days} d total_calls == distinct calls generated",
            state.truth[str(days)],
        )
        check(key, total == truth, f": {total} != {truth}")
    _say(f"first calls, rollups made on the way: {cold} ms")
    tokens = await walk_tokens(r, state.days)
    results = []
    for case in cases(state.days, tokens):
        span = f"{case.range_days} d"
        t = await timed(r.rpc(case.report, case.range_days, case.token), repeat, 2)
        sql = naive = None
        if case.direct:
            direct = r.direct(case.report, case.range_days)
            key = f"{case.report} {span} {case.page}".strip() + " same answer as naive"
            check(key, bool(await direct(DEFAULT_TABLES) == await direct(NAIVE)))
            sql = await timed(functools.partial(direct, DEFAULT_TABLES), naive_repeat, 1)
            naive = await timed(functools.partial(direct, NAIVE), naive_repeat, 0)
        p50 = t["p50_ms"]
        results.append(
            {
                "report": case.report,
                "range": span,
                "page": case.page,
                **t,
                "sql_p50_ms": sql["p50_ms"] if sql else None,
                "naive_p50_ms": naive["p50_ms"] if naive else None,
                "naive_p95_ms": naive["p95_ms"] if naive else None,
                "ratio": round(naive["p50_ms"] / p50, 1) if naive and p50 else None,
                "target_ms": case.target_ms,
                "met": None if case.target_ms is None else p50 <= case.target_ms,
            }
        )
        _say(
            f"{case.report} {span} {case.page}: p50 {p50} ms p95 {t['p95_ms']} ms"
            f" cpu {t['cpu_p50_ms']} ms" + (f", naive p50 {naive['p50_ms']} ms" if naive else "")
        )
    return results, checks, cold


def table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"

    header = ("report", "range", "page", "p50", "p95", "cpu p50", "sql p50", "naive p50")
    rows = [
        (
            r["report"],
            r["range"],
            r["page"] or "-",
            *(ms(r[k]) for k in ("p50_ms", "p95_ms", "cpu_p50_ms", "sql_p50_ms", "naive_p50_ms")),
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
            ms(r["target_ms"]),
            "-" if r["met"] is None else "yes" if r["met"] else "NO",
        )
        for r in results
    ]
    lines = columns((*header, "ratio", "target", "met"), rows)
    return "\n".join([lines[0] + "   (ms)", "-" * len(lines[0]), *lines[1:]])


# --- main ---------------------------------------------------------------------------------------


async def _state(
    db: Database, channel: grpc.aio.Channel, data_dir: Path, args: argparse.Namespace
) -> State:
    """The data set loaded earlier (``--reuse``), or a new one: a tenant (Kolkata), its employees
    with a device each and a REPORTS key, via the API, then the data, loaded now."""
    path = data_dir / STATE_FILE
    if path.exists():
        state = State(**json.loads(path.read_text()))
        if [getattr(state, k) for k in DATA_KEYS] != [getattr(args, k) for k in DATA_KEYS]:
            raise SystemExit(
                f"{data_dir} holds a different data set ({state.calls} calls,"
                f" {state.employees} employees, {state.days} days, seed {state.seed});"
                " pick another --data-dir"
            )
        if not state.loaded:
            raise SystemExit(f"{data_dir} holds a half-loaded data set; delete it")
        _say(f"reusing {state.rows:,} rows loaded earlier in {state.load_s} s")
        return state
    operator = (data_dir / "operator.token").read_text().strip()
    tenants, devices = await bootstrap(
        channel,
        operator,
        tenants=1,
        employees=args.employees,
        devices=args.employees,
        run_label="reports",
        say=_say,
    )
    reports = await admin_pb2_grpc.AdminServiceStub(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="bench", role=common_pb2.ROLE_REPORTS),
        metadata=auth(tenants[0].admin_key),
    )
    state = State(
        **{key: getattr(args, key) for key in DATA_KEYS},
        tenant_id=tenants[0].tenant_id,
        admin_key=tenants[0].admin_key,
        reports_key=reports.api_key,
        anchor_ms=ist_midnight_ms(int(time.time() * 1000)),
    )
    path.write_text(json.dumps(asdict(state), indent=1))
    master_key = base64.b64decode((data_dir / "master.key").read_bytes().strip())
    state = await load(db, channel, state, devices, master_key)
    path.write_text(json.dumps(asdict(state), indent=1))
    return state


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the service on ``--data-dir``, loads (or reuses) the data and measures."""
    logs.configure("warning")
    config = Config(listen="127.0.0.1:0", data_dir=args.data_dir, grace_period_s=5.0)
    svc = Service(config)
    port = await svc.start()
    _say(f"service on port {port}, data in {args.data_dir}")
    db = Database(config.dsn.reveal(), config.database)
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            state = await _state(db, channel, args.data_dir, args)
            before = await parts(db)
            _say(f"parts after load: {before}")
            waited = await settle_merges(db)
            settled = await parts(db)
            _say(f"background merges settled after {waited:.0f} s: {settled}")
            optimized: dict[str, Any] | None = None
            if args.optimize:
                for target in ("calls", NAIVE.calls):
                    t = time.perf_counter()
                    await db.command(f"OPTIMIZE TABLE {target} FINAL")
                    _say(f"OPTIMIZE TABLE {target} FINAL in {time.perf_counter() - t:.1f} s")
                optimized = await parts(db)
                _say(f"parts after OPTIMIZE FINAL: {optimized}")
            results, checks, cold = await measure(
                db, channel, state, args.repeat, args.naive_repeat
            )
    finally:
        db.close()
        await svc.stop()
    label = "optimized" if args.optimize else "background merges"
    measured = optimized or settled
    print(f"merge state: {label}; first calls (rollups made on the way): {cold} ms")
    print(
        f"at rest: calls {measured['calls']['bytes_per_row']} bytes a call,"
        f" {NAIVE.calls} {measured[NAIVE.calls]['bytes_per_row']},"
        f" parties {measured[PARTIES]['rows']:,} rows in {measured[PARTIES]['mib']} MiB"
    )
    print(table(results))
    failed = [name for name, ok in checks.items() if not ok]
    print("checks: " + ("all passed" if not failed else f"FAILED: {failed}"))
    return {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "data": {
            **{key: getattr(state, key) for key in ("calls", "employees", "days")},
            "rows_inserted": state.rows,
            **{key: getattr(state, key) for key in ("load_s", "anchor_ms")},
            "excluded_numbers": len(state.excluded),
            "leads": LEADS,
        },
        "merge_state": label,
        "parts_after_load": before,
        "parts_measured": measured,
        # At rest, as measured: the calls table alone, and with the parties of its calls.
        "bytes_per_call": measured["calls"]["bytes_per_row"],
        "bytes_per_call_with_parties": round(
            (
                measured["calls"]["bytes_per_row"] * measured["calls"]["rows"]
                + measured[PARTIES]["bytes_per_row"] * measured[PARTIES]["rows"]
            )
            / max(measured["calls"]["rows"], 1),
            1,
        ),
        "repeat": args.repeat,
        "naive_repeat": args.naive_repeat,
        "first_calls_ms": cold,
        "results": results,
        "checks": checks,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the flags, runs the benchmark, writes ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_flags(
        parser,
        ("--calls", 20_000_000),
        ("--employees", 2_000),
        ("--days", 365),
        ("--repeat", 20),
        ("--naive-repeat", 5),
        ("--seed", 7),
        ("--data-dir", Path),
        ("--reuse", False, "keep (and reuse) the data dir"),
        ("--optimize", False, "OPTIMIZE .. FINAL before timing"),
        ("--out", Path("loadtest/results/reports.json")),
    )
    args = parser.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = (
            Path("/tmp/bench-reports") if args.reuse else Path(tempfile.mkdtemp("-bench-reports"))
        )
    args.data_dir = args.data_dir.resolve()
    if not args.reuse and (args.data_dir / STATE_FILE).exists():
        raise SystemExit(f"{args.data_dir} holds an earlier run; pass --reuse or remove it")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = uvloop.run(run(args))
    finally:
        if not args.reuse:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    write_json(args.out, report)


if __name__ == "__main__":
    main()
