"""A bound on the bytes in flight between decoding a request and committing its rows, shared
fairly between devices and tenants.

The ingest stage acquires a request's size before handing its rows to the batcher and releases
it once the flush holding those rows is done (written or abandoned), so buffered rows can never
exceed the budget. ``close()`` wakes every waiter.

With an ``Admission`` the budget also admits by time: bytes fit only while the queued work would
drain within the admission's target, so the byte capacity is the hard cap behind it.

Fairness: every acquisition names its owner, a (tenant, device) pair. Waiters are served
round-robin, first over the tenants with waiters, then over that tenant's waiting devices, and
in arrival order within a device; so a device flooding from many streams gets one turn per round,
like a device sending one batch. The owner at the head of the round waits while its batch does
not fit (nobody bypasses it, so a large batch is never starved). And while other devices hold or
wait for bytes, a device may hold at most ``max(limit / active devices, min_share)``, ``limit``
being what admission lets be queued (the byte capacity, or the drain rate times the target if
smaller): a device over its share gives its turn away. A device holding nothing may always take
one batch, so nobody is locked out by the share.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field

from callsight.core.errors import Unavailable
from callsight.pipeline.admission import Admission

_SHUTTING_DOWN = "shutting down"

Owner = tuple[str, str]  # (tenant_id, device_id)
ANONYMOUS: Owner = ("", "")


@dataclass(eq=False)
class _Waiter:
    n: int
    future: asyncio.Future[None]


@dataclass(eq=False)
class _Device:
    held: int = 0
    waiters: deque[_Waiter] = field(default_factory=deque)


class ByteBudget:
    """At most ``capacity`` bytes acquired at once; fair waiting; explicit shutdown."""

    def __init__(
        self, capacity: int, admission: Admission | None = None, min_share: int = 1 << 20
    ) -> None:
        if capacity <= 0 or min_share <= 0:
            raise ValueError(f"capacity and min_share must be positive, got {capacity, min_share}")
        self._capacity = capacity
        self._admission = admission
        self._min_share = min_share
        self._used = 0
        self._waiting = 0
        # A device has an entry while it holds bytes or waits for them.
        self._devices: dict[Owner, _Device] = {}
        # Round-robin turns: tenants with a waiting device, and each one's waiting devices.
        self._turns: deque[str] = deque()
        self._queues: dict[str, deque[Owner]] = {}
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
        return self._waiting

    def held(self, owner: Owner) -> int:
        """Bytes ``owner`` has acquired and not yet released."""
        device = self._devices.get(owner)
        return 0 if device is None else device.held

    def _clamp(self, n: int) -> int:
        if n < 0:
            raise ValueError(f"byte count must not be negative, got {n}")
        # A request larger than the whole budget would wait forever; it takes all of it instead.
        # An empty one (an UploadRequest with no fields is 0 bytes) takes one byte: a device
        # with batches in flight then always holds bytes, so each release finds what it took.
        return min(max(n, 1), self._capacity)

    def fits_bytes(self, n: int) -> bool:
        """Whether ``n`` bytes fit under the byte capacity now (time admission aside)."""
        return self._used + self._clamp(n) <= self._capacity

    def _fits(self, n: int) -> bool:
        if self._used + n > self._capacity:
            return False
        return self._admission is None or self._admission.allows(self._used, n)

    def share(self) -> float:
        """The most one device may hold while others hold or wait for bytes."""
        active = len(self._devices)
        if active <= 1:
            return math.inf
        limit = float(self._capacity)
        if self._admission is not None and (queue := self._admission.limit_bytes()) is not None:
            limit = min(limit, queue)
        return max(limit / active, self._min_share)

    def _within_share(self, device: _Device | None, n: int) -> bool:
        return device is None or device.held == 0 or device.held + n <= self.share()

    def _take(self, n: int, owner: Owner) -> None:
        if self._used == 0 and self._admission is not None:
            self._admission.busy()
        self._used += n
        device = self._devices.get(owner)
        if device is None:
            device = self._devices[owner] = _Device()
        device.held += n

    async def acquire(self, n: int, owner: Owner = ANONYMOUS) -> None:
        """Waits until ``n`` bytes fit and it is ``owner``'s turn, then takes them.

        Raises ``Unavailable`` once the budget is closed. Release the same ``n`` afterwards.
        """
        n = self._clamp(n)
        if self._closed:
            raise Unavailable(_SHUTTING_DOWN)
        device = self._devices.get(owner)
        if not self._waiting and self._fits(n) and self._within_share(device, n):
            self._take(n, owner)
            return
        waiter = _Waiter(n, asyncio.get_running_loop().create_future())
        self._enqueue(owner, waiter)
        self._wake()
        try:
            await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted just before the cancellation arrived: give the bytes back.
                self.release(n, owner)
            elif self._dequeue(owner, waiter):
                # It may have been what blocked the next waiters.
                self._wake()
            raise

    def try_acquire(self, n: int, owner: Owner = ANONYMOUS) -> bool:
        """Takes ``n`` bytes if they fit now, within ``owner``'s share, and nobody is waiting;
        never waits.

        Raises ``Unavailable`` once the budget is closed.
        """
        n = self._clamp(n)
        if self._closed:
            raise Unavailable(_SHUTTING_DOWN)
        if self._waiting or not self._fits(n):
            return False
        if not self._within_share(self._devices.get(owner), n):
            return False
        self._take(n, owner)
        return True

    def release(self, n: int, owner: Owner = ANONYMOUS) -> None:
        """Gives back ``n`` bytes ``owner`` took with ``acquire`` or ``try_acquire``; wakes
        waiters."""
        n = self._clamp(n)
        device = self._devices.get(owner)
        if device is None or n > device.held:
            held = 0 if device is None else device.held
            raise ValueError(f"released {n} bytes but {owner} holds only {held}")
        device.held -= n
        self._used -= n
        if not device.held and not device.waiters:
            del self._devices[owner]
        if self._admission is not None:
            self._admission.drained(n, empty=self._used == 0)
        self._wake()

    def _enqueue(self, owner: Owner, waiter: _Waiter) -> None:
        device = self._devices.get(owner)
        if device is None:
            device = self._devices[owner] = _Device()
        if not device.waiters:
            tenant = owner[0]
            queue = self._queues.get(tenant)
            if queue is None:
                queue = self._queues[tenant] = deque()
                self._turns.append(tenant)
            queue.append(owner)
        device.waiters.append(waiter)
        self._waiting += 1

    def _dequeue(self, owner: Owner, waiter: _Waiter) -> bool:
        """Takes a waiter out of its device's line; False if it was not in it."""
        device = self._devices.get(owner)
        if device is None or waiter not in device.waiters:
            return False
        device.waiters.remove(waiter)
        self._waiting -= 1
        if not device.waiters:
            tenant = owner[0]
            queue = self._queues[tenant]
            queue.remove(owner)
            if not queue:
                del self._queues[tenant]
                self._turns.remove(tenant)
            if not device.held:
                del self._devices[owner]
        return True

    def _next_turn(self, owner: Owner, device: _Device) -> None:
        """Moves ``owner`` to the back of its tenant's line and the tenant to the back of the
        round; either leaves when it has nobody waiting."""
        tenant = owner[0]
        queue = self._queues[tenant]
        queue.popleft()
        if device.waiters:
            queue.append(owner)
        self._turns.popleft()
        if queue:
            self._turns.append(tenant)
        else:
            del self._queues[tenant]

    def _wake(self) -> None:
        passed = 0  # turns given away in a row by devices over their share
        while self._turns:
            owner = self._queues[self._turns[0]][0]
            device = self._devices[owner]
            waiter = device.waiters[0]
            if waiter.future.done():
                # Cancelled: its task takes it out of the line too late to matter.
                device.waiters.popleft()
                self._waiting -= 1
                self._next_turn(owner, device)
                if not device.held and not device.waiters:
                    del self._devices[owner]
                continue
            if not self._within_share(device, waiter.n):
                # Over its share: its bytes in flight will come back; the next device goes first.
                self._next_turn(owner, device)
                passed += 1
                if passed >= self._waiting:
                    return
                continue
            if not self._fits(waiter.n):
                return
            device.waiters.popleft()
            self._waiting -= 1
            self._take(waiter.n, owner)
            waiter.future.set_result(None)
            self._next_turn(owner, device)
            passed = 0

    def close(self) -> None:
        """Fails every waiting and later ``acquire`` with ``Unavailable``; idempotent."""
        self._closed = True
        for owner, device in list(self._devices.items()):
            while device.waiters:
                waiter = device.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(Unavailable(_SHUTTING_DOWN))
            if not device.held:
                del self._devices[owner]
        self._waiting = 0
        self._turns.clear()
        self._queues.clear()
