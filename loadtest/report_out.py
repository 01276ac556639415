"""What a fleet run shows: the live progress line while it runs, and the table at the end.

The progress line goes to stderr, rewritten in place on a terminal, a line every few seconds
otherwise. The table is built from the result's JSON, so it cannot disagree with ``--out``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from callsight.loadtest.agent import (
    BATCHES,
    DONE,
    ERRORS,
    IN_FLIGHT,
    RECORDS,
    SLOTS,
    STREAMS,
    Counters,
)
from callsight.loadtest.common import aligned, num


class Progress:
    """Reads the shared counters and prints records/s, acks in flight, streams and errors;
    ``show=False`` only samples the peaks (open streams, batches in flight)."""

    def __init__(
        self,
        counters: Counters,
        rows: int,
        devices: int,
        batches: int,
        stream: TextIO | None = None,
        every_s: float | None = None,
        show: bool = True,
    ) -> None:
        self._counters = counters
        self._rows = rows
        self._devices = devices
        self._batches = batches
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._every_s = every_s if every_s is not None else (1.0 if self._tty else 5.0)
        self._width = 0
        self._show = show
        self.peak_streams = 0
        self.peak_in_flight = 0
        self.start()

    def _sum(self, column: int) -> int:
        return sum(int(self._counters[row * SLOTS + column]) for row in range(self._rows))

    def start(self) -> None:
        """Sets time zero (the moment the devices start)."""
        self._start = self._shown = time.monotonic()
        self._last = (self._start, 0)

    def line(self) -> str:
        """The current figures as one line."""
        now = time.monotonic()
        records = self._sum(RECORDS)
        rate = (records - self._last[1]) / max(now - self._last[0], 1e-9)
        average = records / max(now - self._start, 1e-9)
        self._last = (now, records)
        return (
            f"{now - self._start:7.1f} s  {records:>12,} records  {rate:>9,.0f}/s now"
            f"  {average:>9,.0f}/s avg  batches {self._sum(BATCHES):,}/{self._batches:,}"
            f"  in flight {self._sum(IN_FLIGHT):,}  streams {self._sum(STREAMS):,}"
            f"  errors {self._sum(ERRORS):,}  devices done {self._sum(DONE):,}/{self._devices:,}"
        )

    def _write(self, last: bool) -> None:
        # On a terminal the line is rewritten in place, padded over a longer previous one.
        text = self.line()
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            text = "\r" + text + pad
        self._stream.write(text + ("\n" if last or not self._tty else ""))
        self._stream.flush()

    def tick(self) -> None:
        """Samples the peaks; prints the line if it is due."""
        self.peak_streams = max(self.peak_streams, self._sum(STREAMS))
        self.peak_in_flight = max(self.peak_in_flight, self._sum(IN_FLIGHT))
        if self._show and time.monotonic() - self._shown >= self._every_s:
            self._shown = time.monotonic()
            self._write(last=False)

    def finish(self) -> None:
        """Prints the final figures and ends the line."""
        if self._show:
            self._write(last=True)


def table(result: dict[str, Any]) -> str:
    """The end-of-run table, from ``FleetResult.to_json()``."""
    latency = result["ack_latency_ms"]
    client = result["client_cpu"]
    server = result.get("server") or {}
    verify = result["verify"]
    errors = result["errors"]
    lines: list[tuple[str, str]] = [
        ("mode", f"{result['config']['mode']} ({result['config']['devices']:,} devices)"),
        ("records acked / batches", f"{result['records']:,} / {result['batches']:,}"),
        ("wall s (first send to last ack)", num(result["wall_s"], 2)),
        ("records/s", num(result["records_per_s"])),
        ("batches/s", num(result["batches_per_s"], 1)),
        (
            "ack p50 / p95 / p99 / max ms",
            " / ".join(num(latency[k], 1) for k in ("p50", "p95", "p99", "max")),
        ),
        (
            "errors by status",
            ", ".join(f"{code} {n:,}" for code, n in sorted(errors.items())) or "none",
        ),
        (
            "streams: peak open / opened / forced reconnects / batches re-sent / ended idle",
            f"{result['streams']['peak']:,} / {result['streams']['opened']:,}"
            f" / {result['streams']['reconnects']:,} / {result['streams']['resent']:,}"
            f" / {result['streams'].get('idle_ends', 0):,}",
        ),
        (
            f"client CPU s, cores busy ({client['processes']} processes)",
            f"{num(client['cpu_s'], 1)}, {num(client['cores'], 2)}",
        ),
        ("client peak RSS MiB (largest process)", num(client["peak_rss_mb"])),
        (
            "client event-loop lag p50 / p99 / max ms",
            " / ".join(num(client.get("loop_lag_ms", {}).get(k), 1) for k in ("p50", "p99", "max")),
        ),
        (
            "server CPU s, cores busy (with its decode workers)",
            f"{num(server.get('cpu_s'), 1)}, {num(server.get('cores'), 2)}",
        ),
        ("server peak RSS MiB (with its workers)", num(result["server_peak_rss_mb"])),
    ]
    restart = result.get("restart")
    if restart:
        served = restart["served_again_s"]
        lines += [
            (
                "restart: at s / down s / devices interrupted / served again",
                f"{num(restart['at_s'], 1)} / {num(restart['down_s'], 1)}"
                f" / {restart['devices_interrupted']:,} / {restart['devices_served_again']:,}",
            ),
            (
                "restart: served again after SERVING p50 / p99 / all s",
                " / ".join(num(served[k], 1) for k in ("p50", "p99", "max")),
            ),
            (
                "restart: ack p99 ms in the first 30 s / after",
                f"{num(restart['ack_p99_ms_first_30_s'], 1)}"
                f" / {num(restart['ack_p99_ms_after_30_s'], 1)}",
            ),
            (
                "restart: client event-loop lag max ms in the first 30 s",
                num(restart.get("client_loop_lag_max_ms_first_30_s"), 1),
            ),
        ]
    ceilings = result.get("ceilings") or {}
    for key, ratio in (result.get("ratios") or {}).items():
        ceiling = ceilings.get(f"{key}_per_s")
        lines.append((f"ceiling {key}/s (e2e ratio)", f"{num(ceiling)} ({num(ratio, 3)})"))
    expected = verify["expected"]
    lines.append(
        (
            "verify",
            ("ok" if verify["ok"] else "FAILED" if verify["checked"] else "skipped")
            + f": {expected['calls']:,} unique calls expected"
            + "".join(
                f", {where} {found['calls']:,}"
                for where, found in (
                    ("reports", verify["report"]),
                    ("database", verify["database"]),
                )
                if found is not None
            ),
        )
    )
    return aligned(lines)
