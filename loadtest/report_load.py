"""Concurrent report callers over chosen RPCs and ranges, alone or beside a running fleet.

Run ``python -m callsight.loadtest reports --target HOST:PORT --api-key KEY [--rpcs CallSummary,...]
[--ranges 1d,30d,365d] [--concurrency 8] [--duration 30] [--out ...]`` (the key may come from
``CALLSIGHT_API_KEY``: flags show in ``ps``); from Python, ``await run_reports(...)``. The callers
share one channel and one turn over the (RPC, range) pairs, so every pair gets its share, until
``duration`` passes. ``30d`` is the last 30 days up to now; a paged RPC walks up to ``pages``
pages, a call each. Latency of successful calls goes into a ``loadtest.histogram`` (µs); failed
calls are counted by status code.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf.message import Message

from callsight.loadtest.common import (
    MAX_MESSAGE_BYTES,
    add_flags,
    auth,
    columns,
    num,
    retry_delay_s,
    write_json,
)
from callsight.loadtest.histogram import Histogram
from callsight.v1 import report_pb2

SERVICE = "/callsight.v1.ReportService"
# Each RPC's request and response types; a request with page_token is paged.
# fmt: off
RPC_NAMES = (
    "CallSummary", "EmployeeSummary", "CallAnalysis", "NeverAttended", "NotPickedByClient",
    "UniqueClients", "HourlyAnalytics", "DaywiseAnalytics", "WorkingHours", "CallHistory",
    "LeadActivity",
)
# fmt: on
RPCS: dict[str, tuple[type[Message], type[Message]]] = {
    name: (getattr(report_pb2, f"{name}Request"), getattr(report_pb2, f"{name}Response"))
    for name in RPC_NAMES
}
DEFAULT_RANGES = ("1d", "30d", "365d")
UNITS_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_OUT = Path("loadtest/results/reports_load.json")
API_KEY_ENV = "CALLSIGHT_API_KEY"


def range_ms(text: str) -> int:
    """``"30d"`` -> 30 days in milliseconds; units m, h, d."""
    number, unit = text[:-1], text[-1:]
    if unit not in UNITS_MS or not number.isdigit() or int(number) == 0:
        raise ValueError(f"range {text!r} must be a positive whole number of m, h or d, e.g. 30d")
    return int(number) * UNITS_MS[unit]


def is_paged(rpc: str) -> bool:
    """True when the RPC takes a page token."""
    return "page_token" in RPCS[rpc][0].DESCRIPTOR.fields_by_name


@dataclass(slots=True)
class Tally:
    """What the callers saw for one (RPC, range)."""

    latency_us: Histogram = field(default_factory=Histogram)  # successful calls only
    errors: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # RESOURCE_EXHAUSTED with a retry delay: a quota, waited out

    @property
    def calls(self) -> int:
        return self.latency_us.count + sum(self.errors.values()) + self.refused


@dataclass(frozen=True, slots=True)
class Plan:
    rpcs: tuple[str, ...]
    ranges: tuple[str, ...]
    pages: int
    page_size: int
    timeout_s: float

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(rpc, span) for rpc in self.rpcs for span in self.ranges]


async def _query(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    rpc: str,
    span: str,
    plan: Plan,
    tally: Tally,
    deadline: float,
) -> None:
    """One report as a user asks for it: a call, or a walk of up to ``plan.pages`` pages."""
    request_type, response_type = RPCS[rpc]
    method = channel.unary_unary(
        f"{SERVICE}/{rpc}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    now_ms = int(time.time() * 1000)
    report_filter = report_pb2.ReportFilter(from_ms=now_ms - range_ms(span), to_ms=now_ms)
    paged = is_paged(rpc)
    token = ""
    for _ in range(plan.pages if paged else 1):
        request = request_type(filter=report_filter)
        if paged:
            request.page_size = plan.page_size  # type: ignore[attr-defined]
            request.page_token = token  # type: ignore[attr-defined]
        started = time.monotonic()
        try:
            response = await method(request, metadata=metadata, timeout=plan.timeout_s)
        except grpc.aio.AioRpcError as exc:
            delay = retry_delay_s(exc)
            if delay is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # A report quota: the server working as designed, not a failure. The caller
                # honours the delay, as a dashboard would.
                tally.refused += 1
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                return
            tally.errors[exc.code().name] += 1
            return
        tally.latency_us.record(round((time.monotonic() - started) * 1e6))
        token = getattr(response, "next_page_token", "")
        if not token or time.monotonic() >= deadline:
            return


async def run_reports(
    target: str,
    api_key: str,
    rpcs: Sequence[str],
    ranges: Sequence[str],
    concurrency: int,
    duration_s: float,
    *,
    pages: int = 3,
    page_size: int = 100,
    timeout_s: float = 30.0,
    min_rounds: int = 0,
    progress: Callable[[float, int, int], None] | None = None,
) -> dict[str, Any]:
    """Calls the reports for ``duration_s`` seconds (and on until every pair was asked
    ``min_rounds`` times: a slow server still gets every report measured); the figures as the
    JSON file has them. ``progress(elapsed_s, calls, errors)`` is called about once a second."""
    unknown = [rpc for rpc in rpcs if rpc not in RPCS]
    if unknown:
        raise ValueError(f"unknown report RPCs {unknown}; choose from {', '.join(RPCS)}")
    for span in ranges:
        range_ms(span)
    plan = Plan(tuple(rpcs), tuple(ranges), max(1, pages), page_size, timeout_s)
    pairs = plan.pairs
    if not pairs:
        raise ValueError("no RPC or no range to call")
    tallies = {pair: Tally() for pair in pairs}
    metadata = auth(api_key)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        started = time.monotonic()
        deadline = started + duration_s

        turns = itertools.count()  # shared: every pair gets its turn, whatever the duration
        required = max(0, min_rounds) * len(pairs)

        async def caller() -> None:
            while True:
                turn = next(turns)
                if turn >= required and time.monotonic() >= deadline:
                    return
                rpc, span = pairs[turn % len(pairs)]
                await _query(channel, metadata, rpc, span, plan, tallies[rpc, span], deadline)

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                if progress is not None:
                    calls = sum(t.calls for t in tallies.values())
                    errors = sum(sum(t.errors.values()) for t in tallies.values())
                    progress(time.monotonic() - started, calls, errors)

        reporter = asyncio.create_task(report_progress())
        try:
            await asyncio.gather(*(caller() for _ in range(max(1, concurrency))))
        finally:
            reporter.cancel()
        wall_s = time.monotonic() - started
    return summarise(target, plan, concurrency, wall_s, tallies)


def summarise(
    target: str, plan: Plan, concurrency: int, wall_s: float, tallies: dict[tuple[str, str], Tally]
) -> dict[str, Any]:
    """The figures of a run: overall and per (RPC, range)."""
    errors: Counter[str] = Counter()
    for tally in tallies.values():
        errors.update(tally.errors)
    everything = Histogram.merged(tally.latency_us for tally in tallies.values())
    calls = sum(tally.calls for tally in tallies.values())
    by_rpc = {
        f"{rpc}/{span}": {
            "rpc": rpc,
            "range": span,
            "calls": tally.calls,
            "ok": tally.latency_us.count,
            "refused": tally.refused,
            "errors": dict(tally.errors),
            "latency_ms": tally.latency_us.summary(scale=1e-3),
        }
        for (rpc, span), tally in tallies.items()
    }
    return {
        "target": target,
        "rpcs": list(plan.rpcs),
        "ranges": list(plan.ranges),
        "concurrency": concurrency,
        "pages": plan.pages,
        "page_size": plan.page_size,
        "duration_s": wall_s,
        "calls": calls,
        "calls_per_s": calls / wall_s if wall_s > 0 else float("nan"),
        "errors": dict(errors),
        "refused": sum(tally.refused for tally in tallies.values()),
        "latency_ms": everything.summary(scale=1e-3),
        "by_rpc": by_rpc,
    }


def table(result: dict[str, Any]) -> str:
    """Per (RPC, range): calls, errors and latency percentiles, then the totals."""
    header = ("rpc/range", "calls", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms")
    rows = []
    for key, row in [*result["by_rpc"].items(), ("all", {**result, "ok": None})]:
        latency = row["latency_ms"]
        errors = ", ".join(f"{code} {n:,}" for code, n in sorted(row["errors"].items())) or "0"
        rows.append(
            (
                key,
                f"{row['calls']:,}",
                errors,
                *(num(latency[q], 1) for q in ("p50", "p95", "p99", "max")),
            )
        )
    lines = columns(header, rows)
    lines.append(f"{result['calls_per_s']:,.1f} calls/s over {result['duration_s']:.1f} s")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def names(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest reports``."""
    add_flags(
        parser,
        ("--target", str, "HOST:PORT of the callsight server", {"required": True}),
        (
            "--api-key",
            os.environ.get(API_KEY_ENV, ""),
            f"API key with role ADMIN or REPORTS (default: ${API_KEY_ENV})",
        ),
        (
            "--rpcs",
            names,
            f"comma-separated report RPCs (default: all: {','.join(RPCS)})",
            {"default": list(RPCS)},
        ),
        (
            "--ranges",
            names,
            "comma-separated ranges ending now, in m, h or d (default: 1d,30d,365d)",
            {"default": list(DEFAULT_RANGES)},
        ),
        ("--concurrency", 8, "concurrent callers"),
        ("--duration", 30.0, "seconds to keep calling"),
        ("--pages", 3, "pages a paged RPC walks"),
        ("--page-size", 100, "rows per page"),
        ("--timeout", 30.0, "deadline of a call, s"),
        (
            "--min-rounds",
            0,
            "go on past --duration until every RPC and range was asked this many times",
        ),
        ("--out", DEFAULT_OUT, "JSON file to write"),
    )


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest reports``; exit 1 when any call failed or none was made."""
    if not args.api_key:
        print(f"reports: give --api-key or set {API_KEY_ENV}", file=sys.stderr)
        return 2
    live = sys.stderr.isatty()

    def progress(elapsed_s: float, calls: int, errors: int) -> None:
        line = (
            f"{elapsed_s:6.1f} s  {calls:>8,} calls  {calls / elapsed_s:>8,.1f}/s  {errors} errors"
        )
        print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr, flush=True)

    try:
        result = uvloop.run(
            run_reports(
                args.target,
                args.api_key,
                args.rpcs,
                args.ranges,
                args.concurrency,
                args.duration,
                pages=args.pages,
                page_size=args.page_size,
                timeout_s=args.timeout,
                min_rounds=args.min_rounds,
                progress=progress,
            )
        )
    except ValueError as exc:
        print(f"reports: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"reports: could not connect to {args.target}", file=sys.stderr)
        return 1
    if live:
        print(file=sys.stderr)
    print(table(result))
    write_json(args.out, result)
    return 1 if result["errors"] or not result["calls"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The same as ``python -m callsight.loadtest reports``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
