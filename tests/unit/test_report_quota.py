"""Report admission: the token bucket, the running caps per tenant and per process, the queue."""

from __future__ import annotations

import asyncio

import pytest

from callsight.core.errors import ResourceExhausted
from callsight.server.report_quota import ReportLimits, ReportQuota


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Holder:
    """A report that has been admitted and runs until ``finish()``."""

    def __init__(self, quota: ReportQuota, tenant_id: str) -> None:
        self._done = asyncio.Event()
        self.admitted = asyncio.Event()
        self.task = asyncio.create_task(self._run(quota, tenant_id))

    async def _run(self, quota: ReportQuota, tenant_id: str) -> None:
        async with quota.admit(tenant_id):
            self.admitted.set()
            await self._done.wait()

    async def finish(self) -> None:
        self._done.set()
        await self.task


async def held(quota: ReportQuota, tenant_id: str) -> Holder:
    holder = Holder(quota, tenant_id)
    await asyncio.wait_for(holder.admitted.wait(), 1)
    return holder


async def refused(quota: ReportQuota, tenant_id: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as info:
        async with quota.admit(tenant_id):
            pass
    return info.value


async def run_one(quota: ReportQuota, tenant_id: str) -> None:
    async with quota.admit(tenant_id):
        pass


def limits(**overrides: int | float) -> ReportLimits:
    settings: dict[str, int | float] = {
        "max_concurrent": 8,
        "max_concurrent_per_tenant": 2,
        "max_queue_ms": 0,
        "rate_per_s": 1000.0,
        "burst": 1000,
    }
    settings.update(overrides)
    return ReportLimits(**settings)  # type: ignore[arg-type]


async def test_the_bucket_allows_a_burst_then_its_rate_with_the_wait_as_retry_delay() -> None:
    clock = FakeClock()
    quota = ReportQuota(limits(rate_per_s=2.0, burst=3), clock)
    for _ in range(3):
        await run_one(quota, "a")
    exc = await refused(quota, "a")
    assert exc.retry_after_s == pytest.approx(0.5)
    assert "per second" not in str(exc) and "a second" in str(exc)
    clock.now += 0.25
    assert (await refused(quota, "a")).retry_after_s == pytest.approx(0.3)  # 0.25 up to 0.1 s
    clock.now += 0.25
    await run_one(quota, "a")
    clock.now += 10  # refills to the burst, not beyond
    for _ in range(3):
        await run_one(quota, "a")
    await refused(quota, "a")


async def test_one_tenants_rate_does_not_refuse_another_tenant() -> None:
    quota = ReportQuota(limits(rate_per_s=0.01, burst=2), FakeClock())
    await run_one(quota, "a")
    await run_one(quota, "a")
    await refused(quota, "a")
    await run_one(quota, "b")
    await run_one(quota, "b")


async def test_a_tenant_over_its_running_cap_is_refused_and_others_still_run() -> None:
    quota = ReportQuota(limits(max_concurrent_per_tenant=2, max_concurrent=8))
    a1, a2 = await held(quota, "a"), await held(quota, "a")
    exc = await refused(quota, "a")
    assert exc.retry_after_s is not None and 0.5 <= exc.retry_after_s <= 30
    assert "2 reports running" in str(exc) and "retry after" in str(exc)
    b = await held(quota, "b")
    assert quota.running == 3 and quota.running_for("a") == 2 and quota.running_for("b") == 1
    for holder in (a1, a2, b):
        await holder.finish()
    assert quota.running == 0 and quota.running_for("a") == 0
    await run_one(quota, "a")


async def test_a_refused_report_gives_its_token_back() -> None:
    quota = ReportQuota(limits(rate_per_s=0.001, burst=3), FakeClock())
    a1, a2 = await held(quota, "a"), await held(quota, "a")
    await refused(quota, "a")  # over the running cap: its token goes back
    await a1.finish()
    await a2.finish()
    await run_one(quota, "a")  # the third token
    assert "a second" in str(await refused(quota, "a"))


async def test_the_process_cap_refuses_every_tenant_and_frees_their_slots() -> None:
    quota = ReportQuota(limits(max_concurrent=2, max_concurrent_per_tenant=2))
    a1, a2 = await held(quota, "a"), await held(quota, "a")
    exc = await refused(quota, "b")
    assert "the server is running 2 reports" in str(exc)
    assert quota.running_for("b") == 0
    await a1.finish()
    b = await held(quota, "b")
    assert quota.running == 2
    await a2.finish()
    await b.finish()
    assert quota.running == 0


async def test_waiters_get_slots_in_arrival_order_within_the_queue_time() -> None:
    quota = ReportQuota(limits(max_concurrent_per_tenant=1, max_queue_ms=5_000))
    first = await held(quota, "a")
    second, third = Holder(quota, "a"), Holder(quota, "a")
    await asyncio.sleep(0.01)
    assert not second.admitted.is_set() and not third.admitted.is_set()
    await first.finish()
    await asyncio.wait_for(second.admitted.wait(), 1)
    assert not third.admitted.is_set()
    await second.finish()
    await asyncio.wait_for(third.admitted.wait(), 1)
    await third.finish()
    assert quota.running == 0 and quota.running_for("a") == 0


async def test_a_waiter_past_the_queue_time_is_refused_and_leaves_no_slot_taken() -> None:
    quota = ReportQuota(limits(max_concurrent_per_tenant=1, max_queue_ms=50))
    first = await held(quota, "a")
    exc = await refused(quota, "a")
    assert exc.retry_after_s is not None
    await first.finish()
    assert quota.running == 0 and quota.running_for("a") == 0
    await run_one(quota, "a")


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    quota = ReportQuota(limits(max_concurrent=1, max_queue_ms=5_000))
    first = await held(quota, "a")
    waiting = Holder(quota, "b")
    await asyncio.sleep(0.01)
    waiting.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting.task
    await first.finish()
    assert quota.running == 0 and quota.running_for("b") == 0
    await run_one(quota, "b")


async def test_idle_tenants_are_forgotten_so_the_table_stays_bounded() -> None:
    clock = FakeClock()
    quota = ReportQuota(limits(rate_per_s=10.0, burst=5), clock)
    for i in range(5_000):
        await run_one(quota, f"t{i}")
        clock.now += 0.01  # each tenant's bucket is full again 0.1 s later
    assert len(quota._tenants) <= 2048
