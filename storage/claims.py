"""Single-use enrollment codes without a lock: claim, then read the winner back.

A claimant appends ``(enrollment, device)`` to ``enrollment_claims`` and then reads the
enrollment's claims: the winner is the claim with the lowest ``(_block_number, device_id)``. Block
numbers are given to inserts as they commit, under the lock that makes them visible, so any
claimant that reads back after its own insert sees every claim numbered before it, and all
claimants, in any process sharing the database, name the same winner (see migration 0005).
Read-backs that wait at the same time share one query.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter
from callsight.storage.sql import Sql

_Key = tuple[str, str]  # (tenant_id, enrollment_id)


class EnrollmentClaims:
    """Claims on enrollment codes and the read-back that names each code's one winner."""

    def __init__(self, db: Database, writer: GroupWriter, max_batch: int = 1_000) -> None:
        self._db = db
        self._writer = writer
        self._max_batch = max_batch
        self._waiting: dict[_Key, list[asyncio.Future[str]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.queries = 0

    async def claim(self, tenant_id: str, enrollment_id: str, device_id: str, now_ms: int) -> bool:
        """Claims the code for ``device_id``; True when this claim is the code's winner."""
        await self._writer.insert(
            "enrollment_claims",
            ("tenant_id", "enrollment_id", "device_id", "claimed_at"),
            [(tenant_id, enrollment_id, device_id, datetime.fromtimestamp(now_ms / 1000, UTC))],
        )
        return await self.winner(tenant_id, enrollment_id) == device_id

    async def winner(self, tenant_id: str, enrollment_id: str) -> str:
        """The device that won the code ("" when nobody claimed it), from a read that starts now.

        The read starts after this call, so it sees every claim committed before the call.
        """
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((tenant_id, enrollment_id), []).append(done)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        return await asyncio.shield(done)

    async def _read(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[: self._max_batch]
                waiters = {k: self._waiting.pop(k) for k in keys}
                try:
                    winners = await self._winners(keys)
                except Exception as exc:
                    for futures in waiters.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                                f.exception()  # reported to the awaiting claimant
                    continue
                for key, futures in waiters.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(winners.get(key, ""))
        finally:
            self._reader = None

    async def _winners(self, keys: list[_Key]) -> dict[_Key, str]:
        self.queries += 1
        rows = await self._db.named_rows(
            Sql(
                "SELECT tenant_id, enrollment_id,"
                " argMin(device_id, (_block_number, device_id)) AS winner"
                " FROM enrollment_claims"
                " WHERE tenant_id IN {t:Array(String)} AND enrollment_id IN {e:Array(String)}"
                " GROUP BY tenant_id, enrollment_id",
                {
                    "t": sorted({t for t, _ in keys}),
                    "e": sorted({e for _, e in keys}),
                },
            )
        )
        return {(r["tenant_id"], r["enrollment_id"]): r["winner"] for r in rows}
