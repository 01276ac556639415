"""``python -m callsight.loadtest fleet``: a simulated fleet of Android agents against a server.

1. Set-up, not measured: tenants, employees and one enrolled device per simulated phone through
   AdminService and RegisterDevice (``loadtest.bootstrap``); every device's batches generated and
   serialised (``loadtest.workload``), by the client processes themselves; an empty batch per
   device and table so the server's first dedup loads happen before the clock starts.
2. The run: devices spread over ``client_processes`` spawned processes (one uvloop event loop and
   a few gRPC channels each; 0 runs them on the caller's loop), each device one stream
   (``loadtest.agent``). Backfill: every device uploads its history as fast as its ack window
   allows. Steady: every device syncs on its own schedule for the duration.
3. Figures: records/s and batches/s from the first send to the last ack, ack latency in an
   HDR-style histogram, errors by status, client CPU (every client process), server CPU and
   peak RSS when the server's pid is known, a per-second timeline.
4. Verification (``loadtest.verify``): the ground truth against CallSummary/EmployeeSummary and
   the acks; the CLI exits 1 on any difference.

A black box: only the contract, grpc and the load tester's own black-box modules are imported.
``run_fleet(FleetOptions)`` is the core, callable from Python (tests drive it on their own loop
with ``client_processes=0``); ``add_arguments`` and ``options_from_args`` are its flags. The
command (``loadtest.suite.run_fleet_command``) adds what needs the white box: direct counts in
the server's database and the ceilings (``loadtest.ceilings``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import math
import multiprocessing as mp
import os
import platform
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from callsight.loadtest.agent import (
    SLOTS,
    AgentOptions,
    ClientProcess,
    Counters,
    WorkerPlan,
    WorkerResult,
    generate,
    worker_main,
)
from callsight.loadtest.bootstrap import DeviceIdentity, TenantInfo, bootstrap, warm_up
from callsight.loadtest.common import MiB, Say, cpu_s
from callsight.loadtest.common import say as say_stderr
from callsight.loadtest.harness import ProcessSampler, Usage
from callsight.loadtest.report_out import Progress
from callsight.loadtest.verify import Verification, ground_truth, report_counts
from callsight.loadtest.workload import DeviceTruth, WorkloadSpec

DEFAULT_OUT = Path("loadtest/results/fleet.json")
CEILING_KEYS = (
    "transport_records_per_s",
    "decode_records_per_s",
    "insert_columns_rows_per_s",
    "insert_arrow_rows_per_s",
)
# Error codes that mean data went wrong, not just that a stream had to be retried.
FATAL_ERRORS = (
    "GAVE_UP",
    "CLIENT_ERROR",
    "REJECTED",
    "RECORDS_REJECTED",
    "ACK_COUNT_MISMATCH",
    "UNEXPECTED_ACK",
)
DEDUP_ENTRIES = 1_000_000  # the server's dedup memory, in records (pipeline.ingest.Settings)


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """Everything a fleet run needs; ``target`` is ``host:port`` of a running server."""

    target: str
    operator_token: str
    devices: int = 1000
    employees: int = 0  # 0: one employee per device
    tenants: int = 1
    spec: WorkloadSpec = field(default_factory=WorkloadSpec)
    agent: AgentOptions = field(default_factory=AgentOptions)
    client_processes: int = 0  # 0: run the devices on the caller's event loop
    verify: bool = True
    server_pid: int | None = None  # sample this process's CPU and memory during the run
    warm_up: bool = True
    progress: bool = True
    label: str = ""

    @property
    def employee_count(self) -> int:
        """Employees of the fleet."""
        return self.employees or self.devices


@dataclass(slots=True)
class FleetResult:
    """What a fleet run measured and verified."""

    options: FleetOptions
    tenants: list[TenantInfo]
    devices: list[DeviceIdentity]
    client: WorkerResult
    processes: int
    totals: dict[str, int]
    setup_s: dict[str, float]
    verification: Verification
    server: Usage | None = None
    ceilings: dict[str, float] = field(default_factory=dict)
    peak_in_flight: int = 0  # batches sent and not yet acked, sampled across processes
    parent_cpu_s: float = 0.0  # the coordinating process, while client processes ran

    @property
    def wall_s(self) -> float:
        """First send to last ack, seconds."""
        wall = self.client.last_ack - self.client.first_send
        return wall if wall > 0 else math.nan

    @property
    def records_per_s(self) -> float:
        """Records in acked batches per second."""
        return self.client.records / self.wall_s

    @property
    def fatal_errors(self) -> int:
        """Errors that mean data was refused or lost on the client's side."""
        return sum(self.client.errors.get(code, 0) for code in FATAL_ERRORS)

    @property
    def ok(self) -> bool:
        """No fatal error, every batch acked and, when checked, the verification passed."""
        verified = self.verification.ok or not self.verification.checked
        acked = self.client.batches == self.totals["batches"]
        return verified and acked and not self.fatal_errors

    def timeline(self) -> list[dict[str, float]]:
        """One sample per second since the start: records/s, batches/s, ack p50/p95, errors."""
        seconds = self.client.timeline
        if not seconds:
            return []
        samples = []
        for second in range(0, max(seconds) + 1):
            bucket = seconds.get(second)
            if bucket is None:
                samples.append({"t_s": float(second), "records_per_s": 0.0, "batches_per_s": 0.0})
                continue
            latency = bucket.latency_us.summary(1e-3)
            samples.append(
                {
                    "t_s": float(second),
                    "records_per_s": float(bucket.records),
                    "batches_per_s": float(bucket.batches),
                    "ack_p50_ms": latency["p50"],
                    "ack_p95_ms": latency["p95"],
                    "errors": float(bucket.errors),
                }
            )
        return samples

    def to_json(self) -> dict[str, Any]:
        """The result file's content (see the README for the keys)."""
        c = self.client
        wall = self.wall_s
        latency = c.latency_us.summary(1e-3)
        server = self.server
        config = {
            "target": self.options.target,
            "mode": self.options.spec.mode,
            "devices": self.options.devices,
            "employees": self.options.employee_count,
            "tenants": self.options.tenants,
            "client_processes": self.processes,
            **{k: v for k, v in asdict(self.options.spec).items() if k != "now_ms"},
            **asdict(self.options.agent),
        }
        return {
            "records_per_s": self.records_per_s,
            "batches_per_s": c.batches / wall,
            "ack_latency_ms": {k: latency[k] for k in ("p50", "p95", "p99", "max", "mean")},
            "errors": dict(sorted(c.errors.items())),
            "server_peak_rss_mb": server.peak_rss_bytes / MiB if server else None,
            "client_cpu": {
                "cpu_s": c.cpu_s,
                "cores": c.cpu_s / wall,
                "parent_cpu_s": self.parent_cpu_s,
                "processes": self.processes,
                "peak_rss_mb": c.peak_rss_mb,
                "generation_s": c.generation_s,
                "note": (
                    "client processes only"
                    if self.processes
                    else "the calling process (includes an in-process server, if any)"
                ),
            },
            "server": (
                {"cpu_s": server.cpu_s, "cores": server.cpu_s / wall, "samples": server.samples}
                if server
                else None
            ),
            "ceilings": {key: self.ceilings.get(key) for key in CEILING_KEYS}
            | {k: v for k, v in self.ceilings.items() if k not in CEILING_KEYS},
            "ratios": ratios(self.records_per_s, self.ceilings),
            "verify": self.verification.to_json(),
            "ok": self.ok,
            "records": c.records,
            "batches": c.batches,
            "wall_s": wall,
            "acks": {
                "accepted": c.accepted,
                "updated": c.updated,
                "duplicates": c.duplicates,
                "rejected": c.rejected,
            },
            "streams": {
                "peak": c.peak_streams,
                "peak_batches_in_flight": self.peak_in_flight,
                "opened": c.sessions,
                "reconnects": c.reconnects,
                "resent": c.resent,
                "devices_failed": c.devices_failed,
            },
            "generated": self.totals,
            "setup_s": self.setup_s,
            "failures": c.failures[:50],
            "timeline": self.timeline(),
            "config": config,
            "host": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        }


def ratios(records_per_s: float, ceilings: dict[str, float]) -> dict[str, float]:
    """The end-to-end rate as a share of each measured ceiling, keyed by the ceiling's name
    without ``_per_s`` (``transport_records``, ...); NaN where a ceiling is 0."""
    return {
        key.removesuffix("_per_s"): records_per_s / ceilings[key] if ceilings[key] else math.nan
        for key in CEILING_KEYS
        if key in ceilings
    }


# fmt: off
TOTALS = [
    "calls", "contacts", "telemetry", "note_versions", "duplicate_records", "resent_batches",
    "records", "batches", "wire_bytes",
]
# fmt: on


def _totals(truths: list[DeviceTruth]) -> dict[str, int]:
    return {name: sum(getattr(t, name) for t in truths) for name in TOTALS}


class _Workers:
    """The spawned client processes and their pipes."""

    def __init__(self, options: FleetOptions, spec: WorkloadSpec, processes: int) -> None:
        ctx = mp.get_context("spawn")  # forking after grpc started threads is unsafe
        self.counters: Counters = ctx.RawArray(ctypes.c_int64, processes * SLOTS)
        self.assigned = [list(range(p, options.devices, processes)) for p in range(processes)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for row, devices in enumerate(self.assigned):
            parent, child = ctx.Pipe()
            plan = WorkerPlan(row, options.target, devices, spec, options.agent, options.devices)
            proc = ctx.Process(target=worker_main, args=(plan, child, self.counters), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    async def receive(self, row: int, expect: str, poll_s: float = 0.1) -> tuple[Any, ...]:
        """The next message of process ``row``, which must be ``expect``."""
        conn = self.conns[row]
        while not conn.poll():
            if not self.procs[row].is_alive() and not conn.poll():
                raise RuntimeError(f"client process {row} died (exit {self.procs[row].exitcode})")
            await asyncio.sleep(poll_s)
        try:
            message: tuple[Any, ...] = conn.recv()
        except EOFError:
            raise RuntimeError(
                f"client process {row} died (exit {self.procs[row].exitcode})"
            ) from None
        if message[0] == "failed":
            raise RuntimeError(f"client process {row} failed: {message[1]}")
        if message[0] != expect:
            raise RuntimeError(f"client process {row} sent {message[0]!r}, not {expect!r}")
        return message

    def send_all(self, message: tuple[Any, ...]) -> None:
        """The same message to every process."""
        for conn in self.conns:
            conn.send(message)

    def close(self) -> None:
        """Stops whatever is still running."""
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()


async def _wait_with_progress(
    pending: list[asyncio.Future[Any]], progress: Progress, poll_s: float = 0.25
) -> None:
    """Waits for every task, ticking the progress line; the first failure cancels the rest."""
    try:
        while not all(task.done() for task in pending):
            await asyncio.wait(pending, timeout=poll_s, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            progress.tick()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def run_fleet(options: FleetOptions, say: Say | None = None) -> FleetResult:
    """Sets the fleet up, runs it, verifies it; see the module docstring."""
    report = say or say_stderr
    spec = options.spec
    if not spec.now_ms:
        spec = replace(spec, now_ms=int(time.time() * 1000))
    processes = max(0, min(options.client_processes, options.devices))
    label = options.label or time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    setup: dict[str, float] = {}
    workers = _Workers(options, spec, processes) if processes else None
    try:
        async with grpc.aio.insecure_channel(options.target) as channel:
            started = time.monotonic()
            tenants, devices = await bootstrap(
                channel,
                options.operator_token,
                tenants=options.tenants,
                employees=options.employee_count,
                devices=options.devices,
                run_label=label,
                say=report,
            )
            setup["bootstrap_s"] = time.monotonic() - started
            generation_s = 0.0  # in client processes it overlaps the set-up above
            truths: list[DeviceTruth | None] = [None] * options.devices
            if workers is None:
                workloads, generation_s = generate(spec, range(options.devices))
                for workload in workloads:
                    truths[workload.device] = workload.truth
            else:
                for row, assigned in enumerate(workers.assigned):
                    _, part, seconds = await workers.receive(row, "generated")
                    generation_s = max(generation_s, seconds)
                    for device, truth in zip(assigned, part, strict=True):
                        truths[device] = truth
                    workers.conns[row].send(("tokens", [devices[d] for d in assigned]))
            setup["generation_s"] = generation_s
            known = [t for t in truths if t is not None]
            totals = _totals(known)
            report(
                f"generated {totals['calls']:,} calls (+{totals['note_versions']:,} newer "
                f"versions, {totals['duplicate_records']:,} duplicate records), "
                f"{totals['contacts']:,} contacts, {totals['telemetry']:,} telemetry samples: "
                f"{totals['batches']:,} batches, {totals['wire_bytes'] / MiB:,.1f} MiB "
                f"in {setup['generation_s']:.1f} s (not measured)"
            )
            stored = totals["calls"] + totals["contacts"] + totals["telemetry"]
            if stored > DEDUP_ENTRIES:
                report(
                    f"note: {stored:,} records exceed the server's dedup memory "
                    f"({DEDUP_ENTRIES:,}); it will evict and reload devices during the run"
                )
            if options.warm_up:
                kinds = [
                    kind
                    for kind, used in (
                        ("calls", True),
                        ("contacts", spec.contacts),
                        ("telemetry", spec.telemetry),
                    )
                    if used
                ]
                setup["warm_up_s"] = await warm_up(channel, devices, kinds, say=report)
            counters: Counters
            if workers is None:
                counters = [0] * SLOTS
                client = ClientProcess(options.target, options.agent, counters, 0)
                await client.connect()
            else:
                counters = workers.counters
                for row in range(processes):
                    await workers.receive(row, "ready")
            progress = Progress(
                counters,
                max(processes, 1),
                options.devices,
                totals["batches"],
                show=options.progress,
            )
            sampler = ProcessSampler(options.server_pid) if options.server_pid else None
            if sampler is not None:
                sampler.start()
            report(
                f"{spec.mode}: {options.devices:,} devices on "
                f"{processes or 'the calling'} client process{'es' if processes != 1 else ''}"
            )
            start = time.monotonic() + (0.5 if workers is not None else 0.0)
            parent_cpu = cpu_s()
            progress.start()
            if workers is None:
                runs = [
                    asyncio.ensure_future(
                        client.run(
                            list(zip(devices, workloads, strict=True)), spec, start, options.devices
                        )
                    )
                ]
                try:
                    await _wait_with_progress(list(runs), progress)
                finally:
                    await client.close()
                results = [runs[0].result()]
                results[0].generation_s = generation_s
            else:
                workers.send_all(("start", start))
                receiving = [
                    asyncio.ensure_future(workers.receive(row, "done")) for row in range(processes)
                ]
                await _wait_with_progress(list(receiving), progress)
                results = [task.result()[1] for task in receiving]
            server = sampler.stop() if sampler is not None else None
            parent_cpu = cpu_s() - parent_cpu
            progress.finish()
            merged = WorkerResult.merged(results)
            merged.peak_streams = max(progress.peak_streams, max(r.peak_streams for r in results))
            peak_in_flight = progress.peak_in_flight
            verification = Verification(
                ground_truth(tenants, devices, known),
                injected={
                    "duplicate_records": totals["duplicate_records"],
                    "resent_batches": totals["resent_batches"],
                    "note_versions": totals["note_versions"],
                    "forced_reconnects": merged.reconnects,
                    "batches_resent_after_drop": merged.resent,
                },
            )
            if options.verify:
                started = time.monotonic()
                found = {
                    truth.tenant_id: await report_counts(channel, truth)
                    for truth in verification.truths
                }
                verification.add_reports(found)
                if not merged.resent and not merged.errors:
                    verification.add_acks(
                        {
                            "accepted": merged.accepted,
                            "updated": merged.updated,
                            "duplicates": merged.duplicates,
                        },
                        {
                            "accepted": totals["calls"] + totals["contacts"] + totals["telemetry"],
                            "updated": totals["note_versions"],
                            "duplicates": totals["duplicate_records"],
                        },
                    )
                verification.database_note = "no database access: reports only"
                setup["verify_s"] = time.monotonic() - started
    finally:
        if workers is not None:
            workers.close()
    return FleetResult(
        options=options,
        tenants=tenants,
        devices=devices,
        client=merged,
        processes=processes,
        totals=totals,
        setup_s=setup,
        verification=verification,
        server=server,
        peak_in_flight=peak_in_flight,
        parent_cpu_s=parent_cpu if processes else 0.0,
    )


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest fleet``."""
    server = parser.add_argument_group("server")
    where = server.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="HOST:PORT", help="a running callsight server")
    where.add_argument(
        "--spawn-server",
        action="store_true",
        help="start `callsight serve` on a temporary data directory and measure it",
    )
    server.add_argument(
        "--operator-token",
        default=os.environ.get("CALLSIGHT_OPERATOR_TOKEN", ""),
        help="the target's operator token (default: $CALLSIGHT_OPERATOR_TOKEN)",
    )
    server.add_argument(
        "--dsn",
        help="the target's ClickHouse DSN for direct counts, made in a separate process after the"
        " run: http(s):// while the server runs; chdb:// once it has stopped (stop it first)",
    )
    server.add_argument("--database", default="callsight", help="the target's database")
    server.add_argument("--server-pid", type=int, help="sample this local process's CPU and RSS")
    server.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `serve` flag with --spawn-server, e.g. --server-arg=--batch-max-rows=20000",
    )
    server.add_argument("--keep", action="store_true", help="keep the spawned server's data")
    server.add_argument(
        "--server-log", type=Path, help="with --spawn-server: write the tail of its log here"
    )

    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--devices", type=int, default=1000, help="simulated phones (streams)")
    fleet.add_argument("--employees", type=int, default=0, help="employees (default: one/device)")
    fleet.add_argument("--tenants", type=int, default=1, help="tenants the employees belong to")
    mode = fleet.add_mutually_exclusive_group()
    mode.add_argument(
        "--backfill", action="store_true", help="upload --days of history per device (default)"
    )
    mode.add_argument("--steady", action="store_true", help="sync new calls on a schedule")
    fleet.add_argument("--days", type=int, default=3, help="backfill: days of history")
    fleet.add_argument(
        "--calls-per-day", type=float, default=60.0, help="backfill: mean per device"
    )
    fleet.add_argument("--duration", type=float, default=60.0, help="steady: seconds to run")
    fleet.add_argument("--sync-interval", type=float, default=10.0, help="steady: seconds")
    fleet.add_argument("--calls-per-hour", type=float, default=120.0, help="steady: per device")
    fleet.add_argument("--batch-size", type=int, default=200, help="records per batch")
    fleet.add_argument("--notes", type=float, default=0.03, help="share of calls noted later")
    fleet.add_argument("--no-contacts", action="store_true", help="send no address books")
    fleet.add_argument("--no-telemetry", action="store_true", help="send no telemetry")
    fleet.add_argument("--seed", type=int, default=1)

    faults = parser.add_argument_group("injected behaviour")
    faults.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of calls sent twice: half as acked batches re-sent, half inside new batches",
    )
    faults.add_argument(
        "--reconnect-every",
        type=int,
        default=0,
        metavar="N",
        help="drop each stream after N batches and re-send the un-acked ones on a new one",
    )
    faults.add_argument(
        "--clock-skew-ms",
        type=int,
        default=0,
        help="device clocks off by up to +-this (at most 12 h): every device timestamp shifts",
    )

    client = parser.add_argument_group("client")
    client.add_argument(
        "--client-processes",
        type=int,
        default=-1,
        help="processes the devices spread over; 0: this process; default: one per 2,500 devices",
    )
    client.add_argument("--channels", type=int, default=4, help="gRPC connections per process")
    client.add_argument("--window", type=int, default=4, help="un-acked batches per stream")
    client.add_argument(
        "--stall-s", type=float, default=60.0, help="re-send after this long without an ack"
    )
    client.add_argument(
        "--max-attempts",
        type=int,
        default=30,
        help="streams in a row without an ack before a device gives up (and the run fails)",
    )
    client.add_argument(
        "--max-backoff-s",
        type=float,
        default=30.0,
        help="longest pause between a device's reconnects (doubling from 0.2 s, jittered)",
    )
    client.add_argument(
        "--ramp-s",
        type=float,
        default=0.0,
        help="start the devices spread over this many seconds instead of all at once",
    )
    client.add_argument("--no-warm-up", action="store_true", help="skip the first empty batches")

    out = parser.add_argument_group("output")
    verify = out.add_mutually_exclusive_group()
    verify.add_argument("--verify", dest="verify", action="store_true", default=True)
    verify.add_argument("--no-verify", dest="verify", action="store_false")
    out.add_argument(
        "--ceilings", action="store_true", help="also measure loadtest.ceilings on the same rows"
    )
    out.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    out.add_argument("--plot", type=Path, help="chart of throughput and ack latency (PNG)")
    out.add_argument("--quiet", action="store_true", help="no progress line")


def options_from_args(args: argparse.Namespace, target: str, token: str) -> FleetOptions:
    """FleetOptions from parsed flags."""
    processes = args.client_processes
    if processes < 0:
        processes = max(1, min(os.cpu_count() or 1, math.ceil(args.devices / 2500)))
    spec = WorkloadSpec(
        mode="steady" if args.steady else "backfill",
        days=args.days,
        duration_s=args.duration,
        sync_interval_s=args.sync_interval,
        calls_per_day=args.calls_per_day,
        calls_per_hour=args.calls_per_hour,
        batch_size=args.batch_size,
        duplicates=args.duplicates,
        note_share=args.notes,
        contacts=not args.no_contacts,
        telemetry=not args.no_telemetry,
        clock_skew_ms=args.clock_skew_ms,
        seed=args.seed,
        now_ms=int(time.time() * 1000),
    )
    agent = AgentOptions(
        window=args.window,
        reconnect_every=args.reconnect_every,
        stall_s=args.stall_s,
        channels=args.channels,
        ramp_s=args.ramp_s,
        max_attempts=args.max_attempts,
        backoff_max_s=args.max_backoff_s,
    )
    return FleetOptions(
        target=target,
        operator_token=token,
        devices=args.devices,
        employees=args.employees,
        tenants=args.tenants,
        spec=spec,
        agent=agent,
        client_processes=processes,
        verify=args.verify,
        server_pid=args.server_pid,
        warm_up=not args.no_warm_up,
        progress=not args.quiet,
    )


def problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags, all at once."""
    problems = []
    if args.devices < 1 or args.tenants < 1 or args.employees < 0:
        problems.append("--devices and --tenants must be at least 1")
    if args.tenants > (args.employees or args.devices):
        problems.append("--tenants cannot exceed the number of employees")
    if args.target and not args.operator_token:
        problems.append("--target needs --operator-token (or $CALLSIGHT_OPERATOR_TOKEN)")
    if not 0.0 <= args.duplicates <= 1.0:
        problems.append("--duplicates is a fraction within 0-1")
    if abs(args.clock_skew_ms) > 12 * 3_600_000:
        problems.append("--clock-skew-ms must be within 12 hours (43,200,000)")
    if args.window < 1 or args.batch_size < 1 or args.batch_size > 10_000:
        problems.append("--window must be at least 1 and --batch-size within 1-10,000")
    if args.steady and (args.duration <= 0 or args.sync_interval <= 0):
        problems.append("--duration and --sync-interval must be positive")
    return problems
