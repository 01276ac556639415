"""Admission by time: the drain rate over busy time, the queue-time rule and the retry delay."""

from __future__ import annotations

import pytest

from callsight.pipeline.admission import MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S, Admission


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def measured(
    rate: float, max_queue_s: float = 0.5, min_queue_bytes: int = 0
) -> tuple[Admission, FakeClock]:
    """An admission that saw ``rate`` bytes/s drained for a second, then went idle (no floor on
    the queue unless ``min_queue_bytes``)."""
    clock = FakeClock()
    admission = Admission(
        max_queue_s, clock, smoothing_s=1.0, sample_s=0.1, min_queue_bytes=min_queue_bytes
    )
    admission.busy()
    for _ in range(10):
        clock.now += 0.1
        admission.drained(int(rate * 0.1), empty=False)
    clock.now += 0.1
    admission.drained(int(rate * 0.1), empty=True)
    assert admission.rate == pytest.approx(rate)
    return admission, clock


def test_before_any_measurement_only_the_byte_budget_applies() -> None:
    admission = Admission(0.5, FakeClock())
    assert admission.rate is None
    assert admission.wait_s(10**12) is None
    assert admission.allows(10**12, 10**6)
    assert admission.retry_after_s(10**12, 1) == MIN_RETRY_AFTER_S


def test_admits_while_the_queue_drains_within_the_target() -> None:
    admission, _ = measured(1_000_000)
    assert admission.rate == pytest.approx(1_000_000)
    assert admission.wait_s(250_000) == pytest.approx(0.25)
    assert admission.allows(400_000, 100_000)  # 0.5 s: at the target
    assert not admission.allows(400_000, 100_001)
    assert not admission.allows(2_000_000, 1)


def test_an_empty_queue_always_admits_so_nothing_deadlocks() -> None:
    admission, _ = measured(1_000)
    assert not admission.allows(1, 10_000)
    assert admission.allows(0, 10_000_000)


def test_a_rate_measured_on_a_trickle_still_lets_a_few_full_batches_queue() -> None:
    """After one-record batches drained at ~4 kB/s, 35 kB batches: the rate alone would hold
    the second one (9 s of queue); the floor lets a few in, and time rules beyond it."""
    admission, _ = measured(4_000, max_queue_s=1.0, min_queue_bytes=256 << 10)
    assert admission.limit_bytes() == 256 << 10
    assert admission.allows(35_000, 35_000)
    assert admission.allows(6 * 35_000, 35_000)  # 245,000 bytes: within 256 KiB
    assert not admission.allows(7 * 35_000, 35_000)  # 280,000 bytes: 70 s at 4 kB/s


def test_the_floor_is_the_default_and_time_rules_above_it() -> None:
    clock = FakeClock()
    admission = Admission(1.0, clock, sample_s=0.1)
    assert admission.min_queue_bytes == 256 << 10
    admission.busy()
    for _ in range(5):
        clock.now += 0.1
        admission.drained(100_000, empty=False)  # 1 MB/s: the limit is 1 MB, above the floor
    assert admission.allows(900_000, 100_000)
    assert not admission.allows(900_000, 100_001)


def test_idle_time_does_not_count_as_a_slow_drain() -> None:
    admission, clock = measured(1_000_000)
    clock.now += 3_600  # an hour with nothing queued
    admission.busy()
    clock.now += 0.1
    admission.drained(100_000, empty=True)
    assert admission.rate == pytest.approx(1_000_000)


def test_the_rate_follows_a_slower_database_smoothly() -> None:
    admission, clock = measured(1_000_000)
    admission.busy()
    rates: list[float] = []
    for _ in range(50):
        clock.now += 0.1
        admission.drained(10_000, empty=False)  # 100 kB/s now
        assert admission.rate is not None
        rates.append(admission.rate)
    # The first release closes the sample still open from before: the new rate shows next.
    assert 100_000 < rates[1] < 950_000
    assert rates[1:] == sorted(rates[1:], reverse=True)
    assert rates[-1] == pytest.approx(100_000, rel=0.1)


def test_one_slow_insert_does_not_read_as_a_slow_database() -> None:
    """Falls are followed over fall_smoothing_s, rises over smoothing_s (the defaults)."""
    clock = FakeClock()
    admission = Admission(1.0, clock)
    admission.busy()
    for _ in range(20):
        clock.now += 0.1
        admission.drained(100_000, empty=False)  # 1 MB/s
    assert admission.rate == pytest.approx(1_000_000, rel=0.01)
    clock.now += 0.4  # one insert took 400 ms: one release in 0.4 s
    admission.drained(100_000, empty=False)
    clock.now += 0.1  # the sample holding the slow spell closes at the next release
    admission.drained(100_000, empty=False)
    assert admission.rate is not None
    # The 250 kB/s sample moved the rate by a third of the way, not most of it.
    assert 0.65e6 < admission.rate < 0.8e6
    for _ in range(3):  # back to 1 MB/s: followed within a few samples
        clock.now += 0.1
        admission.drained(100_000, empty=False)
    assert admission.rate > 0.95e6


def test_releases_at_one_instant_are_pooled_into_one_sample() -> None:
    clock = FakeClock()
    admission = Admission(0.5, clock, sample_s=0.1)
    admission.busy()
    clock.now += 0.2
    for _ in range(10):  # one flush completes ten batches at once
        admission.drained(10_000, empty=False)
    assert admission.rate is None  # the sample closes at a later release
    clock.now += 0.1
    admission.drained(10_000, empty=True)
    assert admission.rate == pytest.approx(500_000)


def test_retry_after_is_the_wait_beyond_the_target_within_bounds() -> None:
    admission, _ = measured(1_000_000)
    assert admission.retry_after_s(1_000_000, 500_000) == pytest.approx(1.0)
    assert admission.retry_after_s(500_001, 0) == MIN_RETRY_AFTER_S
    assert admission.retry_after_s(10**12, 0) == MAX_RETRY_AFTER_S


def test_targets_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Admission(0, FakeClock())
    with pytest.raises(ValueError):
        Admission(1.0, FakeClock(), min_queue_bytes=-1)
