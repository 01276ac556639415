"""Admission of reports: a rate and a cap on running reports per tenant, and a cap per process.

A report first takes a token from its tenant's bucket (``rate_per_s`` refilled, ``burst`` deep),
then a running slot of its tenant and one of the process, waiting for them first come, first
served, for at most ``max_queue_ms`` in all. A report that cannot start in that time is refused
with ``ResourceExhausted`` and a retry delay (the time to the tenant's next token, or how long a
report has recently taken) and gives its token back. The queue is bounded by the bucket: a tenant
has at most ``burst + rate_per_s * max_queue_ms / 1000`` reports waiting. One tenant's reports
never take another tenant's slots, only the process's, which the process cap keeps few.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from callsight.core.errors import ResourceExhausted


@dataclass(frozen=True)
class ReportLimits:
    """How many reports run at once and how often a tenant may start one (from ``Config``)."""

    max_concurrent: int = 4
    max_concurrent_per_tenant: int = 2
    max_queue_ms: int = 5000
    rate_per_s: float = 10.0
    burst: int = 40


# A refused report is told to come back after about one recent report's time, within these.
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 30.0
# The per-tenant table is swept of idle tenants whenever it doubles past this size.
_SWEEP_MIN = 1024


class _Slots:
    """At most ``capacity`` holders at once; waiters are served first come, first served."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def idle(self) -> bool:
        return self.held == 0 and not self._waiters

    async def acquire(self, timeout_s: float) -> bool:
        """Takes a slot within ``timeout_s`` (False if none came free in time)."""
        if self.held < self.capacity and not self._waiters:
            self.held += 1
            return True
        if timeout_s <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        got = False
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
                got = True
        except TimeoutError:
            pass
        finally:
            if got:
                pass  # the slot was handed over (release() counted it as held)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
        return got

    def release(self) -> None:
        """Frees a slot, or hands it straight to the first waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.held -= 1


class _Bucket:
    """A token bucket: ``burst`` deep, refilled at ``rate`` tokens a second."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, now: float) -> float:
        """Takes a token and returns 0, or returns the seconds until one is there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def give_back(self) -> None:
        self.tokens = min(float(self.burst), self.tokens + 1.0)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class _Tenant:
    def __init__(self, limits: ReportLimits, now: float) -> None:
        self.bucket = _Bucket(limits.rate_per_s, limits.burst, now)
        self.slots = _Slots(limits.max_concurrent_per_tenant)


class ReportQuota:
    """Admits reports within ``ReportLimits``; ``admit(tenant_id)`` holds a report's slots."""

    def __init__(
        self, limits: ReportLimits, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._monotonic = monotonic
        self._process = _Slots(limits.max_concurrent)
        self._tenants: dict[str, _Tenant] = {}
        self._sweep_at = _SWEEP_MIN
        # How long a report has recently taken (moving average), for the retry delay.
        self._typical_s = 1.0

    @property
    def running(self) -> int:
        """Reports running in this process now."""
        return self._process.held

    def running_for(self, tenant_id: str) -> int:
        """Reports of one tenant running now."""
        tenant = self._tenants.get(tenant_id)
        return 0 if tenant is None else tenant.slots.held

    @asynccontextmanager
    async def admit(self, tenant_id: str) -> AsyncIterator[None]:
        """Holds a running slot of the tenant and of the process for the ``async with`` body.

        Raises ``ResourceExhausted`` with a retry delay when the tenant is over its rate, or no
        slot comes free within ``max_queue_ms``.
        """
        limits = self.limits
        now = self._monotonic()
        tenant = self._tenant(tenant_id, now)
        wait_s = tenant.bucket.take(now)
        if wait_s > 0:
            retry_s = _ceil_tenth(wait_s)
            raise ResourceExhausted(
                f"this tenant started more than {limits.burst} reports in a burst or "
                f"{limits.rate_per_s:g} a second; retry after {retry_s:.1f} s and space out "
                "report calls (a dashboard should not poll faster than it refreshes)",
                retry_after_s=retry_s,
            )
        queue_s = limits.max_queue_ms / 1000
        if not await tenant.slots.acquire(queue_s):
            tenant.bucket.give_back()
            retry_s = self._retry_s()
            raise ResourceExhausted(
                f"this tenant already has {limits.max_concurrent_per_tenant} reports running, "
                f"the most it may; retry after {retry_s:.1f} s, when one has finished, and "
                "run fewer reports at once (shorter ranges finish sooner)",
                retry_after_s=retry_s,
            )
        try:
            left_s = queue_s - (self._monotonic() - now)
            if not await self._process.acquire(left_s):
                tenant.bucket.give_back()
                retry_s = self._retry_s()
                raise ResourceExhausted(
                    f"the server is running {limits.max_concurrent} reports, the most it runs "
                    f"at once; retry after {retry_s:.1f} s (shorter ranges finish sooner)",
                    retry_after_s=retry_s,
                )
            started = self._monotonic()
            try:
                yield
            finally:
                self._process.release()
                took = self._monotonic() - started
                self._typical_s = 0.8 * self._typical_s + 0.2 * took
        finally:
            tenant.slots.release()

    def _tenant(self, tenant_id: str, now: float) -> _Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            if len(self._tenants) >= self._sweep_at:
                self._sweep(now)
            tenant = self._tenants[tenant_id] = _Tenant(self.limits, now)
        return tenant

    def _sweep(self, now: float) -> None:
        # A tenant with nothing running or waiting and a full bucket is as good as a new one.
        self._tenants = {
            tid: t for tid, t in self._tenants.items() if not (t.slots.idle and t.bucket.full(now))
        }
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._tenants))

    def _retry_s(self) -> float:
        return _ceil_tenth(min(_RETRY_MAX_S, max(_RETRY_MIN_S, self._typical_s)))


def _ceil_tenth(seconds: float) -> float:
    return math.ceil(seconds * 10) / 10
