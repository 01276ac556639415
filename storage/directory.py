"""Who is who: tenants, their wrapped keys, API keys, employees, enrollments and devices.

These tables are small and change rarely. Every row is written whole with a new ``version`` and
read with ``FINAL``, so an update is an insert and the newest version wins. Secrets are stored as
HMAC hashes and personal data as ciphertext produced by the caller; this module never sees a
plaintext number. With a ``GroupWriter`` concurrent writes share one insert per table; with
``Identities`` every write is applied to this process's memory as soon as it is committed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter
from callsight.storage.identities import (
    DeviceIdentity,
    EmployeeIdentity,
    EnrollmentState,
    Identities,
    KeyIdentity,
    TenantIdentity,
)
from callsight.storage.sql import Sql


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    default_region: str
    timezone: str
    created_at_ms: int


@dataclass(frozen=True)
class ApiKey:
    tenant_id: str
    key_id: str
    name: str
    role: str  # "ADMIN" or "REPORTS"
    token_hash: bytes
    created_at_ms: int
    revoked: bool = False
    revoked_at_ms: int | None = None


@dataclass(frozen=True)
class Employee:
    tenant_id: str
    employee_id: str
    name_enc: bytes
    number_enc: bytes
    number_bidx: bytes
    tags: tuple[str, ...]
    created_at_ms: int
    active: bool = True


@dataclass(frozen=True)
class Enrollment:
    tenant_id: str
    enrollment_id: str
    employee_id: str
    code_hash: bytes
    created_at_ms: int
    expires_at_ms: int
    used_at_ms: int | None = None
    device_id: str = ""


@dataclass(frozen=True)
class Device:
    tenant_id: str
    device_id: str
    employee_id: str
    token_hash: bytes
    registered_at_ms: int
    model: str = ""
    manufacturer: str = ""
    android_version: str = ""
    sdk_int: int = 0
    app_version: str = ""
    version_code: int = 0
    # Encrypted under the tenant's key (either can hold a number); never read back in the clear.
    fcm_id_enc: bytes = b""
    sim_ids_enc: tuple[bytes, ...] = field(default_factory=tuple)
    region: str = ""
    revoked: bool = False


class Directory:
    """Reads and writes the identity tables of one database."""

    def __init__(
        self,
        db: Database,
        clock: Clock = SYSTEM_CLOCK,
        writer: GroupWriter | None = None,
        identities: Identities | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._writer = writer
        self._identities = identities

    async def _insert(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> int:
        """Inserts rows (without their version column); returns the version they were given."""
        if self._writer is not None:
            return await self._writer.insert(table, columns, rows, stamp_version=True)
        version = self._clock.now_ns()
        await self._db.insert_rows(table, [(*row, version) for row in rows], [*columns, "version"])
        return version

    # Tenants and their keys

    async def add_tenant(self, tenant: Tenant, key_id: int, wrapped_key: bytes) -> None:
        """Stores a tenant with its first wrapped data key (key first: a tenant never lacks one)."""
        await self._insert(
            "tenant_keys",
            ["tenant_id", "key_id", "wrapped_key", "created_at"],
            [(tenant.tenant_id, key_id, wrapped_key, _dt(tenant.created_at_ms))],
        )
        version = await self._insert(
            "tenants",
            ["tenant_id", "name", "default_region", "timezone", "created_at"],
            [
                (
                    tenant.tenant_id,
                    tenant.name,
                    tenant.default_region,
                    tenant.timezone,
                    _dt(tenant.created_at_ms),
                )
            ],
        )
        if self._identities is not None:
            self._identities.tenants.put(
                tenant.tenant_id, version, TenantIdentity(tenant.tenant_id, tenant.default_region)
            )

    async def tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant, or None."""
        rows = await self._db.named_rows(
            Sql(
                "SELECT tenant_id, name, default_region, timezone,"
                " toUnixTimestamp64Milli(created_at) AS created_at_ms"
                " FROM tenants FINAL WHERE tenant_id = {t:String}",
                {"t": tenant_id},
            )
        )
        return Tenant(**rows[0]) if rows else None

    async def tenant_keys(self, tenant_id: str) -> list[tuple[int, bytes]]:
        """(key_id, wrapped_key) of every data key of the tenant, oldest first; a destroyed
        key's wrapped_key is empty."""
        rows = await self._db.named_rows(
            Sql(
                "SELECT key_id, wrapped_key FROM tenant_keys FINAL WHERE tenant_id = {t:String}"
                " ORDER BY created_at, version",
                {"t": tenant_id},
            ),
            binary=["wrapped_key"],
        )
        return [(int(r["key_id"]), bytes(r["wrapped_key"])) for r in rows]

    async def add_tenant_key(self, tenant_id: str, key_id: int, wrapped_key: bytes) -> None:
        """Stores another wrapped data key of the tenant (a rotation)."""
        version = await self._insert(
            "tenant_keys",
            ["tenant_id", "key_id", "wrapped_key", "created_at"],
            [(tenant_id, key_id, wrapped_key, _dt(self._clock.now_ms()))],
        )
        if self._identities is not None:
            self._identities.tenant_keys.put((tenant_id, key_id), version, False)

    # API keys

    async def add_api_key(self, key: ApiKey) -> None:
        """Stores an API key (its token only as a hash)."""
        version = await self._insert(
            "api_keys",
            [
                "tenant_id",
                "key_id",
                "name",
                "role",
                "token_hash",
                "created_at",
                "revoked",
                "revoked_at",
            ],
            [
                (
                    key.tenant_id,
                    key.key_id,
                    key.name,
                    key.role,
                    key.token_hash,
                    _dt(key.created_at_ms),
                    key.revoked,
                    None if key.revoked_at_ms is None else _dt(key.revoked_at_ms),
                )
            ],
        )
        if self._identities is not None:
            self._identities.api_keys.put(
                key.key_id,
                version,
                KeyIdentity(key.tenant_id, key.key_id, key.role, key.token_hash, key.revoked),
            )

    async def add_employee(self, employee: Employee) -> None:
        """Stores an employee, or a new version of one (name and number already encrypted)."""
        await self.put_employees([employee])

    async def put_employees(self, employees: Sequence[Employee]) -> None:
        """Stores many employees (or new versions of them) in one insert."""
        if not employees:
            return
        version = await self._insert(
            "employees",
            [
                "tenant_id",
                "employee_id",
                "name_enc",
                "number_enc",
                "number_bidx",
                "tags",
                "active",
                "created_at",
            ],
            [
                (
                    e.tenant_id,
                    e.employee_id,
                    e.name_enc,
                    e.number_enc,
                    e.number_bidx,
                    list(e.tags),
                    e.active,
                    _dt(e.created_at_ms),
                )
                for e in employees
            ],
        )
        if self._identities is not None:
            for e in employees:
                self._identities.employees.put(
                    (e.tenant_id, e.employee_id), version, EmployeeIdentity(e.active, e.number_bidx)
                )

    async def employees(self, tenant_id: str, employee_id: str | None = None) -> list[Employee]:
        """The tenant's employees, or the one with ``employee_id``."""
        where = "tenant_id = {t:String}"
        if employee_id is not None:
            where += " AND employee_id = {e:String}"
        rows = await self._db.named_rows(
            Sql(
                "SELECT tenant_id, employee_id, name_enc, number_enc, number_bidx, tags, active,"
                " toUnixTimestamp64Milli(created_at) AS created_at_ms"
                f" FROM employees FINAL WHERE {where}",
                {"t": tenant_id, "e": employee_id or ""},
            ),
            binary=["name_enc", "number_enc"],
        )
        return [
            Employee(
                tenant_id=r["tenant_id"],
                employee_id=r["employee_id"],
                name_enc=bytes(r["name_enc"]),
                number_enc=bytes(r["number_enc"]),
                number_bidx=bytes(r["number_bidx"]),
                tags=tuple(r["tags"]),
                created_at_ms=r["created_at_ms"],
                active=bool(r["active"]),
            )
            for r in rows
        ]

    async def employee_exists(self, tenant_id: str, employee_id: str) -> bool:
        """Whether the tenant has this employee: from memory when the identities are kept."""
        identities = self._identities
        if identities is not None:
            found = await identities.find(
                lambda: identities.has_employee(tenant_id, employee_id) or None
            )
            return found is not None
        return bool(await self.employees(tenant_id, employee_id))

    async def number_holders(
        self, tenant_id: str, number_bidxs: Collection[bytes], other_than: str = ""
    ) -> dict[bytes, str]:
        """Which of the numbers (blind indexes) an active employee of the tenant other than
        ``other_than`` holds, and who: from memory when the identities are kept."""
        identities = self._identities
        if identities is not None:
            found = {}
            for bidx in number_bidxs:
                holders = identities.number_holders(tenant_id, bidx) - {other_than}
                if holders:
                    found[bidx] = min(holders)
            return found
        rows = await self._db.named_rows(
            Sql(
                "SELECT number_bidx, min(employee_id) AS holder FROM employees FINAL"
                " WHERE tenant_id = {t:String} AND active AND employee_id != {x:String}"
                " AND number_bidx IN {b:Array(FixedString(32))} GROUP BY number_bidx",
                {"t": tenant_id, "x": other_than, "b": list(number_bidxs)},
            )
        )
        return {bytes(r["number_bidx"]): str(r["holder"]) for r in rows}

    async def employee_active(self, tenant_id: str, employee_id: str) -> bool | None:
        """Whether the tenant's employee is active; None when there is no such employee."""
        identities = self._identities
        if identities is not None:
            return await identities.find(lambda: identities.employee_active(tenant_id, employee_id))
        found = await self.employees(tenant_id, employee_id)
        return found[0].active if found else None

    # Enrollments

    async def put_enrollment(self, enrollment: Enrollment) -> None:
        """Stores a new enrollment or a new version of one (e.g. marked used)."""
        version = await self._insert(
            "enrollments",
            [
                "tenant_id",
                "enrollment_id",
                "employee_id",
                "code_hash",
                "created_at",
                "expires_at",
                "used_at",
                "device_id",
            ],
            [
                (
                    enrollment.tenant_id,
                    enrollment.enrollment_id,
                    enrollment.employee_id,
                    enrollment.code_hash,
                    _dt(enrollment.created_at_ms),
                    _dt(enrollment.expires_at_ms),
                    None if enrollment.used_at_ms is None else _dt(enrollment.used_at_ms),
                    enrollment.device_id,
                )
            ],
        )
        if self._identities is not None:
            self._identities.enrollments.put(
                enrollment.enrollment_id,
                version,
                EnrollmentState(
                    enrollment.tenant_id,
                    enrollment.enrollment_id,
                    enrollment.employee_id,
                    enrollment.code_hash,
                    enrollment.created_at_ms,
                    enrollment.expires_at_ms,
                    enrollment.used_at_ms is not None,
                ),
            )

    async def put_device(self, device: Device) -> None:
        """Stores a new device or a new version of one (e.g. revoked)."""
        await self.put_devices([device])

    async def put_devices(self, devices: Sequence[Device]) -> None:
        """Stores many devices (or new versions of them) in one insert."""
        version = await self._insert(
            "devices",
            _DEVICE_COLUMNS,
            [
                (
                    d.tenant_id,
                    d.device_id,
                    d.employee_id,
                    d.token_hash,
                    d.model,
                    d.manufacturer,
                    d.android_version,
                    d.sdk_int,
                    d.app_version,
                    d.version_code,
                    d.fcm_id_enc,
                    list(d.sim_ids_enc),
                    d.region,
                    _dt(d.registered_at_ms),
                    d.revoked,
                )
                for d in devices
            ],
        )
        if self._identities is not None:
            for d in devices:
                self._identities.devices.put(
                    d.device_id,
                    version,
                    DeviceIdentity(
                        d.tenant_id, d.device_id, d.employee_id, d.token_hash, d.region, d.revoked
                    ),
                )

    async def devices(
        self,
        tenant_id: str | None = None,
        device_id: str | None = None,
        employee_id: str | None = None,
    ) -> list[Device]:
        """Devices of a tenant (or of one employee), or the device with ``device_id`` (whatever
        its tenant)."""
        conditions, params = [], {}
        if tenant_id is not None:
            conditions.append("tenant_id = {t:String}")
            params["t"] = tenant_id
        if employee_id is not None:
            conditions.append("employee_id = {e:String}")
            params["e"] = employee_id
        if device_id is not None:
            conditions.append("device_id = {d:String}")
            params["d"] = device_id
        where = " AND ".join(conditions) or "1"
        select = ", ".join(
            "toUnixTimestamp64Milli(registered_at) AS registered_at_ms"
            if c == "registered_at"
            else c
            for c in _DEVICE_COLUMNS
        )
        rows = await self._db.named_rows(
            Sql(f"SELECT {select} FROM devices FINAL WHERE {where}", params),
            binary=["fcm_id_enc", "sim_ids_enc"],
        )
        return [_device(row) for row in rows]

    # Erasures

    async def put_erasure(self, tenant_id: str, client_key: int, erased: bool) -> None:
        """Records that the tenant's number with this client key is erased (or, with ``erased``
        false, that the erasure is lifted); applies to this process's ingest at once."""
        version = await self._insert(
            "erasures", ["tenant_id", "client_key", "lifted"], [(tenant_id, client_key, not erased)]
        )
        if self._identities is not None:
            self._identities.erasures.put((tenant_id, client_key), version, erased)

    async def is_erased(self, tenant_id: str, client_key: int) -> bool:
        """Whether the tenant's number with this client key is erased now (read from the table)."""
        rows = await self._db.named_rows(
            Sql(
                "SELECT lifted FROM erasures FINAL"
                " WHERE tenant_id = {t:String} AND client_key = {k:UInt64}",
                {"t": tenant_id, "k": client_key},
            )
        )
        return bool(rows) and not rows[0]["lifted"]

    async def revoke_device(self, device: Device) -> Device:
        """Writes the revoked version of ``device`` and returns it."""
        revoked = replace(device, revoked=True)
        await self.put_device(revoked)
        return revoked


_DEVICE_COLUMNS = (
    "tenant_id",
    "device_id",
    "employee_id",
    "token_hash",
    "model",
    "manufacturer",
    "android_version",
    "sdk_int",
    "app_version",
    "version_code",
    "fcm_id_enc",
    "sim_ids_enc",
    "region",
    "registered_at",
    "revoked",
)


def _device(row: dict[str, Any]) -> Device:
    values = dict(row)
    values["sim_ids_enc"] = tuple(map(bytes, values["sim_ids_enc"]))
    values["fcm_id_enc"] = bytes(values["fcm_id_enc"])
    values["token_hash"] = bytes(values["token_hash"])
    return Device(**values)
