"""The HDR-style latency histogram: exact small values, bounded relative error, merging."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from callsight.loadtest.histogram import Histogram


def test_empty_histogram_reports_nothing() -> None:
    h = Histogram()
    assert h.count == 0
    assert h.percentile(99) == 0
    summary = h.summary()
    assert summary["count"] == 0
    assert math.isnan(summary["p50"]) and math.isnan(summary["max"])


def test_small_values_are_exact() -> None:
    h = Histogram(bits=7)
    for value in range(256):  # below 2 * 2**7 every value has its own bucket
        h.record(value)
    assert h.percentile(50) == 127
    assert h.percentile(100) == 255
    assert h.min == 0 and h.max == 255
    assert h.mean == pytest.approx(127.5)


def test_buckets_are_contiguous_and_within_relative_error() -> None:
    h = Histogram(bits=7)
    previous_high = -1
    for index in range(0, 40 * 128):
        low, high = h.bounds(index)
        assert low == previous_high + 1, index  # no gaps, no overlaps
        assert h.bucket(low) == index and h.bucket(high) == index
        assert (high - low + 1) / max(low, 1) <= 1 / 128 or high == low
        previous_high = high


@pytest.mark.parametrize("p", [50, 90, 95, 99, 99.9])
def test_percentiles_match_numpy_within_one_percent(p: float) -> None:
    rng = np.random.default_rng(5)
    values = rng.lognormal(np.log(20_000), 1.0, size=50_000).astype(np.int64)  # micros
    h = Histogram()
    for value in values.tolist():
        h.record(value)
    exact = np.percentile(values, p, method="inverted_cdf")  # nearest rank
    assert exact <= h.percentile(p) <= exact * 1.01


def test_percentile_never_exceeds_max_nor_understates() -> None:
    h = Histogram()
    h.record(1_000_003)
    assert h.percentile(50) == 1_000_003
    assert h.percentile(100) == h.max == 1_000_003


def test_record_with_count_and_merge_equal_recording_everything_once() -> None:
    rnd = random.Random(3)
    values = [rnd.randint(0, 10_000_000) for _ in range(5_000)]
    whole = Histogram()
    for value in values:
        whole.record(value)
    parts = [Histogram() for _ in range(4)]
    for i, value in enumerate(values):
        parts[i % 4].record(value)
    merged = Histogram.merged(parts)
    assert merged == whole
    doubled = Histogram()
    for value in values:
        doubled.record(value, times=2)
    assert doubled.count == 2 * whole.count
    assert doubled.percentile(99) == whole.percentile(99)


def test_merging_empty_histograms_keeps_min() -> None:
    h = Histogram()
    h.record(50)
    h.merge(Histogram())
    empty = Histogram()
    empty.merge(h)
    assert (empty.min, empty.max, empty.count) == (50, 50, 1)


def test_summary_scales_microseconds_to_milliseconds() -> None:
    h = Histogram()
    for micros in (1_000, 2_000, 3_000, 4_000):
        h.record(micros)
    summary = h.summary(1e-3)
    assert summary["max"] == pytest.approx(4.0)
    assert summary["p50"] == pytest.approx(2.0, rel=0.01)
    assert summary["count"] == 4


def test_rejects_bad_input() -> None:
    h = Histogram()
    with pytest.raises(ValueError):
        h.record(-1)
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError):
        h.merge(Histogram(bits=5))
    with pytest.raises(ValueError):
        Histogram(bits=0)
