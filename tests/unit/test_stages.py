"""Stage timing: percentiles per stage over an interval, reset by each summary."""

from __future__ import annotations

import pytest

from callsight.pipeline.stages import StageTimes


def test_a_summary_gives_percentiles_per_stage_and_starts_the_next_interval() -> None:
    stages = StageTimes()
    for ms in range(1, 101):
        stages.add("admit", ms / 1000)
    stages.add("insert", 0.25)
    summary = stages.summary()
    assert set(summary) == {"admit", "insert"}
    assert summary["admit"]["n"] == 100
    assert summary["admit"]["p50_ms"] == pytest.approx(50.5)
    assert summary["admit"]["p99_ms"] == 99.0  # rounded to 0.1 ms
    assert summary["admit"]["max_ms"] == 100.0
    assert summary["insert"] == {"n": 1, "p50_ms": 250.0, "p99_ms": 250.0, "max_ms": 250.0}
    assert stages.summary() == {}


def test_an_unknown_stage_is_a_bug() -> None:
    with pytest.raises(KeyError):
        StageTimes().add("nap", 1.0)
