"""The identity directory in memory: tenants, API keys, employees, enrollments, devices, and the
numbers each tenant erased (tombstones by client key, consulted by ingest).

Authentication and ingest read these on every call, so each process keeps them in memory: a full
load (``FINAL``) at start-up, then every second or so the rows whose ``version`` is newer than the
newest seen, applied newest-wins. Writes made by this process apply at once (``Directory`` calls
``put``), so a revocation here is immediate and one made by another process arrives with the next
refresh. The incremental read looks back ``lookback_s`` before the newest version seen, because
a row stamped just before another becomes visible just after it; a periodic full load is the net
under everything else.

A lookup that misses is unknown: no query per miss and nothing remembered per miss. A caller that
must see a row written a moment ago by another process (a device registered there) may wait for
``catch_up``: one refresh at a time, at most one per ``catch_up_gap_s``, shared by every waiter.
Memory is bounded by the rows of the tables, not by callers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from callsight.core.errors import Unavailable
from callsight.storage.database import Database
from callsight.storage.sql import Sql

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_NS = 1_000_000_000
_NONE_ERASED: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class TenantIdentity:
    tenant_id: str
    default_region: str


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    tenant_id: str
    key_id: str
    role: str  # "ADMIN" or "REPORTS"
    token_hash: bytes
    revoked: bool


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    tenant_id: str
    device_id: str
    employee_id: str
    token_hash: bytes
    region: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class EmployeeIdentity:
    active: bool
    number_bidx: bytes  # of the employee's own number


@dataclass(frozen=True, slots=True)
class EnrollmentState:
    tenant_id: str
    enrollment_id: str
    employee_id: str
    code_hash: bytes
    created_at_ms: int
    expires_at_ms: int
    used: bool


class _Table(Generic[K, V]):
    """One table's rows in memory, newest version wins."""

    def __init__(
        self,
        name: str,
        select: str,
        key: Callable[[dict[str, Any]], K],
        make: Callable[[dict[str, Any]], V],
        on_change: Callable[[K, V], None] | None = None,
    ) -> None:
        self.name = name
        self._select = select
        self._key = key
        self._make = make
        self._on_change = on_change
        self.rows: dict[K, tuple[int, V]] = {}
        self.newest = 0  # newest version read from the database

    def get(self, key: K) -> V | None:
        hit = self.rows.get(key)
        return None if hit is None else hit[1]

    def put(self, key: K, version: int, value: V) -> None:
        hit = self.rows.get(key)
        if hit is None or hit[0] <= version:
            self.rows[key] = (version, value)
            if self._on_change is not None and (hit is None or hit[0] < version):
                self._on_change(key, value)

    def query(self, since: int | None) -> Sql:
        if since is None:
            return Sql(f"SELECT {self._select}, version FROM {self.name} FINAL")
        # No FINAL: every row newer than ``since`` is read and the newest per key kept here.
        return Sql(
            f"SELECT {self._select}, version FROM {self.name} WHERE version > {{v:UInt64}}",
            {"v": since},
        )

    def apply(self, rows: list[dict[str, Any]]) -> int:
        changed = 0
        for row in rows:
            version = int(row["version"])
            key = self._key(row)
            hit = self.rows.get(key)
            if hit is None or hit[0] < version:
                value = self._make(row)
                self.rows[key] = (version, value)
                changed += 1
                if self._on_change is not None:
                    self._on_change(key, value)
            self.newest = max(self.newest, version)
        return changed


class Identities:
    """Tenants, API keys, employees, enrollments and devices of one database, in memory."""

    def __init__(
        self,
        db: Database,
        lookback_s: float = 5.0,
        catch_up_gap_s: float = 0.15,
        full_load_every: int = 300,
    ) -> None:
        self._db = db
        self._lookback_ns = int(lookback_s * _NS)
        self._gap_s = catch_up_gap_s
        self._full_every = full_load_every
        self.tenants: _Table[str, TenantIdentity] = _Table(
            "tenants",
            "tenant_id, default_region",
            lambda r: r["tenant_id"],
            lambda r: TenantIdentity(r["tenant_id"], r["default_region"]),
        )
        self.api_keys: _Table[str, KeyIdentity] = _Table(
            "api_keys",
            "tenant_id, key_id, toString(role) AS role_name, token_hash, revoked",
            lambda r: r["key_id"],
            lambda r: KeyIdentity(
                r["tenant_id"], r["key_id"], r["role_name"], bytes(r["token_hash"]), r["revoked"]
            ),
        )
        # (tenant, number's blind index) -> the active employees holding it (one, normally), so
        # that a number given to an employee is checked without a query.
        self._holders: dict[tuple[str, bytes], set[str]] = {}
        self._holding: dict[tuple[str, str], bytes] = {}  # active employee -> its number
        self.employees: _Table[tuple[str, str], EmployeeIdentity] = _Table(
            "employees",
            "tenant_id, employee_id, active, number_bidx",
            lambda r: (r["tenant_id"], r["employee_id"]),
            lambda r: EmployeeIdentity(bool(r["active"]), bytes(r["number_bidx"])),
            self._employee_changed,
        )
        self.enrollments: _Table[str, EnrollmentState] = _Table(
            "enrollments",
            "tenant_id, enrollment_id, employee_id, code_hash,"
            " toUnixTimestamp64Milli(created_at) AS created_at_ms,"
            " toUnixTimestamp64Milli(expires_at) AS expires_at_ms, used_at IS NOT NULL AS used",
            lambda r: r["enrollment_id"],
            lambda r: EnrollmentState(
                r["tenant_id"],
                r["enrollment_id"],
                r["employee_id"],
                bytes(r["code_hash"]),
                int(r["created_at_ms"]),
                int(r["expires_at_ms"]),
                bool(r["used"]),
            ),
        )
        self.devices: _Table[str, DeviceIdentity] = _Table(
            "devices",
            "tenant_id, device_id, employee_id, token_hash, region, revoked",
            lambda r: r["device_id"],
            lambda r: DeviceIdentity(
                r["tenant_id"],
                r["device_id"],
                r["employee_id"],
                bytes(r["token_hash"]),
                r["region"],
                r["revoked"],
            ),
        )
        # (tenant, client key) -> still erased (False once lifted); the erased keys per tenant
        # are kept as a set, so ingest tests a batch's keys against it without a query.
        self._erased: dict[str, set[int]] = {}
        self._erasure_listeners: list[Callable[[str], None]] = []
        self.erasures: _Table[tuple[str, int], bool] = _Table(
            "erasures",
            "tenant_id, client_key, lifted",
            lambda r: (r["tenant_id"], int(r["client_key"])),
            lambda r: not r["lifted"],
            self._erasure_changed,
        )
        # (tenant, key id) -> destroyed: only that a tenant's keys changed (rotated elsewhere, or
        # destroyed by DeleteTenant) matters here, so that cached keyrings are dropped.
        self._key_listeners: list[Callable[[str], None]] = []
        self._shredded: set[str] = set()  # tenants with a destroyed key (being deleted)
        self._shred_listeners: list[Callable[[str], None]] = []
        self.tenant_keys: _Table[tuple[str, int], bool] = _Table(
            "tenant_keys",
            "tenant_id, key_id, wrapped_key = '' AS destroyed",
            lambda r: (r["tenant_id"], int(r["key_id"])),
            lambda r: bool(r["destroyed"]),
            self._key_changed,
        )
        # Parents before children: a device read here finds its tenant already loaded.
        self._tables: tuple[_Table[Any, Any], ...] = (
            self.tenants,
            self.tenant_keys,
            self.api_keys,
            self.employees,
            self.enrollments,
            self.devices,
            self.erasures,
        )
        self._lock = asyncio.Lock()  # one refresh at a time
        self._refreshes = 0
        self._last_start = -math.inf
        self._waiters: asyncio.Future[None] | None = None
        self._catch_up: asyncio.Task[None] | None = None
        self.queries = 0

    @property
    def size(self) -> int:
        """Rows held, over every table."""
        return sum(len(t.rows) for t in self._tables)

    # Lookups: memory only

    def tenant(self, tenant_id: str) -> TenantIdentity | None:
        return self.tenants.get(tenant_id)

    def api_key(self, key_id: str) -> KeyIdentity | None:
        return self.api_keys.get(key_id)

    def device(self, device_id: str) -> DeviceIdentity | None:
        return self.devices.get(device_id)

    def enrollment(self, enrollment_id: str) -> EnrollmentState | None:
        return self.enrollments.get(enrollment_id)

    def has_employee(self, tenant_id: str, employee_id: str) -> bool:
        return self.employees.get((tenant_id, employee_id)) is not None

    def employee_active(self, tenant_id: str, employee_id: str) -> bool | None:
        """Whether the employee is active; None when unknown."""
        employee = self.employees.get((tenant_id, employee_id))
        return None if employee is None else employee.active

    def number_holders(self, tenant_id: str, number_bidx: bytes) -> AbstractSet[str]:
        """The active employees of the tenant whose own number has this blind index."""
        return self._holders.get((tenant_id, number_bidx), frozenset())

    def _employee_changed(self, key: tuple[str, str], employee: EmployeeIdentity) -> None:
        tenant_id, employee_id = key
        held = self._holding.pop(key, None)
        if held is not None:
            holders = self._holders[(tenant_id, held)]
            holders.discard(employee_id)
            if not holders:
                del self._holders[(tenant_id, held)]
        if employee.active:
            self._holding[key] = employee.number_bidx
            self._holders.setdefault((tenant_id, employee.number_bidx), set()).add(employee_id)

    def erased(self, tenant_id: str) -> AbstractSet[int]:
        """Client keys (first 8 bytes of the blind index) of the numbers the tenant erased and
        has not lifted; a live view, empty for most tenants."""
        return self._erased.get(tenant_id, _NONE_ERASED)

    def on_erasure(self, listener: Callable[[str], None]) -> None:
        """Calls ``listener(tenant_id)`` whenever a tombstone of the tenant is written or lifted,
        here or (at the next refresh) in another process."""
        self._erasure_listeners.append(listener)

    def on_key_change(self, listener: Callable[[str], None]) -> None:
        """Calls ``listener(tenant_id)`` whenever a data key of the tenant is added or destroyed,
        here or (at the next refresh) in another process."""
        self._key_listeners.append(listener)

    def shredded(self, tenant_id: str) -> bool:
        """Whether the tenant's keys were destroyed (DeleteTenant), as far as this process knows."""
        return tenant_id in self._shredded

    def on_shred(self, listener: Callable[[str], None]) -> None:
        """Calls ``listener(tenant_id)`` when the tenant's keys are destroyed (DeleteTenant),
        here or (at the next refresh) in another process, before its rows are deleted."""
        self._shred_listeners.append(listener)

    def _key_changed(self, key: tuple[str, int], destroyed: bool) -> None:
        if destroyed and key[0] not in self._shredded:
            self._shredded.add(key[0])
            for shred_listener in self._shred_listeners:
                shred_listener(key[0])
        for listener in self._key_listeners:
            listener(key[0])

    def _erasure_changed(self, key: tuple[str, int], erased: bool) -> None:
        tenant_id, client_key = key
        if erased:
            self._erased.setdefault(tenant_id, set()).add(client_key)
        else:
            keys = self._erased.get(tenant_id)
            if keys is not None:
                keys.discard(client_key)
                if not keys:
                    del self._erased[tenant_id]
        for listener in self._erasure_listeners:
            listener(tenant_id)

    async def find(self, lookup: Callable[[], V | None]) -> V | None:
        """``lookup()``, and once more after a catch-up refresh when it missed."""
        found = lookup()
        if found is None:
            await self.catch_up()
            found = lookup()
        return found

    # Refresh

    async def load(self) -> None:
        """Reads every table whole (start-up)."""
        await self._refresh(full=True)

    async def refresh(self) -> None:
        """Reads the rows changed since the newest version seen (every so many, all rows)."""
        self._refreshes += 1
        await self._refresh(full=self._refreshes % self._full_every == 0)

    async def _refresh(self, full: bool) -> None:
        async with self._lock:
            waiters, self._waiters = self._waiters, None
            self._last_start = asyncio.get_running_loop().time()
            try:
                for table in self._tables:
                    since = None if full or not table.newest else table.newest - self._lookback_ns
                    self.queries += 1
                    table.apply(
                        await self._db.named_rows(
                            table.query(None if since is None else max(since, 0))
                        )
                    )
            except Exception as exc:
                if waiters is not None and not waiters.done():
                    waiters.set_exception(exc)
                    waiters.exception()  # reported to every waiting caller
                raise
            if waiters is not None and not waiters.done():
                waiters.set_result(None)

    async def catch_up(self) -> None:
        """Waits for a refresh that starts after this call; one at a time, rate-limited, shared."""
        loop = asyncio.get_running_loop()
        if self._waiters is None:
            self._waiters = loop.create_future()
        waiters = self._waiters
        if self._catch_up is None:
            self._catch_up = asyncio.create_task(self._catch_up_loop())
        await asyncio.shield(waiters)

    async def _catch_up_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters is not None:
                await asyncio.sleep(max(0.0, self._last_start + self._gap_s - loop.time()))
                if self._waiters is None:  # a periodic refresh served them meanwhile
                    break
                try:
                    await self._refresh(full=False)
                except Exception:
                    log.exception("identity catch-up refresh failed")
        finally:
            self._catch_up = None

    async def run(self, interval_s: float, max_backoff_s: float = 30.0) -> None:
        """Refreshes every ``interval_s`` until cancelled; a failure is logged and retried later."""
        await refresh_forever(self.refresh, "identity", interval_s, max_backoff_s)

    async def close(self) -> None:
        """Stops a pending catch-up; waiters get an error rather than hanging."""
        task = self._catch_up
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._waiters is not None and not self._waiters.done():
            self._waiters.set_exception(Unavailable("the server is shutting down; retry"))
            self._waiters.exception()
        self._waiters = None


async def refresh_forever(
    refresh: Callable[[], Awaitable[None]], what: str, interval_s: float, max_backoff_s: float
) -> None:
    """Calls ``refresh`` every ``interval_s`` until cancelled; a failure is logged and retried
    with a doubling delay of at most ``max_backoff_s``."""
    delay = interval_s
    while True:
        await asyncio.sleep(delay)
        try:
            await refresh()
        except Exception:
            delay = min(max_backoff_s, max(delay, interval_s) * 2)
            log.exception(f"{what} refresh failed", retry_in_s=delay)
        else:
            delay = interval_s
