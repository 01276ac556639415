"""``python -m callsight.loadtest device-health``: DeviceHealth over a fleet's telemetry history.

DeviceHealth judges every device of a tenant by its latest telemetry sample. The query reads it
from ``telemetry_latest`` (one row per device, kept by a materialized view); before migration
0017 it took ``argMax`` over the whole ``telemetry`` table, which grows by a sample per phone per
sync (about 1M rows a day at 10,000 phones, kept 90 days). This benchmark fills a fresh embedded
database with ``--devices`` x ``--samples`` rows, then times the report's query both ways on the
same rows and prints the two latencies and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from callsight.server import logs
from callsight.storage import device_status
from callsight.storage.database import Database
from callsight.storage.migrator import migrate

TENANT = "bench-tenant"
MINUTE_MS = 60_000
INSERT_SAMPLES = 50  # samples per device in one insert (about 500k rows at 10,000 devices)
RUNS = 5

# The latest-sample join as it was before migration 0017: argMax over the device's history.
_BY_HISTORY = """LEFT JOIN
(
    SELECT device_id, toUnixTimestamp64Milli(max(captured_at)) AS telemetry_at_ms,
        argMax(battery_pct, captured_at) AS battery_pct,
        argMax(charging, captured_at) AS charging,
        argMax(network, captured_at) AS network,
        argMax(app_version, captured_at) AS app_version,
        argMax(android_version, captured_at) AS android_version
    FROM telemetry
    WHERE tenant_id = {tenant:String} AND device_id IN (SELECT device_id FROM page)
    GROUP BY device_id
) AS tm ON tm.device_id = p.device_id
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's flags."""
    parser.add_argument("--devices", type=int, default=10_000, help="devices of the tenant")
    parser.add_argument(
        "--samples", type=int, default=300, help="telemetry samples per device, a minute apart"
    )
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")


def by_history(status: str) -> str:
    """``status`` (device_status's query) with the latest sample read the pre-0017 way."""
    start = status.index("LEFT JOIN\n(\n    SELECT device_id, toUnixTimestamp64Milli(latest.1)")
    return status[:start] + _BY_HISTORY


async def _fill(db: Database, devices: int, samples: int, now_ms: int) -> None:
    ids = [f"device-{i:06d}" for i in range(devices)]
    enrolled = pa.table(
        {
            "tenant_id": [TENANT] * devices,
            "device_id": ids,
            "employee_id": ids,
            "registered_at": pa.array([now_ms - 86_400_000] * devices, pa.timestamp("ms", "UTC")),
            "version": pa.array([1] * devices, pa.uint64()),
        }
    )
    await db.run(operator.methodcaller("insert_arrow", "devices", enrolled))
    rng = np.random.default_rng(1)
    for first in range(0, samples, INSERT_SAMPLES):
        count = min(INSERT_SAMPLES, samples - first)
        minutes = np.tile(np.arange(first, first + count), devices)
        rows = pa.table(
            {
                "tenant_id": pa.array([TENANT] * (devices * count)),
                "device_id": pa.array(np.repeat(np.array(ids, dtype=object), count).tolist()),
                "captured_at": pa.array(now_ms - minutes * MINUTE_MS, pa.timestamp("ms", "UTC")),
                "battery_pct": pa.array(rng.integers(0, 100, devices * count), pa.uint8()),
                "app_version": pa.array(["3.1.0"] * (devices * count)),
            }
        )
        await db.run(operator.methodcaller("insert_arrow", "telemetry", rows))


async def _time(db: Database, now_ms: int) -> tuple[float, int]:
    """The median of RUNS DeviceHealth queries (SILENT for an hour, 15 % battery, 3.2), and how
    many devices it listed."""
    seconds = []
    listed = 0
    for _ in range(RUNS):
        started = time.perf_counter()
        listed = len(await device_status.unhealthy(db, TENANT, now_ms - 3_600_000, 15, [3, 2]))
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[RUNS // 2], listed


async def measure(
    path: Path, devices: int, samples: int, say: Any = print, database: str = "device_health_bench"
) -> dict[str, Any]:
    """Fills ``database`` of the chDB under ``path`` and times DeviceHealth both ways; returns
    the figures. The database is dropped afterwards."""
    db = Database(f"chdb://{path}", database)
    try:
        await migrate(db)
        now_ms = int(time.time() * 1000)
        started = time.perf_counter()
        await _fill(db, devices, samples, now_ms)
        say(
            f"{devices:,} devices x {samples:,} samples: {devices * samples:,} telemetry rows in"
            f" {time.perf_counter() - started:.1f} s"
        )
        latest_s, listed = await _time(db, now_ms)
        status = device_status._STATUS
        device_status._STATUS = by_history(status)
        try:
            history_s, listed_before = await _time(db, now_ms)
        finally:
            device_status._STATUS = status
    finally:
        await db.command(f"DROP DATABASE IF EXISTS {db.name}")
        db.close()
    if listed != listed_before:
        raise AssertionError(f"the two queries listed {listed} and {listed_before} devices")
    figures = {
        "devices": devices,
        "samples_per_device": samples,
        "telemetry_rows": devices * samples,
        "listed": listed,
        "latest_table_ms": round(latest_s * 1000, 1),
        "history_argmax_ms": round(history_s * 1000, 1),
        "speedup": round(history_s / latest_s, 2),
    }
    say(
        f"DeviceHealth p50 of {RUNS}: {figures['latest_table_ms']:,} ms from telemetry_latest,"
        f" {figures['history_argmax_ms']:,} ms by argMax over the history"
        f" ({figures['speedup']}x); {listed:,} devices listed"
    )
    return figures


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark in a fresh temporary directory."""
    if args.devices < 1 or args.samples < 1:
        print("--devices and --samples must be at least 1")
        return 2
    logs.configure("warning")  # not a line per migration
    with tempfile.TemporaryDirectory(prefix="callsight-device-health-") as scratch:
        figures = asyncio.run(measure(Path(scratch) / "clickhouse", args.devices, args.samples))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
