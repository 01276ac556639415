"""A chart of a run: throughput and ack latency over time, for ``--plot FILE.png``.

matplotlib is imported only when a chart is drawn, so the rest of ``loadtest`` runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The keys a sample may carry each figure under, first match wins.
TIME_KEYS = ("t_s", "elapsed_s", "time_s", "t")
RATE_KEYS = ("records_per_s", "rate")
P95_KEYS = ("ack_p95_ms", "p95_ms")


def _value(sample: Mapping[str, Any], keys: Sequence[str], nested: str = "") -> float:
    """The sample's figure under the first of ``keys`` present (or ``sample[nested]["p95"]``);
    NaN when it has none, so the line shows a gap."""
    for key in keys:
        value = sample.get(key)
        if isinstance(value, int | float):
            return float(value)
    inner = sample.get(nested) if nested else None
    if isinstance(inner, Mapping) and isinstance(inner.get("p95"), int | float):
        return float(inner["p95"])
    return math.nan


def plot_timeline(samples: list[dict[str, Any]], path: str) -> None:
    """Draws records/s and ack p95 (ms) over time into ``path`` (PNG, SVG or PDF by suffix);
    samples carry ``t_s``, ``records_per_s``, ``ack_p95_ms``; missing figures leave gaps."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    times = [_value(s, TIME_KEYS) for s in samples]
    rates = [_value(s, RATE_KEYS) for s in samples]
    p95s = [_value(s, P95_KEYS, nested="ack_latency_ms") for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), layout="constrained")
    try:
        top.plot(times, rates, color="tab:blue", linewidth=1.5, marker=".", markersize=3)
        top.set_ylabel("records/s")
        top.set_ylim(bottom=0)
        top.grid(True, alpha=0.3)
        top.set_title("throughput")
        bottom.plot(times, p95s, color="tab:red", linewidth=1.5, marker=".", markersize=3)
        bottom.set_ylabel("ack latency p95 (ms)")
        bottom.set_xlabel("seconds since start")
        bottom.set_ylim(bottom=0)
        bottom.grid(True, alpha=0.3)
        bottom.set_title("ack latency")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
