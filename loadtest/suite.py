"""The standard short suite behind ``python -m callsight.loadtest bench`` and ``make bench``.

A few minutes on 2 cores:

1. Starts ``callsight serve`` on a temporary data directory (``loadtest.server.ServerProcess``).
2. Runs a backfill fleet against it (``loadtest.fleet.run_fleet``): tenants, employees and
   devices through the public API, every device streaming its history, with a few injected
   duplicates, then the verification against the reports.
3. Calls the reports for a short while on the data just ingested (``loadtest.report_load``), with
   the fleet's first tenant's ADMIN key, once the fleet is done (the two would share the cores);
   every RPC and range at least once, however slow.
4. Stops the server and counts the rows in its chDB from a child process (direct verification).
5. Measures the ceilings on the fleet's own batches, regenerated (``loadtest.ceilings``).
6. Writes ``loadtest/results/latest.json``: the fleet's figures (the keys of
   ``python -m callsight.loadtest fleet``), ``ceilings`` and ``ratios``, ``reports`` (p50/p95 per
   RPC and
   range), ``machine`` (CPUs, model, RAM, load average, Python, chDB, commit) and ``suite`` (the
   settings), and exits 1 when the verification failed, a batch was lost or a report call failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import uvloop
from callsight.loadtest import report_load
from callsight.loadtest.harness import ServerProcess
from callsight.loadtest.jsonfile import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("loadtest/results/latest.json")
GiB = 1024**3


# --- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average shows a busy, shared machine."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / GiB, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "chdb": _version("chdb"),
        "chdb_core": _version("chdb-core"),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "commit": _commit(),
    }


# --- the suite ----------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _counts_in_child(dsn: str, database: str, tenant_ids: list[str]) -> dict[str, Any]:
    """Direct counts from a spawned process: chDB opens one data path per process."""
    from callsight.loadtest.verify import database_counts_main

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(database_counts_main, dsn, database, tenant_ids).result()


def _reports_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report load, with p50/p95 per RPC and range."""
    return {
        "calls": result["calls"],
        "calls_per_s": result["calls_per_s"],
        "duration_s": result["duration_s"],
        "concurrency": result["concurrency"],
        "errors": result["errors"],
        "latency_ms": result["latency_ms"],
        "by_rpc": {
            key: {
                "calls": row["calls"],
                "errors": sum(row["errors"].values()),
                "p50_ms": row["latency_ms"]["p50"],
                "p95_ms": row["latency_ms"]["p95"],
            }
            for key, row in result["by_rpc"].items()
        },
    }


def _summary_lines(latest: dict[str, Any]) -> str:
    latency = latest["ack_latency_ms"]
    reports = latest.get("reports") or {}
    report_latency = reports.get("latency_ms") or {}

    def num(value: Any, digits: int = 0) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        return f"{value:,.{digits}f}"

    lines = [
        ("end-to-end records/s", num(latest["records_per_s"])),
        ("ack p99 ms", num(latency.get("p99"), 1)),
        *(
            (f"ratio to {key}", num(value, 3))
            for key, value in (latest.get("ratios") or {}).items()
        ),
        (
            "reports p50 / p95 ms",
            f"{num(report_latency.get('p50'), 1)} / {num(report_latency.get('p95'), 1)}",
        ),
        ("verify", "ok" if latest["verify"]["ok"] else "FAILED"),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest bench``: 0 when all was acked, verified and answered."""
    # The fleet is only needed here: the other subcommands work without it.
    from callsight.loadtest.fleet import (
        FleetOptions,
        draw_timeline,
        measure_fleet_ceilings,
        run_fleet,
    )
    from callsight.loadtest.report_out import table as fleet_table
    from callsight.loadtest.workload import WorkloadSpec

    started_at = datetime.now(UTC)
    host = machine()
    work = Path(tempfile.mkdtemp(prefix="callsight-bench-"))
    server = ServerProcess(work / "server", args=args.server_arg)
    reports: dict[str, Any] | None = None
    try:
        _say(f"starting server in {work / 'server'}")
        server.start()
        _say(f"server pid {server.pid} on {server.address}")
        options = FleetOptions(
            target=server.address,
            operator_token=server.operator_token,
            devices=args.devices,
            spec=WorkloadSpec(
                mode="backfill",
                days=args.days,
                calls_per_day=args.calls_per_day,
                duplicates=args.duplicates,
                seed=args.seed,
                now_ms=int(time.time() * 1000),
            ),
            client_processes=args.client_processes,
            server_pid=server.pid,
            progress=sys.stderr.isatty(),
            label="bench",
        )
        result = uvloop.run(run_fleet(options))
        if args.report_duration > 0 and result.tenants:
            _say(f"reports: {args.report_concurrency} callers for {args.report_duration:.0f} s")
            reports = uvloop.run(
                report_load.run_reports(
                    server.address,
                    result.tenants[0].admin_key,
                    args.report_rpcs,
                    args.report_ranges,
                    args.report_concurrency,
                    args.report_duration,
                    min_rounds=1,
                )
            )
        status = server.stop()
        _say(f"server stopped (exit status {status})")
        dsn = f"chdb://{(server.data_dir / 'clickhouse').resolve()}"
        try:
            counts = _counts_in_child(dsn, "callsight", [t.tenant_id for t in result.tenants])
            result.verification.add_database(counts)
        except Exception as exc:  # reported in the result; the reports were still compared
            result.verification.database_note = f"direct counts failed: {exc}"
            _say(result.verification.database_note)
    finally:
        if server.running():
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_ceilings:
        _say("ceilings on the fleet's own batches (regenerated)")
        result.ceilings = measure_fleet_ceilings(options.spec, options.devices, _say)
    data = result.to_json()
    latest = {
        **{k: v for k, v in data.items() if k not in ("config", "host")},
        "reports": _reports_summary(reports) if reports is not None else None,
        "machine": host,
        "suite": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
            "fleet": data["config"],
            "server_args": args.server_arg,
            "reports": {
                "rpcs": args.report_rpcs,
                "ranges": args.report_ranges,
                "concurrency": args.report_concurrency,
                "duration_s": args.report_duration,
            },
        },
    }
    print(fleet_table(data))
    if reports is not None:
        print()
        print(report_load.table(reports))
    print()
    print(_summary_lines(latest))
    write_json(args.out, latest)
    _say(f"wrote {args.out}")
    if args.plot:
        draw_timeline(data["timeline"], args.plot, _say)
    for difference in result.verification.differences[:30]:
        _say(f"  {difference}")
    report_failed = reports is not None and (bool(reports["errors"]) or not reports["calls"])
    return 0 if result.ok and not report_failed else 1


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest bench``; the defaults are the standard suite."""
    parser.add_argument("--devices", type=int, default=500, help="simulated phones")
    parser.add_argument("--days", type=int, default=5, help="days of history per device")
    parser.add_argument("--calls-per-day", type=float, default=60.0, help="mean per device")
    parser.add_argument(
        "--duplicates", type=float, default=0.02, help="share of calls sent twice (dedup work)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="processes the devices spread over"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `serve` flag, e.g. --server-arg=--batch-max-rows=20000 (repeatable)",
    )
    parser.add_argument(
        "--report-rpcs",
        type=report_load.names,
        default=list(report_load.RPCS),
        help="comma-separated report RPCs (default: all)",
    )
    parser.add_argument(
        "--report-ranges",
        type=report_load.names,
        default=list(report_load.DEFAULT_RANGES),
        help="comma-separated ranges ending now (default: 1d,30d,365d)",
    )
    parser.add_argument("--report-concurrency", type=int, default=4, help="report callers")
    parser.add_argument(
        "--report-duration", type=float, default=20.0, help="seconds of report calls; 0: none"
    )
    parser.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    parser.add_argument("--plot", type=Path, help="chart of the fleet's throughput and latency")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")


def main(argv: list[str] | None = None) -> int:
    """The same as ``python -m callsight.loadtest bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
