"""ByteBudget: bounded bytes in flight, fair waiting, shutdown that wakes every waiter, and
admission by time in front of the byte cap."""

from __future__ import annotations

import asyncio

import pytest

from callsight.core.errors import Unavailable
from callsight.pipeline.admission import Admission
from callsight.pipeline.budget import ByteBudget


async def settle() -> None:
    """Lets every ready task run to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_acquire_and_release_track_usage() -> None:
    budget = ByteBudget(100)
    await budget.acquire(30)
    await budget.acquire(70)
    assert (budget.used, budget.capacity) == (100, 100)
    budget.release(30)
    assert budget.used == 70
    budget.release(70)
    assert budget.used == 0


async def test_acquire_waits_until_enough_is_released() -> None:
    budget = ByteBudget(100)
    await budget.acquire(80)
    waiter = asyncio.create_task(budget.acquire(50))
    await settle()
    assert not waiter.done()
    assert budget.waiting == 1
    budget.release(80)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 50


async def test_try_acquire_is_false_when_full_or_someone_waits() -> None:
    budget = ByteBudget(100)
    assert budget.try_acquire(60)
    assert not budget.try_acquire(50)
    waiter = asyncio.create_task(budget.acquire(50))
    await settle()
    # 10 would fit, but taking it would jump the queue.
    assert not budget.try_acquire(10)
    assert budget.used == 60
    budget.release(60)
    await asyncio.wait_for(waiter, 1)
    assert budget.try_acquire(10)
    assert budget.used == 60


async def test_a_large_request_is_not_starved_by_small_ones() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    large = asyncio.create_task(budget.acquire(100))
    await settle()
    small = asyncio.create_task(budget.acquire(10))
    await settle()
    assert not large.done() and not small.done()
    budget.release(60)
    await asyncio.wait_for(large, 1)
    await settle()
    assert not small.done()
    budget.release(100)
    await asyncio.wait_for(small, 1)
    assert budget.used == 10


async def test_an_oversized_request_is_clamped_to_capacity() -> None:
    budget = ByteBudget(100)
    await asyncio.wait_for(budget.acquire(1_000), 1)
    assert budget.used == 100
    budget.release(1_000)
    assert budget.used == 0


async def test_empty_requests_of_one_device_each_hold_a_byte() -> None:
    # Two empty UploadRequests (0 bytes) of one device in flight at once: each release finds
    # what its acquire took (it used to find the device gone after the first one).
    budget = ByteBudget(100)
    await budget.acquire(0, ("t", "d"))
    assert budget.try_acquire(0, ("t", "d"))
    assert budget.used == 2
    budget.release(0, ("t", "d"))
    budget.release(0, ("t", "d"))
    assert budget.used == 0


async def test_a_cancelled_waiter_lets_the_next_one_through() -> None:
    budget = ByteBudget(100)
    await budget.acquire(90)
    first = asyncio.create_task(budget.acquire(50))
    await settle()
    second = asyncio.create_task(budget.acquire(5))
    await settle()
    assert not second.done()
    first.cancel()
    await asyncio.wait_for(second, 1)
    assert budget.used == 95
    assert budget.waiting == 0


async def test_close_wakes_every_waiter_with_unavailable() -> None:
    budget = ByteBudget(100)
    await budget.acquire(100)
    waiters = [asyncio.create_task(budget.acquire(10)) for _ in range(3)]
    await settle()
    budget.close()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 1)
    assert all(isinstance(r, Unavailable) for r in results)
    with pytest.raises(Unavailable):
        await budget.acquire(1)
    with pytest.raises(Unavailable):
        budget.try_acquire(1)
    budget.close()  # idempotent
    budget.release(100)
    assert budget.used == 0


def test_invalid_amounts_are_rejected() -> None:
    with pytest.raises(ValueError):
        ByteBudget(0)
    budget = ByteBudget(10)
    with pytest.raises(ValueError):
        budget.try_acquire(-1)
    with pytest.raises(ValueError):
        budget.release(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def timed_budget(rate: int, min_share: int = 1 << 20) -> tuple[ByteBudget, FakeClock]:
    """A 1 MB budget whose admission measured ``rate`` bytes/s, with a 0.5 s target and no
    floor on the queue."""
    clock = FakeClock()
    admission = Admission(0.5, clock, sample_s=0.1, min_queue_bytes=0)
    budget = ByteBudget(1_000_000, admission, min_share)
    for _ in range(3):  # drain at ``rate``: three samples of 0.1 s
        await budget.acquire(rate // 10)
        clock.now += 0.1
        budget.release(rate // 10)
    return budget, clock


async def test_without_a_measurement_the_byte_cap_alone_applies() -> None:
    budget = ByteBudget(100, Admission(0.5, FakeClock()))
    assert budget.try_acquire(60)
    assert budget.try_acquire(40)
    assert not budget.try_acquire(1)


async def test_admission_by_time_refuses_before_the_byte_cap() -> None:
    budget, _ = await timed_budget(100_000)  # 0.5 s of queue: 50 kB
    assert budget.try_acquire(30_000)
    assert budget.try_acquire(20_000)
    assert not budget.try_acquire(1)
    assert budget.fits_bytes(1)  # refused by time, not by bytes
    budget.release(50_000)
    # An empty queue admits any batch, even one over the target.
    assert budget.try_acquire(80_000)


async def test_a_waiter_held_by_time_is_admitted_as_the_queue_drains() -> None:
    budget, clock = await timed_budget(100_000)
    await budget.acquire(50_000)
    waiter = asyncio.create_task(budget.acquire(19_000))
    await settle()
    assert not waiter.done() and budget.waiting == 1
    clock.now += 0.1
    budget.release(10_000)  # 40 kB + 19 kB would wait 0.59 s, over the target
    await settle()
    assert not waiter.done()
    clock.now += 0.1
    budget.release(10_000)  # 30 kB + 19 kB: 0.49 s (not the boundary: the clock is a float)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 49_000


# --- fairness between devices and tenants ---------------------------------------------------

A1, A2, B1, C1 = ("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")


async def test_waiting_devices_are_served_round_robin_not_in_arrival_order() -> None:
    budget = ByteBudget(100, min_share=1_000)  # no share cap here
    await budget.acquire(100, C1)
    order: list[str] = []

    async def take(owner: tuple[str, str], name: str) -> None:
        await budget.acquire(10, owner)
        order.append(name)

    # The flooding device queued three batches before the other device's one.
    tasks = [asyncio.create_task(take(A1, f"a1-{i}")) for i in range(3)]
    await settle()
    tasks.append(asyncio.create_task(take(A2, "a2")))
    await settle()
    budget.release(100, C1)
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == ["a1-0", "a2", "a1-1", "a1-2"]


async def test_tenants_take_turns_before_their_devices_do() -> None:
    budget = ByteBudget(10, min_share=10)
    await budget.acquire(10, B1)
    order: list[tuple[str, str]] = []

    async def take(owner: tuple[str, str]) -> None:
        await budget.acquire(10, owner)
        order.append(owner)
        budget.release(10, owner)

    tasks = [asyncio.create_task(take(o)) for o in (A1, A2, B1)]
    await settle()
    budget.release(10, B1)
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    # Tenant a, then tenant b, then a's second device: b's one device is not behind a's two.
    assert order == [A1, B1, A2]


async def test_a_device_over_its_share_gives_its_turn_away() -> None:
    budget = ByteBudget(100, min_share=10)
    await budget.acquire(40, A1)
    await budget.acquire(10, B1)
    assert budget.share() == 50  # two active devices
    more = asyncio.create_task(budget.acquire(20, A1))  # 60 > 50 while b is active
    await settle()
    assert not more.done() and budget.used == 50
    budget.release(10, B1)  # b leaves: a is alone and may fill the budget
    await asyncio.wait_for(more, 1)
    assert budget.held(A1) == 60


async def test_a_device_holding_nothing_always_gets_one_batch_in() -> None:
    budget = ByteBudget(100, min_share=1)
    await budget.acquire(90, A1)
    assert budget.try_acquire(10, B1)  # an even share would be 50; b held nothing
    assert budget.share() == 50
    budget.release(90, A1)
    budget.release(10, B1)
    assert (budget.used, budget.held(A1), budget.held(B1)) == (0, 0, 0)


async def test_the_share_follows_the_admitted_queue_not_just_the_byte_cap() -> None:
    budget, _ = await timed_budget(100_000, min_share=1)  # admission lets 50 kB be queued
    budget_min = ByteBudget(1_000_000, None, min_share=1)
    assert budget_min.share() == float("inf")  # one device or none: no cap
    await budget.acquire(1, A1)
    await budget.acquire(1, B1)
    assert budget.share() == 25_000  # 50 kB over two devices, not 1 MB over two


async def test_cancelled_waiters_of_several_devices_leave_nothing_behind() -> None:
    budget = ByteBudget(100)
    await budget.acquire(100, A1)
    waiters = [asyncio.create_task(budget.acquire(10, o)) for o in (A1, A2, B1, B1)]
    await settle()
    assert budget.waiting == 4
    for waiter in waiters[1:]:
        waiter.cancel()
    await settle()
    assert budget.waiting == 1
    budget.release(100, A1)
    await asyncio.wait_for(waiters[0], 1)
    assert (budget.used, budget.held(A1), budget.held(B1)) == (10, 10, 0)
    budget.release(10, A1)
    with pytest.raises(ValueError):
        budget.release(10, A1)


async def test_upload_is_refused_beyond_its_share() -> None:
    budget = ByteBudget(100, min_share=10)
    assert budget.try_acquire(40, A1)
    assert budget.try_acquire(10, B1)
    assert not budget.try_acquire(20, A1)  # 60 > 50 while b is active
    assert budget.try_acquire(20, B1)
