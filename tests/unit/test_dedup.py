"""The in-process dedup layer: outcomes, waits on pending writes, bounded memory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence

import pytest

from callsight.pipeline.dedup import Deduplicator, Outcome


class Loader:
    def __init__(self, stored: dict[str, dict[str, int]] | None = None) -> None:
        self.stored = stored or {}
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    async def __call__(
        self, table: str, tenant: str, devices: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        self.calls.append((table, tenant, tuple(devices)))
        return {d: dict(self.stored.get(d, {})) for d in devices}


def by_the_rule(
    keys: Sequence[str], versions: Sequence[int], newest: dict[str, int]
) -> list[Outcome]:
    """The outcomes by the rule itself (the newest version taken so far wins); takes the new
    versions into ``newest``."""
    expected = []
    for key, version in zip(keys, versions, strict=True):
        before = newest.get(key)
        if before is None:
            expected.append(Outcome.ACCEPTED)
        elif version > before:
            expected.append(Outcome.UPDATED)
        else:
            expected.append(Outcome.DUPLICATE)
            continue
        newest[key] = version
    return expected


async def test_outcomes_against_stored_and_within_a_batch() -> None:
    dedup = Deduplicator(Loader({"d1": {"a": 10, "b": 10}}))
    await dedup.ensure_loaded("calls", "t", "d1")
    verdict = dedup.classify(
        "calls", "t", "d1", ["a", "b", "c", "c", "d", "d"], [10, 11, 5, 5, 1, 2]
    )
    assert [Outcome(o) for o in verdict.outcomes] == [
        Outcome.DUPLICATE,  # same version as stored
        Outcome.UPDATED,  # newer than stored
        Outcome.ACCEPTED,
        Outcome.DUPLICATE,  # repeated in the same batch
        Outcome.ACCEPTED,
        Outcome.UPDATED,  # newer than the copy earlier in the batch
    ]
    assert verdict.new_rows.tolist() == [False, True, True, False, True, True]


async def test_outcomes_and_memory_follow_the_record_by_record_rule_over_many_batches() -> None:
    # Batches mostly of distinct keys (classified as columns when over SMALL_BATCH), some with
    # repeats or small (record by record), checked against the rule itself: the newest version
    # taken so far wins.
    rng = random.Random(3)
    stored = {f"k{i}": rng.randrange(1, 50) for i in range(0, 200, 3)}
    dedup = Deduplicator(Loader({"d": stored}))
    await dedup.ensure_loaded("calls", "t", "d")
    newest = dict(stored)
    for _ in range(200):
        size = rng.randrange(0, 40)
        if rng.random() < 0.7:
            keys = rng.sample([f"k{i}" for i in range(200)], size)
        else:
            keys = [f"k{rng.randrange(200)}" for _ in range(size)]
        versions = [rng.randrange(0, 60) for _ in keys]
        verdict = dedup.classify("calls", "t", "d", keys, versions)
        expected = by_the_rule(keys, versions, newest)
        assert [Outcome(o) for o in verdict.outcomes] == expected
        assert verdict.counts == tuple(expected.count(o) for o in Outcome)
        assert verdict.all_new == (Outcome.DUPLICATE not in expected)
        new = verdict.new_rows.tolist()
        dedup.record(
            "calls",
            "t",
            "d",
            [k for k, n in zip(keys, new, strict=True) if n],
            [v for v, n in zip(versions, new, strict=True) if n],
            None,
        )
    assert dedup.entries == len(newest)
    final = dedup.classify("calls", "t", "d", list(newest), list(newest.values()))
    assert final.count(Outcome.DUPLICATE) == len(newest)
    newer = dedup.classify("calls", "t", "d", list(newest), [v + 1 for v in newest.values()])
    assert newer.count(Outcome.UPDATED) == len(newest)


async def test_devices_seen_together_load_in_one_query() -> None:
    loader = Loader()
    dedup = Deduplicator(loader)
    await asyncio.gather(*(dedup.ensure_loaded("calls", "t", f"d{i}") for i in range(20)))
    await dedup.ensure_loaded("calls", "t", "d3")  # already known: no query
    assert len(loader.calls) == 1 and len(loader.calls[0][2]) == 20


async def test_duplicate_of_a_pending_write_waits_for_it() -> None:
    dedup = Deduplicator(Loader())
    await dedup.ensure_loaded("calls", "t", "d")
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    dedup.record("calls", "t", "d", ["a"], [1], written)
    verdict = dedup.classify("calls", "t", "d", ["a"], [1])
    assert verdict.count(Outcome.DUPLICATE) == 1
    assert verdict.waits == (written,)
    written.set_result(None)
    await asyncio.sleep(0)
    assert dedup.classify("calls", "t", "d", ["a"], [1]).waits == ()


async def test_a_failed_write_makes_the_device_reload_from_the_database() -> None:
    loader = Loader()
    dedup = Deduplicator(loader)
    await dedup.ensure_loaded("calls", "t", "d")
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    dedup.record("calls", "t", "d", ["a"], [1], written)
    written.set_exception(RuntimeError("insert failed"))
    await asyncio.sleep(0)
    await dedup.ensure_loaded("calls", "t", "d")
    assert len(loader.calls) == 2
    verdict = dedup.classify("calls", "t", "d", ["a"], [1])
    assert verdict.count(Outcome.ACCEPTED) == 1


async def test_memory_is_bounded_by_evicting_idle_devices() -> None:
    dedup = Deduplicator(Loader(), max_entries=100)
    for device in range(10):
        await dedup.ensure_loaded("calls", "t", f"d{device}")
        keys = [f"k{i}" for i in range(30)]
        dedup.record("calls", "t", f"d{device}", keys, [1] * 30, None)
    assert dedup.entries <= 100


async def test_load_failure_reaches_every_waiter() -> None:
    async def broken(table: str, tenant: str, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        raise RuntimeError("clickhouse down")

    dedup = Deduplicator(broken)
    results = await asyncio.gather(
        dedup.ensure_loaded("calls", "t", "a"),
        dedup.ensure_loaded("calls", "t", "b"),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await dedup.ensure_loaded("calls", "t", "a")


async def test_a_device_queued_during_a_load_is_loaded_too() -> None:
    release = asyncio.Event()
    loads: list[tuple[str, ...]] = []

    async def slow(table: str, tenant: str, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        loads.append(tuple(devices))
        await release.wait()
        return {d: {} for d in devices}

    dedup = Deduplicator(slow)
    first = asyncio.create_task(dedup.ensure_loaded("calls", "t", "a"))
    while not loads:
        await asyncio.sleep(0.001)
    second = asyncio.create_task(dedup.ensure_loaded("calls", "t", "b"))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert loads == [("a",), ("b",)]


async def test_a_device_evicted_before_its_waiter_resumes_is_loaded_again() -> None:
    loader = Loader({"a": {f"k{i}": 1 for i in range(80)}, "b": {f"k{i}": 1 for i in range(80)}})
    dedup = Deduplicator(loader, max_entries=100)
    # a and b load in one round; the second pushes the first out before anyone classifies.
    await asyncio.gather(
        dedup.ensure_loaded("calls", "t", "a"), dedup.ensure_loaded("calls", "t", "b")
    )
    await dedup.ensure_loaded("calls", "t", "a")
    verdict = dedup.classify("calls", "t", "a", ["k1"], [1])
    assert verdict.count(Outcome.DUPLICATE) == 1


async def test_forgetting_a_tenant_reloads_only_its_devices() -> None:
    loader = Loader()
    dedup = Deduplicator(loader)
    for tenant in ("t", "u"):
        await dedup.ensure_loaded("calls", tenant, "d")
        dedup.record("calls", tenant, "d", ["a"], [1], None)
    assert dedup.entries == 2
    dedup.forget_tenant("t")
    assert dedup.entries == 1
    # What ClickHouse holds now (the erased record is gone) decides again.
    await dedup.ensure_loaded("calls", "t", "d")
    assert loader.calls[-1] == ("calls", "t", ("d",))
    assert dedup.classify("calls", "t", "d", ["a"], [1]).count(Outcome.ACCEPTED) == 1
    assert dedup.classify("calls", "u", "d", ["a"], [1]).count(Outcome.DUPLICATE) == 1


async def test_warming_loads_devices_in_one_query_and_their_batches_query_nothing() -> None:
    loader = Loader({"a": {"k": 3}})
    dedup = Deduplicator(loader)
    assert await dedup.warm("calls", "t", ["a", "b", "c"]) == 3
    assert loader.calls == [("calls", "t", ("a", "b", "c"))]
    assert dedup.loaded("calls", "t", "a")
    await dedup.ensure_loaded("calls", "t", "a")
    verdict = dedup.classify("calls", "t", "a", ["k", "k2"], [3, 1])
    assert verdict.outcomes.tolist() == [Outcome.DUPLICATE, Outcome.ACCEPTED]
    # Loaded devices are not loaded again; new ones are.
    assert await dedup.warm("calls", "t", ["a", "d"]) == 1
    assert loader.calls[-1] == ("calls", "t", ("d",))
    assert len(loader.calls) == 2


async def test_a_batch_arriving_while_warming_waits_for_that_load() -> None:
    release = asyncio.Event()
    loads: list[tuple[str, ...]] = []

    async def slow(table: str, tenant: str, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        loads.append(tuple(devices))
        await release.wait()
        return {d: {"k": 1} for d in devices}

    dedup = Deduplicator(slow)
    warming = asyncio.create_task(dedup.warm("calls", "t", ["a", "b"]))
    await asyncio.sleep(0.01)
    batch = asyncio.create_task(dedup.ensure_loaded("calls", "t", "b"))
    await asyncio.sleep(0.02)
    assert not batch.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(warming, batch), 2)
    assert loads == [("a", "b")]
    assert dedup.classify("calls", "t", "b", ["k"], [1]).outcomes.tolist() == [Outcome.DUPLICATE]


async def test_a_failed_warm_up_leaves_each_batch_to_load_its_device() -> None:
    loads: list[tuple[str, ...]] = []

    async def flaky(table: str, tenant: str, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        loads.append(tuple(devices))
        await asyncio.sleep(0.01)
        if len(loads) == 1:  # the warm-up's query fails, the batch's own succeeds
            raise RuntimeError("clickhouse down")
        return {d: {} for d in devices}

    dedup = Deduplicator(flaky)
    warming = asyncio.create_task(dedup.warm("calls", "t", ["a", "b"]))
    await asyncio.sleep(0)
    batch = asyncio.create_task(dedup.ensure_loaded("calls", "t", "a"))
    with pytest.raises(RuntimeError):
        await warming
    await asyncio.wait_for(batch, 2)
    assert loads == [("a", "b"), ("a",)]
    assert not dedup.loaded("calls", "t", "b")


async def test_warming_stops_at_half_the_memory_bound() -> None:
    loader = Loader({"a": {f"k{i}": 1 for i in range(60)}})
    dedup = Deduplicator(loader, max_entries=100)
    assert await dedup.warm("calls", "t", ["a"]) == 1
    assert await dedup.warm("calls", "t", ["b"]) == 0
    assert len(loader.calls) == 1


class Database:
    """What ClickHouse holds: both loaders read it; a test writes what it records as durable."""

    def __init__(self, stored: dict[str, dict[str, int]] | None = None) -> None:
        self.stored = stored or {}
        self.loads: list[tuple[str, ...]] = []
        self.lookups: list[dict[str, list[str]]] = []

    async def load(
        self, table: str, tenant: str, devices: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        self.loads.append(tuple(devices))
        return {d: dict(self.stored.get(d, {})) for d in devices}

    async def look_up(
        self, table: str, tenant: str, keys: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, int]]:
        self.lookups.append({d: list(k) for d, k in keys.items()})
        held = {d: self.stored.get(d, {}) for d in keys}
        return {d: {k: held[d][k] for k in ks if k in held[d]} for d, ks in keys.items()}

    def dedup(self, max_entries: int, large_device: int) -> Deduplicator:
        return Deduplicator(self.load, max_entries, self.look_up, large_device)


async def test_a_large_evicted_device_comes_back_by_keys_not_whole() -> None:
    db = Database(
        {"big": {f"k{i}": 1 for i in range(60)}, "other": {f"k{i}": 1 for i in range(150)}}
    )
    dedup = db.dedup(max_entries=200, large_device=50)
    await dedup.ensure_loaded("calls", "t", "big")
    await dedup.ensure_loaded("calls", "t", "other")  # pushes big out
    assert not dedup.loaded("calls", "t", "big")
    assert not dedup.ready("calls", "t", "big", ["k1"])
    await dedup.ensure_loaded("calls", "t", "big", ["k1", "new", "k1"])
    assert db.loads == [("big",), ("other",)]  # not loaded whole again
    assert db.lookups == [{"big": ["k1", "new"]}]
    assert dedup.entries == 150 + 1  # other, and big's k1
    verdict = dedup.classify("calls", "t", "big", ["k1", "new"], [1, 1])
    assert verdict.outcomes.tolist() == [Outcome.DUPLICATE, Outcome.ACCEPTED]
    dedup.record("calls", "t", "big", ["new"], [1], None)
    # Known keys need no query; an unknown one does.
    assert dedup.ready("calls", "t", "big", ["k1", "new"])
    assert not dedup.ready("calls", "t", "big", ["k2"])


async def test_a_small_evicted_device_is_loaded_whole_again() -> None:
    db = Database({"small": {"k": 1}, "other": {f"k{i}": 1 for i in range(100)}})
    dedup = db.dedup(max_entries=100, large_device=50)
    await dedup.ensure_loaded("calls", "t", "small")
    await dedup.ensure_loaded("calls", "u", "other")  # pushes small out
    assert not dedup.loaded("calls", "t", "small")
    dedup.forget_tenant("u")  # room again
    await dedup.ensure_loaded("calls", "t", "small", ["k"])
    assert db.loads == [("small",), ("other",), ("small",)]
    assert db.lookups == []


async def test_lookups_of_devices_asking_together_share_one_query() -> None:
    db = Database({f"d{i}": {f"k{j}": 1 for j in range(20)} for i in range(5)})
    dedup = db.dedup(max_entries=100, large_device=10)
    for i in range(5):
        await dedup.ensure_loaded("calls", "t", f"d{i}")  # whole: memory is full after them
    for i in range(5, 10):  # come by keys, and their new records push d0-d4 out one by one
        await dedup.ensure_loaded("calls", "t", f"d{i}")
        dedup.record("calls", "t", f"d{i}", [f"n{j}" for j in range(20)], [1] * 20, None)
    assert db.loads == [(f"d{i}",) for i in range(5)]
    assert not any(dedup.loaded("calls", "t", f"d{i}") for i in range(5))
    await asyncio.gather(
        *(dedup.ensure_loaded("calls", "t", f"d{i}", ["k3", "x"]) for i in range(5))
    )
    assert db.lookups == [{f"d{i}": ["k3", "x"] for i in range(5)}]
    assert len(db.loads) == 5
    for i in range(5):
        verdict = dedup.classify("calls", "t", f"d{i}", ["k3", "x"], [1, 1])
        assert verdict.outcomes.tolist() == [Outcome.DUPLICATE, Outcome.ACCEPTED]


async def test_a_stored_version_never_lowers_one_being_written() -> None:
    db = Database({"big": {f"k{i}": 1 for i in range(60)}})
    dedup = db.dedup(max_entries=50, large_device=50)
    await dedup.ensure_loaded("calls", "t", "big")
    await dedup.ensure_loaded("calls", "t", "other")  # big (60 > 50) is out
    await dedup.ensure_loaded("calls", "t", "big", ["k1"])
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert dedup.classify("calls", "t", "big", ["k1"], [5]).count(Outcome.UPDATED) == 1
    dedup.record("calls", "t", "big", ["k1"], [5], written)
    # A second batch's lookup reads ClickHouse, which does not hold version 5 yet.
    await dedup.ensure_loaded("calls", "t", "big", ["k1", "k2"])
    verdict = dedup.classify("calls", "t", "big", ["k1"], [5])
    assert verdict.count(Outcome.DUPLICATE) == 1 and verdict.waits == (written,)
    written.set_result(None)


async def test_a_failed_write_beside_another_in_flight_keeps_only_what_is_in_flight() -> None:
    db = Database({"d": {"old": 1}})
    dedup = db.dedup(max_entries=1000, large_device=50)
    await dedup.ensure_loaded("calls", "t", "d")
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[None] = loop.create_future()
    dedup.record("calls", "t", "d", ["a"], [1], first)
    dedup.record("calls", "t", "d", ["b"], [1], second)
    first.set_exception(RuntimeError("insert failed"))
    await asyncio.sleep(0)
    # Reloading the device now would miss b, still being written: b is kept, the rest is
    # looked up in ClickHouse.
    assert dedup.loaded("calls", "t", "d")
    assert dedup.ready("calls", "t", "d", ["b"])
    assert not dedup.ready("calls", "t", "d", ["a"])
    await dedup.ensure_loaded("calls", "t", "d", ["a", "b", "old"])
    assert db.loads == [("d",)] and db.lookups == [{"d": ["a", "old"]}]
    verdict = dedup.classify("calls", "t", "d", ["a", "b", "old"], [1, 1, 1])
    assert verdict.outcomes.tolist() == [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert verdict.waits == (second,)
    second.set_result(None)


async def test_outcomes_follow_the_rule_while_devices_are_evicted_and_looked_up() -> None:
    # Memory far below the devices' histories: devices come and go, large ones by keys; the
    # outcomes still follow the rule that the newest version stored so far wins.
    rng = random.Random(5)
    db = Database()
    dedup = db.dedup(max_entries=120, large_device=20)
    for _ in range(400):
        device = f"d{rng.randrange(8)}"
        keys = rng.sample([f"k{i}" for i in range(100)], rng.randrange(1, 40))
        versions = [rng.randrange(0, 5) for _ in keys]
        if not dedup.ready("calls", "t", device, keys):
            await dedup.ensure_loaded("calls", "t", device, keys)
        verdict = dedup.classify("calls", "t", device, keys, versions)
        # What is recorded is durable at once (written=None): ClickHouse holds it too.
        expected = by_the_rule(keys, versions, db.stored.setdefault(device, {}))
        assert [Outcome(o) for o in verdict.outcomes] == expected
        new = verdict.new_rows.tolist()
        taken = [(k, v) for k, v, n in zip(keys, versions, new, strict=True) if n]
        dedup.record("calls", "t", device, [k for k, _ in taken], [v for _, v in taken], None)
        assert dedup.entries <= 120 + 40
    assert db.lookups and len(db.loads) >= 8


async def test_a_device_first_seen_while_memory_has_no_room_comes_by_keys() -> None:
    db = Database({"old": {f"k{i}": 1 for i in range(60)}, "new": {"k1": 1, "k2": 1}})
    dedup = db.dedup(max_entries=100, large_device=50)
    await dedup.ensure_loaded("calls", "t", "old")
    assert dedup.entries == 60  # no room for another 50
    await dedup.ensure_loaded("calls", "t", "new", ["k1", "k3"])
    assert db.loads == [("old",)] and db.lookups == [{"new": ["k1", "k3"]}]
    verdict = dedup.classify("calls", "t", "new", ["k1", "k3"], [1, 1])
    assert verdict.outcomes.tolist() == [Outcome.DUPLICATE, Outcome.ACCEPTED]


async def test_forgetting_a_tenant_keeps_the_records_still_being_written() -> None:
    db = Database({"d": {"old": 1}})
    dedup = db.dedup(max_entries=1000, large_device=50)
    await dedup.ensure_loaded("calls", "t", "d")
    written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    dedup.record("calls", "t", "d", ["a"], [1], written)
    dedup.forget_tenant("t")
    # ClickHouse answers for "old" again (an erasure may have deleted it); "a" is not there yet.
    assert dedup.entries == 1
    await dedup.ensure_loaded("calls", "t", "d", ["a", "old"])
    assert db.lookups == [{"d": ["old"]}]
    verdict = dedup.classify("calls", "t", "d", ["a"], [1])
    assert verdict.count(Outcome.DUPLICATE) == 1 and verdict.waits == (written,)
    written.set_result(None)


async def test_a_later_batch_waits_for_earlier_ones_of_its_device_still_loading() -> None:
    # The load ends; before the first batch's task resumes, the device's next batch (a re-send
    # of the first) asks whether it may be classified at once: not before the first is.
    release = asyncio.Event()
    seen: list[bool] = []

    async def slow(table: str, tenant: str, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        await release.wait()
        asyncio.get_running_loop().call_soon(
            lambda: seen.append(dedup.ready("calls", "t", "d", ["a"]))
        )
        return {d: {} for d in devices}

    dedup = Deduplicator(slow)
    outcomes: list[tuple[str, int]] = []

    async def batch(name: str) -> None:
        if not dedup.ready("calls", "t", "d", ["a"]):
            await dedup.ensure_loaded("calls", "t", "d", ["a"])
        verdict = dedup.classify("calls", "t", "d", ["a"], [1])
        dedup.record("calls", "t", "d", ["a"], [1], None)
        outcomes.append((name, verdict.count(Outcome.ACCEPTED)))

    first = asyncio.create_task(batch("first"))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(first, 2)
    assert seen == [False]  # loaded, but the first batch had not been classified yet
    await batch("re-send")
    assert outcomes == [("first", 1), ("re-send", 0)]
