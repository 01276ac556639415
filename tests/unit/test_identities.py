"""The identity directory in memory: unknown tokens cost no query and no memory of their own;
misses share one rate-limited catch-up; refreshes apply newer versions only."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any, cast

import pytest

from callsight.core.errors import Unauthenticated
from callsight.server.auth import Access, Authenticator, TokenHasher
from callsight.storage.database import Database
from callsight.storage.identities import DeviceIdentity, Identities
from callsight.storage.sql import Sql


class CountingDb:
    """Answers every SELECT from ``rows`` (per table) and counts the queries."""

    def __init__(self) -> None:
        self.queries = 0
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.delay_s = 0.0

    async def named_rows(self, query: Sql, binary: Any = ()) -> list[dict[str, Any]]:
        self.queries += 1
        await asyncio.sleep(self.delay_s)
        table = query.text.split(" FROM ")[1].split()[0]
        since = int(query.params.get("v", -1))
        return [r for r in self.rows.get(table, []) if r["version"] > since]


def device_row(
    device_id: str, token_hash: bytes, version: int, revoked: bool = False
) -> dict[str, Any]:
    return {
        "tenant_id": "t1",
        "device_id": device_id,
        "employee_id": "e1",
        "token_hash": token_hash,
        "region": "IN",
        "revoked": revoked,
        "version": version,
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_unknown_tokens_share_catch_ups_and_leave_nothing_behind() -> None:
    db = CountingDb()
    identities = Identities(cast(Database, db), catch_up_gap_s=0.1)
    await identities.load()
    loaded = db.queries
    auth = Authenticator(identities, TokenHasher(os.urandom(32)), None)

    async def attempt(token: str) -> None:
        with pytest.raises(Unauthenticated):
            await auth.authenticate(Access.DEVICE, bearer(token))

    # 2,000 random tokens at once: one catch-up refresh serves them all.
    tokens = [f"cs{'dk'[i % 2]}_{secrets.token_hex(16)}_x" for i in range(2_000)]
    await asyncio.gather(*(attempt(t) for t in tokens))
    refreshes = (db.queries - loaded) / len(identities._tables)
    assert refreshes <= 2
    # Misses arriving over time are bounded by the catch-up rate, not by their number.
    loop = asyncio.get_running_loop()
    started, before = loop.time(), db.queries
    for _ in range(10):
        await asyncio.gather(*(attempt(f"csd_{secrets.token_hex(16)}_x") for _ in range(100)))
    elapsed = loop.time() - started
    refreshes = (db.queries - before) / len(identities._tables)
    assert refreshes <= elapsed / 0.1 + 2
    assert identities.size == 0


async def test_a_device_written_elsewhere_is_found_by_one_catch_up() -> None:
    db = CountingDb()
    identities = Identities(cast(Database, db), catch_up_gap_s=0.05)
    await identities.load()
    hasher = TokenHasher(os.urandom(32))
    device_id = "d1" * 16  # a public id as issued: 32 hex digits
    token, token_hash = hasher.issue("csd", device_id)
    db.rows["devices"] = [device_row(device_id, token_hash, version=10)]
    auth = Authenticator(identities, hasher, None)
    caller = await auth.authenticate(Access.DEVICE, bearer(token))
    assert (caller.device_id, caller.tenant_id) == (device_id, "t1")
    # Known now: later calls need no query at all.
    before = db.queries
    for _ in range(100):
        await auth.authenticate(Access.DEVICE, bearer(token))
    assert db.queries == before


async def test_refresh_applies_the_newest_version_and_local_writes_at_once() -> None:
    db = CountingDb()
    identities = Identities(cast(Database, db), lookback_s=0.0)
    db.rows["devices"] = [device_row("d", b"h" * 32, version=5)]
    await identities.load()
    # A revocation written by another process arrives with the next refresh.
    db.rows["devices"].append(device_row("d", b"h" * 32, version=7, revoked=True))
    await identities.refresh()
    device = identities.device("d")
    assert device is not None and device.revoked
    # An older row read late never undoes a newer one.
    db.rows["devices"].append(device_row("d", b"h" * 32, version=6))
    identities.devices.newest = 5
    await identities.refresh()
    device = identities.device("d")
    assert device is not None and device.revoked
    # This process's own write applies without any query.
    before = db.queries
    identities.devices.put("e", 9, DeviceIdentity("t1", "e", "e1", b"x" * 32, "", False))
    assert identities.device("e") is not None and db.queries == before


async def test_refresh_loop_survives_failures() -> None:
    db = CountingDb()
    identities = Identities(cast(Database, db))
    calls = 0

    async def failing(query: Sql, binary: Any = ()) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        raise RuntimeError("database down")

    db.named_rows = failing  # type: ignore[method-assign]
    task = asyncio.create_task(identities.run(0.01, max_backoff_s=0.02))
    for _ in range(500):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    assert calls >= 3 and not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_erasures_are_held_per_tenant_and_tell_listeners() -> None:
    db = CountingDb()
    db.rows["erasures"] = [
        {"tenant_id": "t1", "client_key": 7, "lifted": False, "version": 1},
        {"tenant_id": "t1", "client_key": 8, "lifted": False, "version": 1},
        {"tenant_id": "t2", "client_key": 7, "lifted": True, "version": 1},
    ]
    identities = Identities(cast(Database, db))
    told: list[str] = []
    identities.on_erasure(told.append)
    await identities.load()
    assert (set(identities.erased("t1")), set(identities.erased("t2"))) == ({7, 8}, set())
    assert sorted(told) == ["t1", "t1", "t2"]

    # Another process lifts one: the next refresh applies it; rows seen again change nothing.
    told.clear()
    db.rows["erasures"].append({"tenant_id": "t1", "client_key": 8, "lifted": True, "version": 2})
    await identities.refresh()
    await identities.refresh()
    assert set(identities.erased("t1")) == {7} and told == ["t1"]
    # This process writes one: it applies at once.
    identities.erasures.put(("t2", 9), 3, True)
    assert set(identities.erased("t2")) == {9} and told == ["t1", "t2"]
