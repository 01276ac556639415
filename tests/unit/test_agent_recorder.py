"""The load tester's per-process tally: its own event-loop lag beside the acks it measures."""

from __future__ import annotations

import time

from callsight.loadtest.agent import Recorder, WorkerResult
from callsight.loadtest.fleet import window


def test_loop_lag_is_kept_per_run_and_as_each_seconds_worst() -> None:
    start = time.monotonic()
    recorder = Recorder([0] * 64, 0, start - 5.5)  # five and a half seconds into the run
    for lag_s in (0.001, 0.250, 0.004):
        recorder.loop_lag(lag_s)
    recorder.loop_lag(-0.001)  # a timer that fired early counts as on time
    result = recorder.result
    assert result.loop_lag_us.count == 4
    assert result.loop_lag_us.max == 250_000
    assert result.timeline[5].loop_lag_us == 250_000
    assert window(result, 5, 6)["client_loop_lag_max_ms"] == 250.0
    assert window(result, 0, 5)["client_loop_lag_max_ms"] == 0.0


def test_merged_processes_keep_the_worst_lag_of_each_second() -> None:
    start = time.monotonic()
    results = []
    for lag_s in (0.010, 0.300):
        recorder = Recorder([0] * 64, 0, start)
        recorder.loop_lag(lag_s)
        results.append(recorder.result)
    merged = WorkerResult.merged(results)
    assert merged.loop_lag_us.count == 2
    assert merged.timeline[0].loop_lag_us == 300_000
