"""A chart of a run: throughput and ack latency over time, for ``--plot FILE.png``.

matplotlib is imported only when a chart is drawn, so the rest of ``loadtest`` runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _value(sample: Mapping[str, Any], key: str) -> float:
    """The sample's figure (``ack_p95_ms`` may come as ``ack_latency_ms["p95"]``); NaN when it
    has none, so the line shows a gap."""
    value = sample.get(key)
    nested = sample.get("ack_latency_ms")
    if value is None and key == "ack_p95_ms" and isinstance(nested, Mapping):
        value = nested.get("p95")
    return float(value) if isinstance(value, int | float) else math.nan


def plot_timeline(samples: list[dict[str, Any]], path: str) -> None:
    """Draws records/s and ack p95 (ms) over time into ``path`` (PNG, SVG or PDF by suffix);
    samples carry ``t_s``, ``records_per_s``, ``ack_p95_ms``; missing figures leave gaps."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    times = [_value(s, "t_s") for s in samples]
    figure, axes = plt.subplots(2, 1, sharex=True, figsize=(10, 6), layout="constrained")
    charts = [
        ("records_per_s", "tab:blue", "records/s", "throughput"),
        ("ack_p95_ms", "tab:red", "ack latency p95 (ms)", "ack latency"),
    ]
    try:
        for axis, (key, color, label, title) in zip(axes, charts, strict=True):
            values = [_value(s, key) for s in samples]
            axis.plot(times, values, color=color, linewidth=1.5, marker=".", markersize=3)
            axis.set_ylabel(label)
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.set_title(title)
        axes[1].set_xlabel("seconds since start")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
