"""Tenants as the operator sees them, API keys as an admin sees them, and deleting a tenant.

A tenant is deleted in two steps (``server/admin_tenants.py`` runs them): ``destroy_keys`` first
(crypto-shredding: its wrapped data keys are removed, so no ciphertext of it opens again, and a
destroyed version of each key tells every process to drop its cached keyring), then, once every
process has seen that and flushed what it had decoded, ``delete_rows`` deletes its rows from every
table that has a ``tenant_id`` column, found in ``system.columns`` so a table added later is
covered without a change here.

When an API key was last used is kept in memory as keys authenticate (``KeyUses.touch``, a dict
update) and written about once a minute, so a busy key costs no write per call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.storage.database import Database
from callsight.storage.identities import Identities
from callsight.storage.sql import Sql

log = structlog.get_logger(__name__)

# How often KeyUses writes the last-use times it gathered.
KEY_USE_FLUSH_S = 60.0


@dataclass(frozen=True)
class TenantSummary:
    tenant_id: str
    name: str
    default_region: str
    timezone: str
    created_at_ms: int
    employees: int
    devices: int


@dataclass(frozen=True)
class StoredApiKey:
    tenant_id: str
    key_id: str
    name: str
    role: str  # "ADMIN" or "REPORTS"
    token_hash: bytes
    created_at_ms: int
    revoked: bool
    revoked_at_ms: int  # 0 while valid
    last_used_at_ms: int  # 0 if never (as written by KeyUses)


async def tenants(db: Database) -> list[TenantSummary]:
    """Every tenant with how many employees and devices it has, ordered by name."""
    rows = await db.named_rows(
        Sql(
            "SELECT t.tenant_id AS tenant_id, t.name AS name, t.default_region AS default_region,"
            " t.timezone AS timezone, toUnixTimestamp64Milli(t.created_at) AS created_at_ms,"
            " e.n AS employees, d.n AS devices"
            " FROM (SELECT * FROM tenants FINAL) AS t"
            " LEFT JOIN (SELECT tenant_id, count() AS n FROM employees FINAL GROUP BY tenant_id)"
            " AS e ON e.tenant_id = t.tenant_id"
            " LEFT JOIN (SELECT tenant_id, count() AS n FROM devices FINAL GROUP BY tenant_id)"
            " AS d ON d.tenant_id = t.tenant_id"
            " ORDER BY lower(t.name), t.tenant_id"
        )
    )
    return [TenantSummary(**row) for row in rows]


async def api_keys(db: Database, tenant_id: str, key_id: str | None = None) -> list[StoredApiKey]:
    """The tenant's API keys (or the one with ``key_id``), newest first, with their last use."""
    where = "tenant_id = {t:String}" + (" AND key_id = {k:String}" if key_id is not None else "")
    rows = await db.named_rows(
        Sql(
            "SELECT k.tenant_id AS tenant_id, k.key_id AS key_id, k.name AS name,"
            " toString(k.role) AS role, k.token_hash AS token_hash,"
            " toUnixTimestamp64Milli(k.created_at) AS created_at_ms, k.revoked AS revoked,"
            " ifNull(toUnixTimestamp64Milli(k.revoked_at), 0) AS revoked_at_ms,"
            " u.used_ms AS last_used_at_ms"
            f" FROM (SELECT * FROM api_keys FINAL WHERE {where}) AS k"
            " LEFT JOIN (SELECT key_id, toUnixTimestamp64Milli(max(last_used_at)) AS used_ms"
            f" FROM api_key_uses WHERE {where} GROUP BY key_id) AS u ON u.key_id = k.key_id"
            " ORDER BY created_at_ms DESC, key_id",
            {"t": tenant_id, "k": key_id or ""},
        ),
        binary=["token_hash"],
    )
    return [
        StoredApiKey(
            **(row | {"token_hash": bytes(row["token_hash"]), "revoked": bool(row["revoked"])})
        )
        for row in rows
    ]


class KeyUses:
    """When each API key was last used: gathered in memory, written about once a minute.

    Holds at most one entry per key used since the last write, so it is bounded by the keys.
    """

    def __init__(
        self, db: Database, clock: Clock = SYSTEM_CLOCK, identities: Identities | None = None
    ) -> None:
        """With ``identities``, uses of a deleted tenant's keys are dropped, not written."""
        self._db = db
        self._clock = clock
        self._identities = identities
        self._pending: dict[str, tuple[str, int]] = {}  # key id -> (tenant id, last use ms)

    def touch(self, tenant_id: str, key_id: str) -> None:
        """Records that the key was used now (no I/O)."""
        self._pending[key_id] = (tenant_id, self._clock.now_ms())

    def pending(self, key_id: str) -> int:
        """The last use of the key in this process not yet written, epoch ms; 0 if none."""
        hit = self._pending.get(key_id)
        return 0 if hit is None else hit[1]

    async def flush(self) -> int:
        """Writes the uses gathered since the last write; returns how many keys it wrote."""
        pending, self._pending = self._pending, {}
        if self._identities is not None:
            shredded = self._identities.shredded
            pending = {k: use for k, use in pending.items() if not shredded(use[0])}
        if not pending:
            return 0
        try:
            await self._db.insert_rows(
                "api_key_uses",
                [
                    (tenant_id, key_id, datetime.fromtimestamp(ms / 1000, UTC))
                    for key_id, (tenant_id, ms) in pending.items()
                ],
                ["tenant_id", "key_id", "last_used_at"],
            )
        except BaseException:
            # Kept for the next try, unless a newer use replaced them meanwhile.
            for key_id, hit in pending.items():
                self._pending.setdefault(key_id, hit)
            raise
        return len(pending)

    async def run(self, interval_s: float = KEY_USE_FLUSH_S) -> None:
        """Writes the gathered uses every ``interval_s`` until cancelled; failures are retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("writing API key last-use times failed; retrying later")


async def destroy_keys(db: Database, tenant_id: str, version: int) -> int:
    """Crypto-shreds the tenant: writes a destroyed version (no wrapped key) of each of its data
    keys, then removes every row that holds a wrapped key; returns how many keys it destroyed.

    ``version`` must exceed the keys' versions (the clock's nanoseconds)."""
    params = {"t": tenant_id}
    rows = await db.named_rows(
        Sql(
            "SELECT key_id, created_at FROM tenant_keys FINAL"
            " WHERE tenant_id = {t:String} AND wrapped_key != ''",
            params,
        )
    )
    if rows:
        await db.insert_rows(
            "tenant_keys",
            [(tenant_id, r["key_id"], b"", r["created_at"], version) for r in rows],
            ["tenant_id", "key_id", "wrapped_key", "created_at", "version"],
        )
    # A mutation, not a lightweight DELETE: the parts are rewritten without the wrapped keys
    # (a lightweight DELETE only masks them until a merge).
    await db.command(
        "ALTER TABLE tenant_keys DELETE WHERE tenant_id = {t:String} AND wrapped_key != ''"
        " SETTINGS mutations_sync = 2",
        params,
    )
    return len(rows)


async def tenant_tables(db: Database) -> list[str]:
    """Every table of the database with a ``tenant_id`` column (views left out)."""
    rows = await db.named_rows(
        Sql(
            "SELECT c.table AS name FROM system.columns AS c"
            " INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table"
            " WHERE c.database = currentDatabase() AND c.name = 'tenant_id'"
            " AND t.engine LIKE '%MergeTree' ORDER BY name"
        )
    )
    return [str(r["name"]) for r in rows]


async def hide_tenant(db: Database, tenant_id: str) -> None:
    """Deletes the tenant's ``tenants`` row: it is no longer listed or found by id."""
    await db.command("DELETE FROM tenants WHERE tenant_id = {t:String}", {"t": tenant_id})


async def delete_rows(db: Database, tenant_id: str) -> list[str]:
    """Deletes the tenant's rows from every table with a ``tenant_id``; returns the tables."""
    tables = await tenant_tables(db)
    for table in tables:
        # Lightweight DELETE: the rows vanish from every read at once; parts are cleaned later.
        await db.command(f"DELETE FROM {table} WHERE tenant_id = {{t:String}}", {"t": tenant_id})
    return tables
