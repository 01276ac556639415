"""What the server last heard from each device: last call, last accepted batch, last batch result.

Ingest reports every device RPC and every ack here, on the hot path of thousands of phones, so a
report is one update of a dict in memory. ``flush`` writes the devices changed since the last
flush in one insert into ``device_activity`` (migration 0012), every ``FLUSH_EVERY_S`` and at
shutdown. Every column there is a maximum, so processes never overwrite each other's newer times.
Memory is bounded by the devices heard from within one flush interval (only authenticated devices
report), and by every enrolled device while the database refuses the inserts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from callsight.storage.database import Database
from callsight.storage.sql import Sql

log = structlog.get_logger(__name__)

FLUSH_EVERY_S = 5.0
_COLUMNS = ("tenant_id", "device_id", "last_seen_ms", "last_sync_ms", "last_batch")

Owner = tuple[str, str]  # (tenant_id, device_id)


@dataclass(slots=True)
class _Heard:
    seen_ms: int = 0
    sync_ms: int = 0  # last ACCEPTED ack
    batch_ms: int = 0  # last ack of any result
    result: int = 0  # UploadResult of that ack

    def merge(self, other: _Heard) -> None:
        self.seen_ms = max(self.seen_ms, other.seen_ms)
        self.sync_ms = max(self.sync_ms, other.sync_ms)
        if (other.batch_ms, other.result) > (self.batch_ms, self.result):
            self.batch_ms, self.result = other.batch_ms, other.result


async def recent_devices(db: Database, since_ms: int, limit: int) -> dict[str, list[str]]:
    """tenant_id -> its devices heard from at or after ``since_ms`` (epoch ms), the most recent
    first, at most ``limit`` devices in all."""
    rows = await db.named_rows(
        Sql(
            "SELECT tenant_id, device_id, max(last_seen_ms) AS seen FROM device_activity"
            " GROUP BY tenant_id, device_id HAVING seen >= {since:UInt64}"
            " ORDER BY seen DESC LIMIT {limit:UInt32}",
            {"since": since_ms, "limit": limit},
        )
    )
    recent: dict[str, list[str]] = {}
    for row in rows:
        recent.setdefault(row["tenant_id"], []).append(row["device_id"])
    return recent


class DeviceActivity:
    """Device activity in memory, written to ClickHouse in bulk."""

    def __init__(self, db: Database, accepted: int) -> None:
        """``accepted``: the UploadResult value of an accepted batch (a sync)."""
        self._db = db
        self._accepted = accepted
        self._changed: dict[Owner, _Heard] = {}
        self._flushing = asyncio.Lock()
        self.flushes = 0

    def seen(self, owner: Owner, now_ms: int) -> None:
        """The device called the server."""
        heard = self._changed.get(owner)
        if heard is None:
            self._changed[owner] = _Heard(seen_ms=now_ms)
        else:
            heard.seen_ms = max(heard.seen_ms, now_ms)

    def acked(self, owner: Owner, result: int, now_ms: int) -> None:
        """A batch of the device was answered with ``result``."""
        heard = self._changed.get(owner)
        if heard is None:
            heard = self._changed[owner] = _Heard()
        heard.seen_ms = max(heard.seen_ms, now_ms)
        if now_ms >= heard.batch_ms:
            heard.batch_ms, heard.result = now_ms, result
        if result == self._accepted:
            heard.sync_ms = max(heard.sync_ms, now_ms)

    @property
    def pending(self) -> int:
        """Devices changed since the last flush."""
        return len(self._changed)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drops what is pending of the tenant's devices: the tenant is being deleted, and a
        later flush must not write rows of it back."""
        self._changed = {o: h for o, h in self._changed.items() if o[0] != tenant_id}

    async def flush(self) -> int:
        """Writes every device changed since the last flush in one insert; returns how many.

        On failure the changes are kept (merged with newer ones) for the next flush.
        """
        async with self._flushing:
            changed, self._changed = self._changed, {}
            if not changed:
                return 0
            rows = [
                (tenant, device, h.seen_ms, h.sync_ms, (h.batch_ms, h.result))
                for (tenant, device), h in changed.items()
            ]
            try:
                await self._db.insert_rows("device_activity", rows, _COLUMNS)
            except BaseException:
                for owner, heard in changed.items():
                    newer = self._changed.get(owner)
                    if newer is not None:
                        heard.merge(newer)
                    self._changed[owner] = heard
                raise
            self.flushes += 1
            return len(rows)

    async def run(self, every_s: float = FLUSH_EVERY_S) -> None:
        """Flushes every ``every_s`` until cancelled; a failed flush is logged and retried."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.flush()
            except Exception:
                log.exception("device activity flush failed", devices=self.pending)

    async def close(self) -> None:
        """Writes what is left (shutdown)."""
        try:
            await self.flush()
        except Exception:
            log.exception("device activity lost at shutdown", devices=self.pending)
