"""Report latency on a year of calls, next to the same reports computed naively in the same run.

Run ``python -m callsight.loadtest.bench_reports [--calls 20000000] [--employees 2000] [--days 365]
[--repeat 20] [--data-dir DIR] [--reuse] [--out loadtest/results/reports.json]``.

1. Set-up: starts an in-process ``Service`` on ``--data-dir`` (embedded chDB), creates one tenant
   through AdminService, its employees through CreateEmployee, a REPORTS key, ten excluded
   numbers and 2,000 leads, and writes one device per employee straight into ``devices`` (one
   insert instead of 4,000 enrollment RPCs; reports never read devices).
2. Generates ``--calls`` calls with numpy, in columns: each employee calls a pool of ~200
   clients drawn (skewed) from a shared pool of 300,000 numbers, with a realistic type mix and
   many zero durations, within Kolkata working hours over the last ``--days`` local days. Each
   distinct number, name and note is encrypted and blind-indexed once, with the tenant's keyring.
   About 1% of the calls arrive a second time (re-sent, same version) and 2% again later as a
   newer version with a note added, so FINAL has real work. Rows are inserted in arrival order,
   ~1M rows per ``insert_arrow``, into ``calls`` and into ``calls_naive``: the same rows in the
   dedup-only layout (ORDER BY (tenant_id, device_id, call_id), no time in the key, no
   partitions). Then the benchmark waits until background merges settle, as a running system
   would see its tables; ``--optimize`` runs ``OPTIMIZE TABLE .. FINAL`` on both tables first.
3. Measures every report through the real gRPC server with the REPORTS key: ``--repeat`` calls
   after two warm-ups, p50/p95 in ms, and the p50 of this process's CPU time per call (server,
   chDB and client all run here, so on a shared machine it shows the work when latency shows
   the neighbours). Rollups (``storage/rollups.py``) are dropped first, so the first
   CallSummary pays for making them; that call is reported on its own. The naive figures run
   the same SQL (built by the same ``storage`` functions, rollups off) against
   ``calls_naive FINAL`` directly, with no gRPC in the way, next to the same functions on
   ``calls`` (sql p50); both must give the same answer, and CallSummary's ``total_calls`` must
   equal the number of distinct calls generated in the range.

``--reuse`` keeps the data directory (default /tmp/bench-reports) and loads it only once;
otherwise the directory is deleted at the end. Progress goes to stderr; the table to stdout and,
as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import CALLS_SCHEMA
from callsight.pipeline.keys import TenantKeys
from callsight.server import logs
from callsight.server.app import Service
from callsight.server.config import Config
from callsight.storage import listings, summaries
from callsight.storage.database import Database
from callsight.storage.directory import Device, Directory
from callsight.storage.filters import CallFilter
from clickhouse_connect.driver.client import Client

from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, report_pb2, report_pb2_grpc

DAY_MS = 86_400_000
MINUTE_MS = 60_000
TIMEZONE = "Asia/Kolkata"
IST_OFFSET_MS = 19_800_000  # UTC+05:30, no daylight saving
SHARED_POOL = 300_000
CLIENTS_PER_EMPLOYEE = 200
CHUNK_ROWS = 1_000_000
RESENT_RATE = 0.01
UPDATED_RATE = 0.02
EXCLUDED_NUMBERS = 10
LEADS = 2_000
STATE_FILE = "bench-state.json"
NAIVE_TABLE = "calls_naive"
# CallType values with their share of calls: outgoing, incoming, missed, rejected, blocked,
# voicemail, answered externally.
TYPES = np.array([2, 1, 3, 5, 6, 4, 7], dtype=np.uint8)
TYPE_SHARES = np.array([0.40, 0.35, 0.15, 0.05, 0.02, 0.02, 0.01])

Metadata = tuple[tuple[str, str], ...]
I64 = npt.NDArray[np.int64]


def _auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the calls --------------------------------------------------------------------------------


@dataclass
class Calls:
    """The distinct calls, one row each at its first version, sorted by start."""

    employee: npt.NDArray[np.int32]  # index into the employees
    client: npt.NDArray[np.int32]  # index into the shared number pool
    type: npt.NDArray[np.uint8]
    started_ms: I64
    duration_s: npt.NDArray[np.uint32]
    call_no: npt.NDArray[np.int64]  # call_id within the device
    sim_slot: npt.NDArray[np.int32]
    synced_ms: I64


def local_midnight_ms(now_ms: int) -> int:
    """The start of today in Kolkata, as epoch ms."""
    return (now_ms + IST_OFFSET_MS) // DAY_MS * DAY_MS - IST_OFFSET_MS


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
    kind = TYPES[rng.choice(len(TYPES), size=n, p=TYPE_SHARES)]
    talk = np.minimum(rng.lognormal(np.log(70.0), 1.1, n), 3600).astype(np.uint32) + 1
    connected = np.zeros(n, dtype=bool)
    u = rng.random(n)
    connected |= (kind == 2) & (u < 0.55)
    connected |= (kind == 1) & (u < 0.92)
    connected |= (kind == 4) & (u < 0.5)
    duration = np.where(connected, talk, 0).astype(np.uint32)
    # Local working hours, 09:00-20:00 Kolkata, busiest late morning and afternoon.
    day = rng.integers(0, days, n)
    peak = np.where(rng.random(n) < 0.55, 11.5, 16.0)
    hour = np.clip(rng.normal(peak, 1.8), 9.0, 19.99)
    first_day_ms = anchor_ms - days * DAY_MS
    started = first_day_ms + day * DAY_MS + (hour * 3_600_000).astype(np.int64)
    started += rng.integers(0, 1000, n)  # millisecond jitter, as phones report
    order = np.argsort(started, kind="stable")
    employee, client, kind = employee[order], client[order], kind[order]
    duration, started = duration[order], started[order]
    # Android numbers its call log per device: call ids grow with time.
    by_employee = np.argsort(employee, kind="stable")
    counts = np.bincount(employee, minlength=employees)
    firsts = np.repeat(np.cumsum(counts) - counts, counts)
    call_no = np.empty(n, dtype=np.int64)
    call_no[by_employee] = np.arange(n) - firsts + 1
    sim_slot = (rng.random(n) < 0.2).astype(np.int32)
    # Devices sync shortly after a call ends.
    synced = started + duration.astype(np.int64) * 1000 + rng.integers(5_000, 10 * MINUTE_MS, n)
    synced = np.minimum(synced, anchor_ms - 1)
    calls = Calls(employee, client, kind, started, duration, call_no, sim_slot, synced)
    return calls, pools


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
    first = np.arange(n, dtype=np.int64)
    resent = np.sort(rng.choice(n, size=int(n * RESENT_RATE), replace=False))
    updated = np.sort(rng.choice(n, size=int(n * UPDATED_RATE), replace=False))
    resent_sync = calls.synced_ms[resent] + rng.integers(MINUTE_MS, 120 * MINUTE_MS, len(resent))
    # A note typed between ten minutes and three days after the call.
    update_version = calls.started_ms[updated] + rng.integers(
        10 * MINUTE_MS, 3 * DAY_MS, len(updated)
    )
    update_version = np.minimum(update_version, anchor_ms - MINUTE_MS)
    update_sync = np.minimum(
        update_version + rng.integers(5_000, 5 * MINUTE_MS, len(updated)), anchor_ms - 1
    )
    index = np.concatenate([first, resent, updated])
    version = np.concatenate([calls.started_ms, calls.started_ms[resent], update_version])
    note = np.concatenate(
        [
            np.zeros(n + len(resent), dtype=np.int32),
            rng.integers(1, notes, len(updated)).astype(np.int32),
        ]
    )
    synced = np.concatenate([calls.synced_ms, np.minimum(resent_sync, anchor_ms - 1), update_sync])
    order = np.argsort(synced, kind="stable")
    return Arrivals(
        index[order], version[order], note[order], synced[order], len(resent), len(updated)
    )


@dataclass
class Pools:
    """Per-entity Arrow values that the rows take from (encrypted once each)."""

    tenant: pa.Array
    devices: pa.Array
    employees: pa.Array
    sims: pa.Array  # employee * 2 + sim_slot
    bidx: pa.Array
    number_enc: pa.Array
    name_enc: pa.Array
    notes: pa.Array


FIRST_NAMES = ["Asha", "Ravi", "Meera", "Arjun", "Priya", "Vikram", "Neha", "Kiran", "Sunil"]
LAST_NAMES = ["Sharma", "Patel", "Iyer", "Khan", "Reddy", "Gupta", "Nair", "Das", "Singh"]
NOTES = [
    "call back tomorrow",
    "interested, send quote",
    "asked for a demo",
    "not interested",
    "wrong number",
    "follow up next week",
    "price too high",
    "meeting fixed",
]


def number_pool(rng: np.random.Generator) -> list[str]:
    """The shared pool of Indian mobile numbers, E.164, distinct."""
    drawn = np.unique(rng.integers(6_000_000_000, 10_000_000_000, int(SHARED_POOL * 1.05)))
    rng.shuffle(drawn)
    return [f"+91{n}" for n in drawn[:SHARED_POOL]]


def build_pools(
    rng: np.random.Generator,
    keyring: Keyring,
    tenant_id: str,
    employee_ids: Sequence[str],
    device_ids: Sequence[str],
    numbers: Sequence[str],
) -> Pools:
    """Encrypts and blind-indexes each distinct number, name and note once."""
    cipher = keyring.current
    named = rng.random(len(numbers)) < 0.6
    first = rng.integers(0, len(FIRST_NAMES), len(numbers))
    last = rng.integers(0, len(LAST_NAMES), len(numbers))
    names = [
        f"{FIRST_NAMES[f]} {LAST_NAMES[s]} {i % 997}" if ok else ""
        for i, (ok, f, s) in enumerate(zip(named, first, last, strict=True))
    ]
    sims = [f"8991{i:015d}" for i in range(2 * len(employee_ids))]
    return Pools(
        tenant=pa.array([tenant_id], pa.string()),
        devices=pa.array(list(device_ids), pa.string()),
        employees=pa.array(list(employee_ids), pa.string()),
        sims=pa.array(sims, pa.string()),
        bidx=pa.array(cipher.blind_index_many(numbers), pa.binary(32)),
        number_enc=pa.array(cipher.encrypt_many(numbers), pa.binary()),
        name_enc=pa.array(cipher.encrypt_many(names), pa.binary()),
        notes=pa.array(cipher.encrypt_many(["", *NOTES]), pa.binary()),
    )


def _timestamps(ms: I64) -> pa.Array:
    return pa.array(ms, type=pa.timestamp("ms", tz="UTC"))


def chunk_table(calls: Calls, rows: Arrivals, start: int, stop: int, pools: Pools) -> pa.Table:
    """Rows ``start:stop`` of the arrivals as an Arrow table in CALLS_SCHEMA."""
    i = rows.index[start:stop]
    n = len(i)
    employee = calls.employee[i]
    client = calls.client[i]
    call_id = pc.cast(pa.array(calls.call_no[i]), pa.string())
    duration = calls.duration_s[i]
    recorded = (duration > 0) & (call_id_hash(calls.call_no[i]) % 10 == 0)
    recording = pc.if_else(
        pa.array(recorded),
        pc.binary_join_element_wise("content://recordings/", call_id, ".m4a", ""),
        "",
    )
    columns = [
        pools.tenant.take(pa.array(np.zeros(n, dtype=np.int32))),
        pools.devices.take(pa.array(employee)),
        call_id,
        pools.employees.take(pa.array(employee)),
        pools.bidx.take(pa.array(client)),
        pools.number_enc.take(pa.array(client)),
        pools.name_enc.take(pa.array(client)),
        pa.array(calls.type[i], pa.uint8()),
        _timestamps(calls.started_ms[i]),
        pa.array(duration, pa.uint32()),
        pa.array(calls.sim_slot[i], pa.int32()),
        pools.sims.take(pa.array(employee * 2 + calls.sim_slot[i])),
        pools.notes.take(pa.array(rows.note[start:stop])),
        recording,
        pa.array(rows.version[start:stop].astype(np.uint64), pa.uint64()),
        _timestamps(rows.synced_ms[start:stop]),
    ]
    return pa.Table.from_arrays(columns, schema=CALLS_SCHEMA)


def call_id_hash(values: I64) -> I64:
    """A cheap deterministic scramble, so that every tenth call (not every tenth id) records."""
    return (values * 2_654_435_761) % 1_000_003


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


async def create_tenant(channel: grpc.aio.Channel, operator: str) -> tuple[str, str, str]:
    """A tenant (Kolkata, India) with its admin key and a REPORTS key."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    tenant = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(name="bench-reports", default_region="IN", timezone=TIMEZONE),
        metadata=_auth(operator),
    )
    reports = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="bench", role=common_pb2.ROLE_REPORTS),
        metadata=_auth(tenant.admin_api_key),
    )
    return tenant.tenant_id, tenant.admin_api_key, reports.api_key


async def create_employees(
    channel: grpc.aio.Channel, admin_key: str, count: int, concurrency: int = 8
) -> list[str]:
    """``count`` employees through CreateEmployee, in index order."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    limit = asyncio.Semaphore(concurrency)
    tags = ["north", "south", "east", "west"]

    async def one(i: int) -> str:
        async with limit:
            response = await admin.CreateEmployee(
                admin_pb2.CreateEmployeeRequest(
                    name=f"{FIRST_NAMES[i % 9]} {LAST_NAMES[i // 9 % 9]} {i}",
                    number=f"+9170{i:08d}",
                    tags=[tags[i % 4], "sales" if i % 3 else "support"],
                ),
                metadata=_auth(admin_key),
            )
            return response.employee_id

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def insert_devices(
    db: Database, tenant_id: str, employee_ids: Sequence[str], device_ids: Sequence[str]
) -> None:
    """One device per employee, written in one insert (reports never read devices)."""
    now_ms = int(time.time() * 1000)
    devices = [
        Device(
            tenant_id=tenant_id,
            device_id=device_id,
            employee_id=employee_id,
            token_hash=os.urandom(32),
            registered_at_ms=now_ms,
            model="Pixel 8",
            manufacturer="Google",
            android_version="14",
            sdk_int=34,
            app_version="1.0.0",
            version_code=100,
            sim_ids=(f"8991{2 * i:015d}", f"8991{2 * i + 1:015d}"),
            region="IN",
        )
        for i, (employee_id, device_id) in enumerate(zip(employee_ids, device_ids, strict=True))
    ]
    await Directory(db).put_devices(devices)


async def import_leads(
    channel: grpc.aio.Channel,
    admin_key: str,
    employee_ids: Sequence[str],
    pools: npt.NDArray[np.int32],
    numbers: Sequence[str],
    rng: np.random.Generator,
) -> int:
    """2,000 leads, each a client of the employee it is assigned to (EXPLICIT)."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    seen: set[int] = set()
    leads = []
    for i in range(LEADS):
        e = i % len(employee_ids)
        client = int(pools[e, int(rng.integers(0, CLIENTS_PER_EMPLOYEE))])
        if client in seen:
            continue
        seen.add(client)
        leads.append(
            admin_pb2.Lead(
                first_name=FIRST_NAMES[i % 9],
                last_name=LAST_NAMES[i % 7],
                company=f"Company {i}",
                primary_number=numbers[client],
                city="Pune",
                country="IN",
                tags=["bench"],
                employee_id=employee_ids[e],
            )
        )
    response = await admin.ImportLeads(
        admin_pb2.ImportLeadsRequest(leads=leads, strategy=admin_pb2.ASSIGNMENT_STRATEGY_EXPLICIT),
        metadata=_auth(admin_key),
    )
    return len(response.leads)


async def set_excluded(channel: grpc.aio.Channel, admin_key: str, numbers: Sequence[str]) -> None:
    await admin_pb2_grpc.AdminServiceStub(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=list(numbers)), metadata=_auth(admin_key)
    )


async def create_naive_table(db: Database) -> None:
    """``calls`` in the dedup-only layout: keyed by the call's identity, no time, no partitions."""
    await db.command(
        f"CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} AS calls"
        " ENGINE = ReplacingMergeTree(version)"
        " PARTITION BY tuple()"
        " ORDER BY (tenant_id, device_id, call_id)"
    )


def _inserter(target: str, rows: pa.Table) -> Callable[[Client], object]:
    return lambda client: client.insert_arrow(target, rows)


async def load(
    svc_db: Database,
    channel: grpc.aio.Channel,
    data_dir: Path,
    state: State,
    master_key: bytes,
) -> State:
    """Employees, devices, leads, excluded numbers and the calls, into both tables."""
    rng = np.random.default_rng(state.seed)
    started = time.perf_counter()
    employee_ids = await create_employees(channel, state.admin_key, state.employees)
    elapsed = time.perf_counter() - started
    _say(
        f"{len(employee_ids)} employees via gRPC CreateEmployee in {elapsed:.1f} s"
        f" ({len(employee_ids) / elapsed:.0f}/s)"
    )
    device_ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in employee_ids]
    await insert_devices(svc_db, state.tenant_id, employee_ids, device_ids)

    t = time.perf_counter()
    numbers = number_pool(rng)
    calls, pools = generate_calls(rng, state.calls, state.employees, state.days, state.anchor_ms)
    rows = arrivals(rng, calls, state.anchor_ms, len(NOTES) + 1)
    _say(
        f"generated {state.calls:,} calls + {rows.resent:,} re-sent + {rows.updated:,} updated"
        f" in {time.perf_counter() - t:.1f} s"
    )

    # Excluded: ten of the most shared numbers (a colleague, the office landline...).
    excluded_idx = list(range(EXCLUDED_NUMBERS))
    state.excluded = [numbers[i] for i in excluded_idx]
    await set_excluded(channel, state.admin_key, state.excluded)
    t = time.perf_counter()
    imported = await import_leads(channel, state.admin_key, employee_ids, pools, numbers, rng)
    _say(f"{imported} leads via gRPC ImportLeads in {time.perf_counter() - t:.1f} s")

    keyring = await TenantKeys(Directory(svc_db), master_key).keyring(state.tenant_id)
    t = time.perf_counter()
    arrow_pools = build_pools(rng, keyring, state.tenant_id, employee_ids, device_ids, numbers)
    _say(
        f"encrypted and blind-indexed {len(numbers):,} numbers and their names once"
        f" in {time.perf_counter() - t:.1f} s"
    )

    await create_naive_table(svc_db)
    total = len(rows.index)
    inserted = 0
    spent = {"calls": 0.0, NAIVE_TABLE: 0.0, "build": 0.0}
    load_started = time.perf_counter()
    for start in range(0, total, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, total)
        t = time.perf_counter()
        table = chunk_table(calls, rows, start, stop, arrow_pools)
        spent["build"] += time.perf_counter() - t
        for target in ("calls", NAIVE_TABLE):
            t = time.perf_counter()
            await svc_db.run(_inserter(target, table))
            spent[target] += time.perf_counter() - t
        inserted = stop
        elapsed = time.perf_counter() - load_started
        _say(
            f"loaded {inserted:,}/{total:,} rows into both tables in {elapsed:.0f} s"
            f" (calls {inserted / spent['calls']:,.0f} rows/s,"
            f" {NAIVE_TABLE} {inserted / spent[NAIVE_TABLE]:,.0f} rows/s,"
            f" build {inserted / spent['build']:,.0f} rows/s)"
        )
    state.rows = total
    state.load_s = round(time.perf_counter() - load_started, 1)

    excluded_mask = np.isin(calls.client, np.array(excluded_idx))
    for days in (30, state.days):
        in_range = calls.started_ms >= state.anchor_ms - days * DAY_MS
        state.truth[str(days)] = int(np.count_nonzero(in_range & ~excluded_mask))
    state.loaded = True
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    return state


# --- merges -------------------------------------------------------------------------------------


async def parts(db: Database) -> dict[str, Any]:
    """Active parts, rows and on-disk size per table."""
    rows = await db.query(
        "SELECT table, count(), sum(rows), sum(bytes_on_disk), uniqExact(partition),"
        " max(level) FROM system.parts WHERE database = currentDatabase() AND active"
        " AND table IN ('calls', {naive:String}) GROUP BY table ORDER BY table",
        {"naive": NAIVE_TABLE},
    )
    return {
        str(t): {
            "parts": int(p),
            "rows": int(r),
            "mib": round(int(b) / 2**20),
            "partitions": int(n),
            "max_level": int(level),
        }
        for t, p, r, b, n, level in rows
    }


async def settle_merges(db: Database, quiet_s: float = 10.0, limit_s: float = 900.0) -> float:
    """Waits until no merge has run for ``quiet_s`` (or ``limit_s`` passed); returns the wait."""
    started = time.perf_counter()
    quiet_since = time.perf_counter()
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
# straight against a database with the storage functions.
Rpc = Callable[[], Any]
Direct = Callable[[Database], Awaitable[Any]]
PAGE_WALK = 20


class NaiveDatabase(Database):
    """Runs the SQL it is given against ``calls_naive`` instead of ``calls``."""

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        binary: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]:
        naive = sql.replace(" calls FINAL", f" {NAIVE_TABLE} FINAL")
        if naive == sql:
            raise RuntimeError("report SQL does not read calls FINAL: nothing to make naive")
        return await super().query(naive, parameters, binary)


@dataclass
class Timing:
    """Latency of repeated calls; cpu is this process's CPU time (server, chDB and client)."""

    p50_ms: float
    p95_ms: float
    cpu_p50_ms: float
    first_ms: float
    runs: int


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int, warmups: int) -> Timing:
    """``warmups`` untimed calls (the first one's latency is kept), then ``repeat`` timed ones."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(warmups + repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        await fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    p50, p95 = np.percentile(wall[warmups:], [50, 95])
    return Timing(
        round(float(p50), 1),
        round(float(p95), 1),
        round(float(np.percentile(cpu[warmups:], 50)), 1),
        round(wall[0], 1),
        repeat,
    )


@dataclass
class Case:
    """One measured report: through gRPC, and optionally straight on ``calls`` and naively."""

    report: str
    range_days: int
    page: str
    target_ms: float | None
    rpc: Rpc
    direct: Direct | None = None
    naive: Direct | None = None


@dataclass
class Result:
    report: str
    range: str
    page: str
    p50_ms: float
    p95_ms: float
    cpu_p50_ms: float
    first_ms: float
    sql_p50_ms: float | None
    naive_p50_ms: float | None
    naive_p95_ms: float | None
    ratio: float | None
    target_ms: float | None
    met: bool | None


class Reports:
    """Builds the measured calls of one data set."""

    def __init__(self, channel: grpc.aio.Channel, state: State) -> None:
        self.stub = report_pb2_grpc.ReportServiceStub(channel)
        self.meta = _auth(state.reports_key)
        self.state = state
        self.snapshot_ms = int(time.time() * 1000)

    def request_filter(self, days: int) -> report_pb2.ReportFilter:
        anchor = self.state.anchor_ms
        return report_pb2.ReportFilter(from_ms=anchor - days * DAY_MS, to_ms=anchor)

    def call_filter(self, days: int) -> CallFilter:
        anchor = self.state.anchor_ms
        return CallFilter(self.state.tenant_id, anchor - days * DAY_MS, anchor, TIMEZONE)

    def rpc(self, name: str, days: int, token: str = "") -> Rpc:
        """The RPC ``name`` over the last ``days`` days (a page token for paged reports)."""
        method = getattr(self.stub, name)
        request_type = getattr(report_pb2, f"{name}Request")
        request = request_type(filter=self.request_filter(days))
        if token:
            request.page_token = token
        return lambda: method(request, metadata=self.meta)

    def summary(self, days: int, use_rollups: bool) -> Direct:
        f = self.call_filter(days)
        return lambda db: summaries.call_summary(db, f, use_rollups=use_rollups)

    def listing(self, fn: Callable[..., Awaitable[Any]], days: int) -> Direct:
        """The first page (100 rows and one more) of a paged listing."""
        f, snapshot = self.call_filter(days), self.snapshot_ms
        return lambda db: fn(db, f, snapshot, None, 101)


LISTINGS: dict[str, Callable[..., Awaitable[Any]]] = {
    "NeverAttended": listings.never_attended,
    "NotPickedByClient": listings.not_picked_by_client,
    "UniqueClients": listings.unique_clients,
}


def cases(r: Reports, year: int, tokens: Mapping[str, str]) -> list[Case]:
    """Every measured report; ``tokens`` holds the page tokens of the later pages."""
    out = [
        Case(
            "CallSummary",
            30,
            "",
            200,
            r.rpc("CallSummary", 30),
            r.summary(30, True),
            r.summary(30, False),
        ),
        Case(
            "CallSummary",
            year,
            "",
            1000,
            r.rpc("CallSummary", year),
            r.summary(year, True),
            r.summary(year, False),
        ),
        Case("EmployeeSummary", 30, "first", None, r.rpc("EmployeeSummary", 30)),
        Case("CallAnalysis", 30, "", None, r.rpc("CallAnalysis", 30)),
        Case("HourlyAnalytics", 30, "", None, r.rpc("HourlyAnalytics", 30)),
        Case("DaywiseAnalytics", 30, "", None, r.rpc("DaywiseAnalytics", 30)),
        Case("WorkingHours", 30, "", None, r.rpc("WorkingHours", 30)),
    ]
    for name, fn in LISTINGS.items():
        first = r.listing(fn, 30)
        out.append(Case(name, 30, "first", 500, r.rpc(name, 30), first, first))
        token = tokens.get(f"{name}/30")
        if token:
            out.append(Case(name, 30, f"page {PAGE_WALK}", 500, r.rpc(name, 30, token)))
    for days in (30, year):
        history = r.listing(listings.call_history, days) if days == 30 else None
        out.append(
            Case("CallHistory", days, "first", 100, r.rpc("CallHistory", days), history, history)
        )
        token = tokens.get(f"CallHistory/{days}")
        if token:
            out.append(
                Case(
                    "CallHistory", days, f"page {PAGE_WALK}", 100, r.rpc("CallHistory", days, token)
                )
            )
    out.append(Case("LeadActivity", 30, "first", None, r.rpc("LeadActivity", 30)))
    return out


async def walk_tokens(r: Reports, year: int) -> dict[str, str]:
    """The page token of page ``PAGE_WALK`` of each listing, walking there page by page."""
    walks = [(name, 30) for name in LISTINGS] + [("CallHistory", 30), ("CallHistory", year)]
    tokens: dict[str, str] = {}
    for name, days in walks:
        token = ""
        started = time.perf_counter()
        for page in range(1, PAGE_WALK):
            token = (await r.rpc(name, days, token)()).next_page_token
            if not token:
                _say(f"{name} {days} d has only {page} pages")
                break
        else:
            tokens[f"{name}/{days}"] = token
        elapsed = time.perf_counter() - started
        _say(f"walked {name} {days} d to page {PAGE_WALK} in {elapsed:.1f} s")
    return tokens


async def measure(
    svc_db: Database,
    naive_db: Database,
    channel: grpc.aio.Channel,
    state: State,
    repeat: int,
    naive_repeat: int,
) -> tuple[list[Result], dict[str, Any], dict[str, float]]:
    """Times every case; checks answers against the naive table and the generated truth."""
    r = Reports(channel, state)
    checks: dict[str, Any] = {}
    # Rollups are made by the first summary that needs them: time that call on its own.
    await svc_db.command("TRUNCATE TABLE call_rollup_runs")
    await svc_db.command("TRUNCATE TABLE call_rollups")
    cold: dict[str, float] = {}
    for days in (state.days, 30):
        started = time.perf_counter()
        summary = (await r.rpc("CallSummary", days)()).summary
        cold[f"CallSummary {days} d"] = round((time.perf_counter() - started) * 1000, 1)
        want = state.truth[str(days)]
        key = f"CallSummary {days} d total_calls == distinct calls generated"
        checks[key] = summary.total_calls == want
        if not checks[key]:
            _say(f"CHECK FAILED: {days} d total_calls {summary.total_calls} != {want}")
    _say(f"first calls, rollups made on the way: {cold} ms")
    tokens = await walk_tokens(r, state.days)
    results = []
    for case in cases(r, state.days, tokens):
        span = f"{case.range_days} d"
        t = await timed(case.rpc, repeat, 2)
        sql: Timing | None = None
        naive: Timing | None = None
        if case.direct is not None and case.naive is not None:
            direct, naive_fn = case.direct, case.naive
            key = f"{case.report} {span} {case.page}".strip() + " same answer as naive"
            checks[key] = bool(await direct(svc_db) == await naive_fn(naive_db))
            if not checks[key]:
                _say(f"CHECK FAILED: {key}")
            sql = await timed(functools.partial(direct, svc_db), naive_repeat, 1)
            naive = await timed(functools.partial(naive_fn, naive_db), naive_repeat, 0)
        result = Result(
            report=case.report,
            range=span,
            page=case.page,
            p50_ms=t.p50_ms,
            p95_ms=t.p95_ms,
            cpu_p50_ms=t.cpu_p50_ms,
            first_ms=t.first_ms,
            sql_p50_ms=sql.p50_ms if sql else None,
            naive_p50_ms=naive.p50_ms if naive else None,
            naive_p95_ms=naive.p95_ms if naive else None,
            ratio=round(naive.p50_ms / t.p50_ms, 1) if naive and t.p50_ms else None,
            target_ms=case.target_ms,
            met=None if case.target_ms is None else t.p50_ms <= case.target_ms,
        )
        results.append(result)
        _say(
            f"{case.report} {span} {case.page}: p50 {t.p50_ms} ms p95 {t.p95_ms} ms"
            f" cpu {t.cpu_p50_ms} ms" + (f", naive p50 {naive.p50_ms} ms" if naive else "")
        )
    return results, checks, cold


def table(results: Sequence[Result]) -> str:
    """The results as a fixed-width table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"

    header = (
        f"{'report':<18} {'range':>6} {'page':>8} {'p50':>7} {'p95':>7} {'cpu p50':>8}"
        f" {'sql p50':>8} {'naive p50':>10} {'ratio':>7} {'target':>7} {'met':>4}"
    )
    lines = [header + "   (ms)", "-" * len(header)]
    for r in results:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else "-"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(
            f"{r.report:<18} {r.range:>6} {r.page or '-':>8} {ms(r.p50_ms):>7} {ms(r.p95_ms):>7}"
            f" {ms(r.cpu_p50_ms):>8} {ms(r.sql_p50_ms):>8} {ms(r.naive_p50_ms):>10} {ratio:>7}"
            f" {ms(r.target_ms):>7} {met:>4}"
        )
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir: Path = args.data_dir
    logs.configure("warning")
    config = Config(listen="127.0.0.1:0", data_dir=data_dir, grace_period_s=5.0)
    svc = Service(config)
    t = time.perf_counter()
    port = await svc.start()
    _say(f"service on port {port}, data in {data_dir} (started in {time.perf_counter() - t:.1f} s)")
    master_key = base64.b64decode((data_dir / "master.key").read_bytes().strip())
    operator = (data_dir / "operator.token").read_text().strip()
    svc_db = Database(config.dsn.reveal(), config.database)
    naive_db = NaiveDatabase(config.dsn.reveal(), config.database)
    state_path = data_dir / STATE_FILE
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        ) as channel:
            state: State | None = None
            if state_path.exists():
                state = State(**json.loads(state_path.read_text()))
                wanted = (args.calls, args.employees, args.days, args.seed)
                if (state.calls, state.employees, state.days, state.seed) != wanted:
                    raise SystemExit(
                        f"{data_dir} holds a different data set ({state.calls} calls,"
                        f" {state.employees} employees, {state.days} days, seed {state.seed});"
                        " pick another --data-dir"
                    )
                if not state.loaded:
                    raise SystemExit(f"{data_dir} holds a half-loaded data set; delete it")
                _say(f"reusing {state.rows:,} rows loaded earlier in {state.load_s} s")
            if state is None:
                tenant_id, admin_key, reports_key = await create_tenant(channel, operator)
                state = State(
                    calls=args.calls,
                    employees=args.employees,
                    days=args.days,
                    seed=args.seed,
                    tenant_id=tenant_id,
                    admin_key=admin_key,
                    reports_key=reports_key,
                    anchor_ms=local_midnight_ms(int(time.time() * 1000)),
                )
                state_path.write_text(json.dumps(asdict(state), indent=1))
                state = await load(svc_db, channel, data_dir, state, master_key)

            before = await parts(svc_db)
            _say(f"parts after load: {before}")
            waited = await settle_merges(svc_db)
            settled = await parts(svc_db)
            _say(f"background merges settled after {waited:.0f} s: {settled}")
            optimized: dict[str, Any] | None = None
            if args.optimize:
                for target in ("calls", NAIVE_TABLE):
                    t = time.perf_counter()
                    await svc_db.command(f"OPTIMIZE TABLE {target} FINAL")
                    _say(f"OPTIMIZE TABLE {target} FINAL in {time.perf_counter() - t:.1f} s")
                optimized = await parts(svc_db)
                _say(f"parts after OPTIMIZE FINAL: {optimized}")
            label = "optimized" if args.optimize else "background merges"
            results, checks, cold = await measure(
                svc_db, naive_db, channel, state, args.repeat, args.naive_repeat
            )
    finally:
        naive_db.close()
        svc_db.close()
        await svc.stop()
    print(f"merge state: {label}; first calls (rollups made on the way): {cold} ms")
    print(table(results))
    failed = [name for name, ok in checks.items() if not ok]
    print("checks: " + ("all passed" if not failed else f"FAILED: {failed}"))
    return {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "data": {
            "calls": state.calls,
            "employees": state.employees,
            "days": state.days,
            "rows_inserted": state.rows,
            "load_s": state.load_s,
            "anchor_ms": state.anchor_ms,
            "excluded_numbers": len(state.excluded),
            "leads": LEADS,
        },
        "merge_state": label,
        "parts_after_load": before,
        "parts_measured": optimized or settled,
        "repeat": args.repeat,
        "naive_repeat": args.naive_repeat,
        "first_calls_ms": cold,
        "results": [asdict(r) for r in results],
        "checks": checks,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000_000)
    parser.add_argument("--employees", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--naive-repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="keep (and reuse) the data dir")
    parser.add_argument("--optimize", action="store_true", help="OPTIMIZE .. FINAL before timing")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/reports.json"))
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
        import uvloop

        report = uvloop.run(run(args))
    finally:
        if not args.reuse:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
