"""A bound on the bytes in flight between decoding a request and committing its rows.

The ingest stage acquires a request's size before handing its rows to the batcher and releases
it once the flush holding those rows is done (written or abandoned), so buffered rows can never
exceed the budget. Waiters are served in arrival order, and ``close()`` wakes every one of them.

With an ``Admission`` the budget also admits by time: bytes fit only while the queued work would
drain within the admission's target, so the byte capacity is the hard cap behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from callsight.core.errors import Unavailable
from callsight.pipeline.admission import Admission

_SHUTTING_DOWN = "shutting down"


class ByteBudget:
    """At most ``capacity`` bytes acquired at once; FIFO waiting; explicit shutdown."""

    def __init__(self, capacity: int, admission: Admission | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._capacity = capacity
        self._admission = admission
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._closed = False

    @property
    def capacity(self) -> int:
        """The most bytes that can be acquired at once."""
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes acquired and not yet released."""
        return self._used

    @property
    def waiting(self) -> int:
        """How many ``acquire`` calls are waiting."""
        return len(self._waiters)

    def _clamp(self, n: int) -> int:
        if n < 0:
            raise ValueError(f"byte count must not be negative, got {n}")
        # A request larger than the whole budget would wait forever; it takes all of it instead.
        return min(n, self._capacity)

    def fits_bytes(self, n: int) -> bool:
        """Whether ``n`` bytes fit under the byte capacity now (time admission aside)."""
        return self._used + self._clamp(n) <= self._capacity

    def _fits(self, n: int) -> bool:
        if self._used + n > self._capacity:
            return False
        return self._admission is None or self._admission.allows(self._used, n)

    def _take(self, n: int) -> None:
        if self._used == 0 and self._admission is not None:
            self._admission.busy()
        self._used += n

    async def acquire(self, n: int) -> None:
        """Waits until ``n`` bytes fit (after every earlier waiter), then takes them.

        Raises ``Unavailable`` once the budget is closed. Release the same ``n`` afterwards.
        """
        n = self._clamp(n)
        if self._closed:
            raise Unavailable(_SHUTTING_DOWN)
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        waiter = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            future = waiter[1]
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted just before the cancellation arrived: give the bytes back.
                self.release(n)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                # The head may have been what blocked the next waiters.
                self._wake()
            raise

    def try_acquire(self, n: int) -> bool:
        """Takes ``n`` bytes if they fit now and nobody is waiting; never waits.

        Raises ``Unavailable`` once the budget is closed.
        """
        n = self._clamp(n)
        if self._closed:
            raise Unavailable(_SHUTTING_DOWN)
        if self._waiters or not self._fits(n):
            return False
        self._take(n)
        return True

    def release(self, n: int) -> None:
        """Gives back ``n`` bytes taken by ``acquire`` or ``try_acquire`` and wakes waiters."""
        n = self._clamp(n)
        if n > self._used:
            raise ValueError(f"released {n} bytes but only {self._used} are in use")
        self._used -= n
        if self._admission is not None:
            self._admission.drained(n, empty=self._used == 0)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            future.set_result(None)

    def close(self) -> None:
        """Fails every waiting and later ``acquire`` with ``Unavailable``; idempotent."""
        self._closed = True
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(Unavailable(_SHUTTING_DOWN))
