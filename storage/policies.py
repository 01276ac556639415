"""Device policies in memory: each tenant's policy, its employees' overrides, and its excluded
numbers (which a policy in force turns into numbers never to upload).

Ingest looks a device's policy up for every batch, so each process keeps the ``device_policies``
and ``excluded_numbers`` tables in memory like the identities (``storage.identities``): a full
load at start-up, then every second or so the rows newer than the newest seen, newest version
wins, and every so many refreshes a full load again, which also drops excluded numbers deleted
outright (EraseNumber deletes the number from the list without a new version). Writes made by
this process apply at once; another process's arrive with the next refresh.

A tenant's policy version is the newest version among its policy rows and, once it has any, its
excluded numbers: every change to either raises it, so an ack carries one number per tenant that
tells a device to fetch its policy again. A tenant that never set a policy has version 0.
Memory is bounded by the rows of the two tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.storage.database import Database
from callsight.storage.identities import refresh_forever
from callsight.storage.sql import Sql

log = structlog.get_logger(__name__)

_NS = 1_000_000_000
TENANT = ""  # the employee_id of a tenant's own policy

_POLICY_COLUMNS = (
    "tenant_id",
    "employee_id",
    "cleared",
    "sim_slots",
    "has_hours",
    "start_minute",
    "end_minute",
    "weekdays",
    "timezone",
    "sync_interval_s",
)


@dataclass(frozen=True, slots=True)
class OfficeHours:
    """A local time window: ``start_minute`` <= minute of the day < ``end_minute``."""

    start_minute: int
    end_minute: int
    weekdays: tuple[int, ...]  # ISO weekdays (1 = Monday), sorted; () means every day
    timezone: str  # IANA name


@dataclass(frozen=True, slots=True)
class Policy:
    """What a device may upload and how often it syncs; the defaults track everything."""

    sim_slots: tuple[int, ...] = ()  # sorted; () means every slot
    office_hours: OfficeHours | None = None
    sync_interval_s: int = 0  # 0: the agent's default


@dataclass(frozen=True, slots=True)
class InForce:
    """The policy in force for one employee's devices."""

    version: int  # the tenant's policy version (0: the tenant never set a policy)
    policy: Policy | None  # None: neither the tenant nor the employee has one
    overridden: bool  # the employee's own override, not the tenant's policy


@dataclass(frozen=True, slots=True)
class Excluded:
    """A tenant's excluded numbers: their client keys (the first 8 bytes of the blind index, as
    calls store them) and their ciphertexts."""

    client_keys: frozenset[int]
    sorted_keys: npt.NDArray[np.uint64]
    sealed: tuple[bytes, ...]  # number_enc of each, in blind-index order


NO_EXCLUDED = Excluded(frozenset(), np.zeros(0, dtype=np.uint64), ())


@dataclass
class _TenantState:
    rows: dict[str, tuple[int, Policy | None]] = field(default_factory=dict)  # employee -> row
    excluded: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)  # bidx -> row
    policy_version: int = 0
    excluded_version: int = 0
    derived: Excluded | None = None  # rebuilt after a change of ``excluded``


class Policies:
    """The device policies and excluded numbers of one database, in memory."""

    def __init__(
        self,
        db: Database,
        clock: Clock = SYSTEM_CLOCK,
        lookback_s: float = 5.0,
        full_load_every: int = 300,
    ) -> None:
        self._db = db
        self._clock = clock
        self._lookback_ns = int(lookback_s * _NS)
        self._full_every = full_load_every
        self._tenants: dict[str, _TenantState] = {}
        self._newest = {"device_policies": 0, "excluded_numbers": 0}
        self._lock = asyncio.Lock()  # one refresh at a time
        self._refreshes = 0
        self.queries = 0

    # Lookups: memory only

    def version(self, tenant_id: str) -> int:
        """The tenant's policy version; 0 when it never set a policy."""
        state = self._tenants.get(tenant_id)
        if state is None or not state.policy_version:
            return 0
        return max(state.policy_version, state.excluded_version)

    def in_force(self, tenant_id: str, employee_id: str) -> InForce:
        """The policy in force for ``employee_id``: the override, else the tenant's."""
        state = self._tenants.get(tenant_id)
        if state is None or not state.policy_version:
            return InForce(0, None, False)
        version = max(state.policy_version, state.excluded_version)
        own = state.rows.get(employee_id)
        if employee_id != TENANT and own is not None and own[1] is not None:
            return InForce(version, own[1], True)
        tenant = state.rows.get(TENANT)
        return InForce(version, None if tenant is None else tenant[1], False)

    def excluded(self, tenant_id: str) -> Excluded:
        """The tenant's excluded numbers (all tenants', whether or not a policy is in force)."""
        state = self._tenants.get(tenant_id)
        if state is None or not state.excluded:
            return NO_EXCLUDED
        if state.derived is None:
            live = sorted((b, enc) for b, (_, enc) in state.excluded.items() if enc is not None)
            keys = [int.from_bytes(b[:8], "little") for b, _ in live]
            state.derived = Excluded(
                frozenset(keys),
                np.unique(np.array(keys, dtype=np.uint64)),
                tuple(enc for _, enc in live),
            )
        return state.derived

    # Writes

    async def put(self, tenant_id: str, employee_id: str, policy: Policy | None) -> int:
        """Stores the tenant's policy (``employee_id`` TENANT) or an employee's override (None
        clears it); applies to this process at once and returns the new version."""
        # Caught up first: the excluded numbers written before this change (SetExcludedNumbers
        # writes them directly) are then known here with it, so no message of the new version
        # lacks them.
        await self._refresh(full=False)
        version = self._clock.now_ns()
        row = _policy_row(tenant_id, employee_id, policy)
        await self._db.insert_rows(
            "device_policies", [(*row, version)], [*_POLICY_COLUMNS, "version"]
        )
        self._apply_policy(tenant_id, employee_id, version, policy)
        return version

    def _state(self, tenant_id: str) -> _TenantState:
        state = self._tenants.get(tenant_id)
        if state is None:
            state = self._tenants[tenant_id] = _TenantState()
        return state

    def _apply_policy(
        self, tenant_id: str, employee_id: str, version: int, policy: Policy | None
    ) -> None:
        state = self._state(tenant_id)
        held = state.rows.get(employee_id)
        if held is None or held[0] < version:
            state.rows[employee_id] = (version, policy)
        state.policy_version = max(state.policy_version, version)

    def _apply_excluded(self, tenant_id: str, bidx: bytes, version: int, enc: bytes | None) -> None:
        state = self._state(tenant_id)
        held = state.excluded.get(bidx)
        if held is None or held[0] < version:
            state.excluded[bidx] = (version, enc)
            state.derived = None
        state.excluded_version = max(state.excluded_version, version)

    # Refresh

    async def load(self) -> None:
        """Reads both tables whole (start-up)."""
        await self._refresh(full=True)

    async def refresh(self) -> None:
        """Reads the rows changed since the newest version seen (every so many, all rows)."""
        self._refreshes += 1
        await self._refresh(full=self._refreshes % self._full_every == 0)

    async def _refresh(self, full: bool) -> None:
        async with self._lock:
            policies = await self._read("device_policies", ", ".join(_POLICY_COLUMNS), full)
            excluded = await self._read(
                "excluded_numbers",
                "tenant_id, number_bidx, number_enc, is_deleted",
                full,
                binary=["number_enc"],
            )
            if full:
                self._replace_excluded(excluded)
            for r in policies:
                self._apply_policy(r["tenant_id"], r["employee_id"], int(r["version"]), _policy(r))
            for r in excluded:
                enc = None if r["is_deleted"] else bytes(r["number_enc"])
                self._apply_excluded(
                    r["tenant_id"], bytes(r["number_bidx"]), int(r["version"]), enc
                )

    async def _read(
        self, table: str, select: str, full: bool, binary: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        newest = self._newest[table]
        if full or not newest:
            query = Sql(f"SELECT {select}, version FROM {table} FINAL")
        else:
            # No FINAL: every row newer than the look-back is read and the newest per key kept.
            query = Sql(
                f"SELECT {select}, version FROM {table} WHERE version > {{v:UInt64}}",
                {"v": max(newest - self._lookback_ns, 0)},
            )
        self.queries += 1
        rows = await self._db.named_rows(query, binary=binary)
        for r in rows:
            newest = max(newest, int(r["version"]))
        self._newest[table] = newest
        return rows

    def _replace_excluded(self, rows: list[dict[str, Any]]) -> None:
        """Forgets the excluded numbers a full read no longer holds: EraseNumber deletes a number
        from the list outright, leaving no newer version for an incremental read to find."""
        read = {(r["tenant_id"], bytes(r["number_bidx"])) for r in rows}
        newest = self._newest["excluded_numbers"]
        for tenant_id, state in self._tenants.items():
            gone = [
                bidx
                for bidx, (version, _) in state.excluded.items()
                if version <= newest and (tenant_id, bidx) not in read
            ]
            for bidx in gone:
                del state.excluded[bidx]
            if gone:
                state.derived = None

    async def run(self, interval_s: float, max_backoff_s: float = 30.0) -> None:
        """Refreshes every ``interval_s`` until cancelled; a failure is logged and retried later."""
        await refresh_forever(self.refresh, "device policy", interval_s, max_backoff_s)


def _policy_row(tenant_id: str, employee_id: str, policy: Policy | None) -> tuple[Any, ...]:
    if policy is None:
        return (tenant_id, employee_id, True, [], False, 0, 0, [], "", 0)
    hours = policy.office_hours
    return (
        tenant_id,
        employee_id,
        False,
        list(policy.sim_slots),
        hours is not None,
        0 if hours is None else hours.start_minute,
        0 if hours is None else hours.end_minute,
        [] if hours is None else list(hours.weekdays),
        "" if hours is None else hours.timezone,
        policy.sync_interval_s,
    )


def _policy(row: dict[str, Any]) -> Policy | None:
    if row["cleared"]:
        return None
    hours = None
    if row["has_hours"]:
        hours = OfficeHours(
            int(row["start_minute"]),
            int(row["end_minute"]),
            tuple(int(d) for d in row["weekdays"]),
            row["timezone"],
        )
    return Policy(tuple(int(s) for s in row["sim_slots"]), hours, int(row["sync_interval_s"]))
