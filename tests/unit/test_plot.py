"""The timeline chart is drawn from fleet samples, gaps and all."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from callsight.loadtest.plot import plot_timeline


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    samples = [
        {"t_s": 1.0, "records_per_s": 20_000.0, "ack_p95_ms": 120.0},
        {"t_s": 2.0, "records_per_s": 35_000.0, "ack_latency_ms": {"p95": 180.0}},
        {"t_s": 3.0, "records_per_s": 0.0, "ack_p95_ms": math.nan},
        {"t_s": 4.0},
    ]
    path = tmp_path / "charts" / "timeline.png"
    plot_timeline(samples, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
