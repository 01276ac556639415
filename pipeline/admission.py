"""Admission by time: keep the work queued ahead of an ack under a target at the drain rate.

The queue is the request bytes admitted and not yet released (written, refused or abandoned);
the drain rate is how many of those bytes leave it per second while it is not empty, smoothed
over about ``smoothing_s`` when it rises and ``fall_smoothing_s`` when it falls. Measuring in the
queue's own unit, and only while there is work, makes ``queued / rate`` the expected wait of a new
batch (Little's law) whatever the record kind, and an idle spell does not read as a slow
database.

The measured rate is only what the queue allowed so far: below saturation the pipeline drains a
longer queue faster (its fixed latencies, such as the flush age, do not grow), so when the load
rises the limit climbs by about ``max_queue_s / wait`` per smoothing time until the database or
the CPU is the bound. Smoothing over 0.1 s instead of 1 s let a 500-device backfill (2,000
batches offered at once after a warm-up of small batches) pass 50k records/s after ~5 s instead
of ~11 s: 40-42k instead of 29-33k records/s over its 15 s (three runs each); the bound on the
queue is the same.

A fall is followed over ``fall_smoothing_s`` (1 s): below saturation one slow insert drains
nothing for a few hundred ms, and followed as fast as a rise it read as a database a third as
fast, so admission held batches while the server had room. With 10,000 phones opening their
streams (inserts then take up to 500 ms) batches waited 127-574 ms (p99 per 10 s) for admission
in 8 of 9 stage-log windows of two runs; following falls over 1 s, 0.1-0.5 ms in 8 of 9 (the
ninth, a run's first window, 450 ms), and the phones' ack p99 over the run was 1.19 / 1.12 /
0.86 / 0.82 s against 1.77 / 1.07 / 1.20 / 1.16 s (alternating runs, the last two pairs with
one client process). A database that really got slower is followed within about two seconds.

A rate measured on a trickle is a rate of arrivals, not of what the server can take: the limit
it gives can be a fraction of one full batch (3.9 kB/s after a warm-up of one-record batches,
then 35 kB batches of 500 calls arrived). Climbing from there by ~4x per smoothing step held the
first full batches of a paced fleet (56 phones, 500-call batches, ~9k calls/s, a sixth of what
the server takes) for up to 0.4-0.65 s (admission p99 of its first 10 s; 0.2 ms in the next
10 s). So the queue may always hold ``min_queue_bytes`` (256 KiB): a handful of full batches,
and well under a second of the smallest batches at the rate a saturated server drains them
(~3,000 batches of 1-2 records a second). With it that fleet's first 10 s show admission p99
0.2-0.3 ms (was 414-561 ms) and its ack p99 over 20 s is 283-295 ms (was 790-1,032 ms), two
alternating runs each.

A batch is admitted while ``(queued + its bytes) / rate`` stays under ``max_queue_s`` or the
queue stays within ``min_queue_bytes``. An empty queue always admits (so the rate can be
measured and nothing deadlocks), and before the first measurement only the byte budget
applies. The object is pure: no tasks, no waiting; the ``ByteBudget`` consults it and wakes its
waiters on every release.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# A refused Upload is told to come back no sooner than this, nor later than the cap.
MIN_RETRY_AFTER_S = 0.1
MAX_RETRY_AFTER_S = 5.0


class Admission:
    """Admits a batch while the queued work would drain within ``max_queue_s``."""

    def __init__(
        self,
        max_queue_s: float,
        clock: Callable[[], float] = time.monotonic,
        smoothing_s: float = 0.1,
        sample_s: float = 0.1,
        fall_smoothing_s: float = 1.0,
        min_queue_bytes: int = 256 << 10,
    ) -> None:
        if not (max_queue_s > 0 and smoothing_s > 0 and sample_s > 0 and fall_smoothing_s > 0):
            raise ValueError(
                "max_queue_s, smoothing_s, fall_smoothing_s and sample_s must be positive"
            )
        if min_queue_bytes < 0:
            raise ValueError("min_queue_bytes must not be negative")
        self.max_queue_s = max_queue_s
        self.min_queue_bytes = min_queue_bytes
        self._clock = clock
        self._smoothing_s = smoothing_s
        self._fall_smoothing_s = fall_smoothing_s
        self._sample_s = sample_s
        self._rate: float | None = None  # bytes per busy second
        self._busy_since: float | None = None  # None: the queue is empty
        self._bytes = 0  # drained since the last sample
        self._seconds = 0.0  # busy time since the last sample
        self._last = -math.inf  # when the last release happened

    @property
    def rate(self) -> float | None:
        """Smoothed bytes drained per second of non-empty queue; None before a measurement."""
        return self._rate

    def busy(self) -> None:
        """The queue just turned non-empty."""
        if self._busy_since is None:
            self._busy_since = self._clock()

    def drained(self, n: int, empty: bool) -> None:
        """``n`` bytes left the queue; ``empty``: nothing is queued any more."""
        now = self._clock()
        # A flush completes many batches at one instant, so a sample closes only at a later
        # release, once it spans ``sample_s`` of busy time: never between two of one instant.
        if now > self._last and self._seconds >= self._sample_s:
            sample = self._bytes / self._seconds
            if self._rate is None:
                self._rate = sample
            else:
                tau = self._smoothing_s if sample >= self._rate else self._fall_smoothing_s
                weight = 1 - math.exp(-self._seconds / tau)
                self._rate += weight * (sample - self._rate)
            self._bytes, self._seconds = 0, 0.0
        if self._busy_since is not None:
            self._seconds += now - self._busy_since
        self._busy_since = None if empty else now
        self._bytes += n
        self._last = now

    def wait_s(self, queued: int) -> float | None:
        """The expected time to drain ``queued`` bytes; None before a measurement."""
        if self._rate is None:
            return None
        return queued / self._rate if self._rate > 0 else math.inf

    def limit_bytes(self) -> float | None:
        """The bytes the queue may hold: what drains within the target at the measured rate,
        at least ``min_queue_bytes``; None before a measurement."""
        if self._rate is None:
            return None
        return max(self._rate * self.max_queue_s, self.min_queue_bytes)

    def allows(self, queued: int, n: int) -> bool:
        """Whether a batch of ``n`` bytes may join ``queued`` bytes now."""
        if queued == 0 or queued + n <= self.min_queue_bytes:
            return True
        wait = self.wait_s(queued + n)
        return wait is None or wait <= self.max_queue_s

    def retry_after_s(self, queued: int, n: int) -> float:
        """When a refused batch of ``n`` bytes would fit: the wait beyond the target."""
        wait = self.wait_s(queued + n)
        excess = MIN_RETRY_AFTER_S if wait is None else wait - self.max_queue_s
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, excess))
