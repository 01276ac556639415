"""The one clock of the process, injected where time is read so that tests can set it."""

from __future__ import annotations

import time


class Clock:
    """Wall clock in epoch units; a test passes a subclass that returns the time it wants."""

    def now_ns(self) -> int:
        """Epoch nanoseconds; also the version of a row written now (a later write is larger)."""
        return time.time_ns()

    def now_ms(self) -> int:
        """Epoch milliseconds."""
        return self.now_ns() // 1_000_000


SYSTEM_CLOCK = Clock()
