"""An HDR-style histogram: log-bucketed counts of non-negative integers with bounded relative error.

Values below ``2 * 2**bits`` are exact; above, each power of two splits into ``2**bits``
sub-buckets (0.8% error with 7 bits). Recording is O(1), histograms merge by adding counts, and
percentiles report the highest value of their bucket, capped by the maximum, as HdrHistogram does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_BITS = 7


@dataclass(slots=True)
class Histogram:
    """Counts of non-negative integers in log-spaced buckets; see the module docstring."""

    bits: int = DEFAULT_BITS
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    min: int = 0
    max: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be 1-16, not {self.bits}")

    def bucket(self, value: int) -> int:
        """The index of the bucket ``value`` falls in."""
        if value < 0:
            raise ValueError(f"a histogram records non-negative values, not {value}")
        sub = 1 << self.bits
        if value < 2 * sub:
            return value
        shift = value.bit_length() - self.bits - 1
        return shift * sub + (value >> shift)

    def bounds(self, index: int) -> tuple[int, int]:
        """The lowest and highest value of bucket ``index`` (both inclusive)."""
        sub = 1 << self.bits
        if index < 2 * sub:
            return index, index
        shift, mantissa = divmod(index, sub)
        mantissa += sub
        # index = shift * sub + mantissa with mantissa in [sub, 2 * sub); divmod gives it - sub.
        shift -= 1
        return mantissa << shift, ((mantissa + 1) << shift) - 1

    def record(self, value: int, times: int = 1) -> None:
        """Counts ``value`` ``times`` times."""
        if times <= 0:
            return
        index = self.bucket(value)
        self.counts[index] = self.counts.get(index, 0) + times
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += times
        self.total += value * times

    def merge(self, other: Histogram) -> None:
        """Adds ``other``'s counts to this histogram (same ``bits`` required)."""
        if other.bits != self.bits:
            raise ValueError(
                f"cannot merge a {other.bits}-bit histogram into a {self.bits}-bit one"
            )
        if other.count == 0:
            return
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @classmethod
    def merged(cls, histograms: Iterable[Histogram], bits: int = DEFAULT_BITS) -> Histogram:
        """One histogram holding the counts of all of ``histograms``."""
        out = cls(bits)
        for histogram in histograms:
            out.merge(histogram)
        return out

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0-100): 0 for an empty histogram."""
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be within 0-100, not {p}")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return max(self.min, min(self.bounds(index)[1], self.max))
        return self.max

    @property
    def mean(self) -> float:
        """The exact mean of the recorded values (NaN when empty)."""
        return self.total / self.count if self.count else math.nan

    def summary(self, scale: float = 1.0) -> dict[str, float]:
        """p50, p95, p99, max, mean (times ``scale``) and count; NaN figures when empty."""
        if self.count == 0:
            return dict.fromkeys(("p50", "p95", "p99", "max", "mean"), math.nan) | {"count": 0}
        return {
            **{f"p{p}": self.percentile(p) * scale for p in (50, 95, 99)},
            "max": self.max * scale,
            "mean": self.mean * scale,
            "count": self.count,
        }
