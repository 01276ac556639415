"""The commands that join the black-box fleet and the white-box figures: ``fleet`` and ``bench``.

``fleet`` (flags in ``loadtest.fleet``) runs ``run_fleet`` against a target or a spawned server,
then adds what only the white box sees (``loadtest.ceilings``): direct counts in the server's
database (``--dsn``, or the spawned server's chDB once stopped) and, with ``--ceilings``, the
ceilings on the fleet's own batches.

``bench`` (``make bench``) is the standard suite, several minutes on 2 cores, each scenario on
its own spawned server, one after another (they would share the cores):

* backfill: a fleet uploading its history in 500-record batches with a few duplicates, verified,
  then the reports called for a while on that data (``loadtest.report_load``; every RPC and
  range at least once), the server stopped, its chDB counted and its ``calls`` footprint measured
  after merges from a child process, and the ceilings on the fleet's own batches;
* steady (``--scenarios``): 10,000 phones syncing every 20 s, enrolled through the API, the
  server SIGKILLed and restarted half-way (a restart storm), verified;
* paced (``--scenarios``): calls in 500-record batches offered at half the backfill's
  end-to-end rate of the same run, 100 phones for 30 s: the ack p99 below saturation;
* small: 1,000 phones syncing every second (1-20 records a batch), about 1,040 batches/s; the
  ack p99 target is 500 ms when the server takes what is offered, 2 s when it is saturated;
* saturated: the same at 5,000 phones, about 5,200 batches/s offered: the batches/s it takes
  (target 5,000) and the ack p99 it keeps while it cannot take them all (target 2 s).

It writes ``loadtest/results/latest.json``: the backfill's ``fleet`` keys, ``reports``,
``machine``, ``suite``, ``scenarios`` (each run's figures) and ``targets`` (each figure next to
its issue-10 target); exit 1 when verification, a batch or a report failed (a missed target is
reported, not an error).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import uvloop

from callsight.loadtest import ceilings, report_load
from callsight.loadtest.common import add_flags, aligned, commit, num, say, write_json
from callsight.loadtest.fleet import (
    FleetOptions,
    FleetResult,
    options_from_args,
    problems,
    run_fleet,
    window,
)
from callsight.loadtest.harness import ServerProcess
from callsight.loadtest.report_out import table as fleet_table
from callsight.loadtest.workload import WorkloadSpec

DEFAULT_OUT = Path("loadtest/results/latest.json")
SCENARIOS = ("paced", "steady", "small", "saturated")  # after the backfill, each on a fresh server
GiB = 1024**3


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
        **{
            name.replace("-", "_"): _version(name)
            for name in ("chdb", "chdb-core", "grpcio", "protobuf")
        },
        "commit": commit(),
    }


def add_direct_counts(result: FleetResult, dsn: str, database: str) -> None:
    """Compares the database's own counts with the truth; a failure is noted, not raised."""
    try:
        counts = ceilings.counts_in_child(dsn, database, [t.tenant_id for t in result.tenants])
    except Exception as exc:  # reported in the result; the reports were still compared
        result.verification.database_note = f"direct counts failed: {exc}"
        say(result.verification.database_note)
        return
    result.verification.add_database(counts)


def draw_timeline(samples: list[dict[str, float]], path: Path) -> None:
    """``loadtest.plot.plot_timeline`` if matplotlib can be imported."""
    try:
        from callsight.loadtest.plot import plot_timeline  # matplotlib is optional

        plot_timeline(samples, str(path))
    except ImportError as exc:
        say(f"no chart drawn: {exc}")
        return
    say(f"wrote {path}")


@contextlib.contextmanager
def _spawned_server(prefix: str, args: list[str], keep: bool = False) -> Iterator[ServerProcess]:
    """``callsight serve`` on a temporary data directory, killed (and deleted) at the end."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = ServerProcess(work / "server", args=args)
    try:
        say(f"starting server in {work / 'server'}")
        server.start()
        say(f"server pid {server.pid} on {server.address}")
        yield server
    finally:
        if server.running():
            server.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _stop(server: ServerProcess) -> str:
    """Stops the server; the DSN of its embedded chDB, now free to open."""
    say(f"server stopped (exit status {server.stop()})")
    return f"chdb://{(server.data_dir / 'clickhouse').resolve()}"


def _finish(result: FleetResult, data: dict[str, Any], out: dict[str, Any], args: Any) -> None:
    """Writes ``out`` to ``--out``, draws ``--plot`` and tells what went wrong."""
    write_json(args.out, out)
    if args.plot:
        draw_timeline(data["timeline"], args.plot)
    if result.verification.differences:
        say(f"VERIFICATION FAILED: {len(result.verification.differences)} differences")
    for difference in result.verification.differences[:30]:
        say(f"  {difference}")
    for failure in result.client.failures[:10]:
        say(f"  {failure}")


def run_fleet_command(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest fleet``: exit 0 when every batch was acked and verified."""
    wrong = problems(args)
    for problem in wrong:
        print(f"error: {problem}", file=sys.stderr)
    if wrong:
        return 2
    spawned = _spawned_server("callsight-fleet-", args.server_arg, args.keep)
    with spawned if args.spawn_server else contextlib.nullcontext() as server:
        if server is not None:
            options = options_from_args(args, server.address, server.operator_token)
            options = replace(options, server_pid=server.pid)
        else:
            options = options_from_args(args, args.target, args.operator_token)
        result = uvloop.run(run_fleet(options, server_process=server))
        dsn = args.dsn
        if server is not None:
            dsn = _stop(server)
            if args.server_log:
                args.server_log.parent.mkdir(parents=True, exist_ok=True)
                args.server_log.write_text("".join(server.log))
        if options.verify and dsn:
            add_direct_counts(result, dsn, args.database)
        if args.ceilings:
            result.ceilings = ceilings.fleet_ceilings(options.spec, options.devices)
    data = result.to_json()
    print(fleet_table(data))
    _finish(result, data, data, args)
    return 0 if result.ok else 1


def _reports_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report load, with p50/p95 per RPC and range."""
    keys = ("calls", "calls_per_s", "duration_s", "concurrency", "errors", "refused", "latency_ms")
    return {key: result[key] for key in keys} | {
        "by_rpc": {
            key: {
                "calls": row["calls"],
                "errors": sum(row["errors"].values()),
                "refused": row["refused"],
                "p50_ms": row["latency_ms"]["p50"],
                "p95_ms": row["latency_ms"]["p95"],
            }
            for key, row in result["by_rpc"].items()
        },
    }


def _summary_lines(latest: dict[str, Any]) -> str:
    reports = (latest.get("reports") or {}).get("latency_ms") or {}
    return aligned(
        [
            ("end-to-end records/s", num(latest["records_per_s"])),
            ("ack p99 ms", num(latest["ack_latency_ms"].get("p99"), 1)),
            *((f"ratio to {key}", num(value, 3)) for key, value in latest["ratios"].items()),
            (
                "reports p50 / p95 ms",
                f"{num(reports.get('p50'), 1)} / {num(reports.get('p95'), 1)}",
            ),
            ("verify", "ok" if latest["verify"]["ok"] else "FAILED"),
        ]
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One figure of a scenario next to its target (issue 10)."""

    scenario: str
    figure: str
    value: float | None
    target: float
    higher_is_better: bool
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the figure reaches the target; None when it was not measured."""
        if self.value is None or not math.isfinite(self.value):
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_json(self) -> dict[str, Any]:
        """The row as written to ``targets`` in latest.json."""
        return {**asdict(self), "met": self.met}


def at_least(
    scenario: str, figure: str, value: float | None, target: float, note: str = ""
) -> Target:
    """A figure that must reach ``target`` or more."""
    return Target(scenario, figure, value, target, True, note)


def at_most(
    scenario: str, figure: str, value: float | None, target: float, note: str = ""
) -> Target:
    """A figure that must stay at ``target`` or below."""
    return Target(scenario, figure, value, target, False, note)


def _fleet(
    server: ServerProcess, devices: int, spec: WorkloadSpec, args: Any, label: str, **options: Any
) -> FleetOptions:
    return FleetOptions(
        target=server.address,
        operator_token=server.operator_token,
        devices=devices,
        spec=spec,
        client_processes=args.client_processes,
        server_pid=server.pid,
        progress=sys.stderr.isatty(),
        label=label,
        **options,
    )


def _steady_fleet(
    args: argparse.Namespace,
    name: str,
    devices: int,
    duration_s: float,
    sync_interval_s: float,
    calls_per_hour: float,
    restart_at_s: tuple[float, ...] = (),
    **spec_fields: Any,
) -> FleetResult:
    """A steady fleet without contacts on a fresh spawned server (SIGKILLed and restarted at
    ``restart_at_s``), verified against the reports and then the server's chDB;
    ``spec_fields`` override the workload's other fields (e.g. ``batch_size``)."""
    spec = WorkloadSpec(
        mode="steady",
        duration_s=duration_s,
        sync_interval_s=sync_interval_s,
        calls_per_hour=calls_per_hour,
        contacts=False,
        seed=args.seed,
        now_ms=int(time.time() * 1000),
        **spec_fields,
    )
    with _spawned_server(f"callsight-{name}-", args.server_arg) as server:
        options = _fleet(server, devices, spec, args, name, restart_at_s=restart_at_s)
        result = uvloop.run(run_fleet(options, server_process=server))
        add_direct_counts(result, _stop(server), "callsight")
    if not result.ok:
        _tell_why(name, result)
    return result


def _tell_why(name: str, result: FleetResult) -> None:
    """Says why a scenario's run is not ok: what differed, what failed, what was not acked."""
    verification = result.verification
    say(
        f"{name}: NOT OK: verification {'checked' if verification.checked else 'NOT checked'},"
        f" {len(verification.differences)} differences, {result.fatal_errors} fatal errors,"
        f" {result.client.batches:,} of {result.totals['batches']:,} batches acked"
    )
    for line in [*verification.differences[:30], *result.client.failures[:10]]:
        say(f"  {line}")


def _steady(args: argparse.Namespace) -> tuple[dict[str, Any], list[Target], bool]:
    """10,000 phones syncing every 20 s, a SIGKILL and restart half-way; figures and targets."""
    name = "steady"
    devices, duration, restart_at = args.steady_devices, args.steady_duration, args.restart_at
    say(f"scenario {name}: {devices:,} devices, {duration:.0f} s, restart at {restart_at:.0f} s")
    restarts = (restart_at,) if restart_at > 0 else ()
    result = _steady_fleet(args, name, devices, duration, 20.0, 20.0, restarts)
    data = result.to_json()
    before = window(result.client, 0, restart_at or math.inf)
    latency = before["ack_latency_ms"] or {}
    figures = {
        "devices": devices,
        "enrollment_s": result.setup_s.get("enrollment_s"),
        "batches_per_s": data["batches_per_s"],
        "before_restart": before,
        "errors": data["errors"],
        "server_peak_rss_mb": data["server_peak_rss_mb"],
        "restart": data["restart"],
        "verify": data["verify"]["ok"],
        "setup_s": data["setup_s"],
    }
    scale = "" if devices == 10_000 else f"{devices:,} devices, target for 10,000"
    targets = [
        at_most(name, "ack p99 ms (before the restart)", latency.get("p99"), 500),
        at_most(name, "errors (before the restart)", before["errors"], 0),
        at_most(name, "server peak RSS MiB", data["server_peak_rss_mb"], 1536),
        at_most(name, "enrollment s", result.setup_s.get("enrollment_s"), 20, scale),
    ]
    restart = data["restart"]
    if restart:
        targets += [
            at_most(
                name,
                "restart: every device served again, s after SERVING",
                restart["all_served_s"],
                30,
                "devices sync every 20 s",
            ),
            at_most(
                name,
                "restart: ack p99 ms in the 30 s after SERVING",
                restart["ack_p99_ms_first_30_s"],
                1000,
            ),
        ]
    targets.append(at_least(name, "verified (nothing lost or doubled)", float(result.ok), 1))
    return figures, targets, result.ok


def _small(args: argparse.Namespace) -> tuple[dict[str, Any], list[Target], bool]:
    """1,000 phones syncing every second with calls and telemetry: the ack p99 of a server that
    takes what is offered (2 s if it turned out saturated: taken < 95% of offered)."""
    return _small_batches(args, "small", args.small_devices, args.small_duration, rate=False)


def _saturated(args: argparse.Namespace) -> tuple[dict[str, Any], list[Target], bool]:
    """Small batches offered at the target's 5,000 a second (5,000 phones syncing every second):
    how many the server takes, and its ack p99 when that is less than offered; then the same
    phones against a servicer that only acks (``ceilings.small_batch_floor``): what gRPC alone
    takes from them on this machine."""
    devices, duration = args.saturated_devices, args.saturated_duration
    figures, targets, ok = _small_batches(args, "saturated", devices, duration, rate=True)
    say(f"scenario saturated: the same {devices:,} phones against a servicer that only acks")
    floor = ceilings.small_batch_floor(devices, duration, args.seed)
    figures["grpc_floor"] = floor
    say(
        f"  a do-nothing gRPC server took {floor['small_floor_batches_per_s']:,.0f} batches/s"
        f" ({floor['small_floor_errors']:,} errors, ack p99"
        f" {floor['small_floor_ack_p99_ms']:,.0f} ms)"
    )
    targets[0] = replace(
        targets[0],
        note=f"{targets[0].note}; a do-nothing gRPC server took"
        f" {floor['small_floor_batches_per_s']:,.0f}/s",
    )
    return figures, targets, ok


def _small_batches(
    args: argparse.Namespace, name: str, devices: int, duration: float, rate: bool
) -> tuple[dict[str, Any], list[Target], bool]:
    """Phones syncing every second with calls and telemetry (1-20 records a batch); saturated or
    not is measured (taken < 95% of offered) and picks the ack p99 target; ``rate``: also the
    batches/s target (meaningful only when at least that many are offered)."""
    say(f"scenario {name}: {devices:,} devices syncing every second for {duration:.0f} s")
    result = _steady_fleet(args, name, devices, duration, 1.0, 120.0)
    data = result.to_json()
    offered = data["generated"]["batches"] / duration
    figures = {
        "devices": devices,
        "offered_batches_per_s": offered,
        "batches_per_s": data["batches_per_s"],
        "records_per_s": data["records_per_s"],
        "ack_latency_ms": data["ack_latency_ms"],
        "errors": data["errors"],
        "server_cores": (data["server"] or {}).get("cores"),
        "client_cores": data["client_cpu"]["cores"],
        "client_loop_lag_ms": data["client_cpu"]["loop_lag_ms"],
        "verify": data["verify"]["ok"],
    }
    saturated = data["batches_per_s"] < 0.95 * offered
    targets = []
    if rate:
        targets.append(
            at_least(
                name,
                "batches/s of 1-20 records",
                data["batches_per_s"],
                5000,
                f"{offered:,.0f}/s offered",
            )
        )
    targets += [
        at_most(
            name,
            "ack p99 ms" + (" at saturation" if saturated else ""),
            data["ack_latency_ms"]["p99"],
            2000 if saturated else 500,
            f"{data['batches_per_s']:,.0f} of {offered:,.0f} batches/s taken",
        ),
        at_least(name, "verified (nothing lost or doubled)", float(result.ok), 1),
    ]
    return figures, targets, result.ok


def _paced(
    args: argparse.Namespace, backfill_records_per_s: float
) -> tuple[dict[str, Any], list[Target], bool]:
    """Calls in 500-record batches offered at half the backfill's end-to-end rate of this run:
    the ack p99 of a server below saturation with backfill-sized batches."""
    name = "paced"
    duration = args.paced_duration
    rate = backfill_records_per_s / 2
    # One full batch per sync, and at least five syncs a device: fewer devices when slow.
    devices = max(1, min(args.paced_devices, int(rate * duration / 5 / args.batch_size)))
    per_device = rate / devices
    sync_interval = args.batch_size / per_device
    say(
        f"scenario {name}: {devices:,} devices, {rate:,.0f} calls/s offered (half the backfill's"
        f" rate) in {args.batch_size}-record batches, every {sync_interval:.1f} s, {duration:.0f} s"
    )
    result = _steady_fleet(
        args,
        name,
        devices,
        duration,
        sync_interval,
        per_device * 3600,
        batch_size=args.batch_size,
        telemetry=False,
    )
    data = result.to_json()
    # Every device's first sync meets cold caches (numbers, dedup state): acks from one sync
    # interval in are said apart.
    after_first = window(result.client, sync_interval, math.inf)["ack_latency_ms"] or {}
    figures = {
        "devices": devices,
        "offered_records_per_s": rate,
        "sync_interval_s": sync_interval,
        "records_per_s": data["records_per_s"],
        "ack_latency_ms": data["ack_latency_ms"],
        "ack_latency_ms_after_first_interval": after_first,
        "errors": data["errors"],
        "server_cores": (data["server"] or {}).get("cores"),
        "verify": data["verify"]["ok"],
    }
    targets = [
        at_most(
            name,
            "ack p99 ms at half the backfill rate",
            data["ack_latency_ms"]["p99"],
            500,
            f"{rate:,.0f} calls/s offered; from one sync interval in,"
            f" p99 {num(after_first.get('p99'), 0)} ms",
        ),
        at_least(name, "verified (nothing lost or doubled)", float(result.ok), 1),
    ]
    return figures, targets, result.ok


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest bench``: 0 when all was acked, verified and answered;
    2 for an unknown scenario."""
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        print(
            f"error: unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    started_at = datetime.now(UTC)
    host = machine()
    reports: dict[str, Any] | None = None
    with _spawned_server("callsight-bench-", args.server_arg) as server:
        spec = WorkloadSpec(
            mode="backfill",
            days=args.days,
            calls_per_day=args.calls_per_day,
            duplicates=args.duplicates,
            batch_size=args.batch_size,
            seed=args.seed,
            now_ms=int(time.time() * 1000),
        )
        options = _fleet(server, args.devices, spec, args, "bench")
        result = uvloop.run(run_fleet(options))
        if args.report_duration > 0 and result.tenants:
            say(f"reports: {args.report_concurrency} callers for {args.report_duration:.0f} s")
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
        dsn = _stop(server)
        add_direct_counts(result, dsn, "callsight")
        say("footprint of the stored calls after merges")
        stored = ceilings.footprint_in_child(dsn, "callsight")
    if not args.no_ceilings:
        say("ceilings on the fleet's own batches (regenerated)")
        result.ceilings = ceilings.fleet_ceilings(options.spec, options.devices)
    data = result.to_json()
    name = "backfill"
    targets = [
        at_least(name, "records/s end to end (500-record batches)", data["records_per_s"], 250_000),
        at_least(
            name, "ratio to the Arrow insert ceiling", data["ratios"].get("insert_arrow_rows"), 0.5
        ),
        at_most(
            name,
            "bytes per stored call after merges",
            stored["bytes_per_call"],
            40,
            "this run's calls; the issue's figure is the report benchmark's 20M calls",
        ),
    ]
    scenarios: dict[str, Any] = {name: {"footprint": stored}}
    ok = True
    paced = functools.partial(_paced, backfill_records_per_s=data["records_per_s"])
    chosen = (("paced", paced), ("steady", _steady), ("small", _small), ("saturated", _saturated))
    for extra, scenario in chosen:
        if extra in args.scenarios:
            scenarios[extra], more, passed = scenario(args)
            targets += more
            ok = ok and passed
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
            "scenarios": args.scenarios,
        },
        "scenarios": scenarios,
        "targets": [target.to_json() for target in targets],
    }
    print(fleet_table(data))
    if reports is not None:
        print()
        print(report_load.table(reports))
    print()
    print(_summary_lines(latest))
    print()
    print(targets_table(targets))
    _finish(result, data, latest, args)
    report_failed = reports is not None and (bool(reports["errors"]) or not reports["calls"])
    return 0 if result.ok and ok and not report_failed else 1


def targets_table(targets: list[Target]) -> str:
    """Each figure next to its target, and whether it was met."""

    def shown(value: float | None) -> str:
        return num(value, 0 if value is None or abs(value) >= 100 else 2)

    return aligned(
        [
            (
                f"{t.scenario}: {t.figure}",
                f"{shown(t.value)} ({'>=' if t.higher_is_better else '<='} {shown(t.target)})"
                f" {'met' if t.met else 'MISSED' if t.met is False else 'not measured'}"
                + (f"  [{t.note}]" if t.note else ""),
            )
            for t in targets
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest bench``; the defaults are the standard suite."""
    add_flags(
        parser,
        ("--devices", 500, "simulated phones"),
        ("--days", 5, "days of history per device"),
        ("--calls-per-day", 60.0, "mean per device"),
        ("--batch-size", 500, "records per batch of the backfill"),
        ("--duplicates", 0.02, "share of calls sent twice (dedup work)"),
        (
            "--scenarios",
            report_load.names,
            "comma-separated scenarios after the backfill: paced, steady, small, saturated"
            " (default all;"
            " '' none)",
            {"default": list(SCENARIOS)},
        ),
        ("--steady-devices", 10_000, "steady: phones syncing every 20 s"),
        ("--steady-duration", 60.0, "steady: seconds"),
        ("--restart-at", 30.0, "steady: SIGKILL and restart the server this far in; 0: never"),
        ("--paced-devices", 100, "paced: phones sharing half the backfill's rate"),
        ("--paced-duration", 30.0, "paced: seconds"),
        ("--small-devices", 1000, "small: phones syncing every second"),
        ("--small-duration", 20.0, "small: seconds"),
        ("--saturated-devices", 5000, "saturated: phones syncing every second"),
        ("--saturated-duration", 20.0, "saturated: seconds"),
        ("--client-processes", 1, "processes the devices spread over"),
        ("--seed", 1),
        (
            "--server-arg",
            [],
            "extra `serve` flag, e.g. --server-arg=--batch-max-rows=20000 (repeatable)",
        ),
        (
            "--report-rpcs",
            report_load.names,
            "comma-separated report RPCs (default: all)",
            {"default": list(report_load.RPCS)},
        ),
        (
            "--report-ranges",
            report_load.names,
            "comma-separated ranges ending now (default: 1d,30d,365d)",
            {"default": list(report_load.DEFAULT_RANGES)},
        ),
        ("--report-concurrency", 4, "report callers"),
        ("--report-duration", 20.0, "seconds of report calls; 0: none"),
        ("--no-ceilings", False, "skip the ceilings"),
        ("--plot", Path, "chart of the fleet's throughput and latency"),
        ("--out", DEFAULT_OUT, "JSON result file"),
    )
