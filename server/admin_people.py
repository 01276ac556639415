"""AdminService for employees and devices (issue 12): CreateEmployee, UpdateEmployee,
ImportEmployees, ListDevices, DeviceHealth.

An employee's own number belongs to at most one active employee of the tenant (reports match an
employee's calls to colleagues by it): CreateEmployee, ImportEmployees and UpdateEmployee refuse a
number an active employee holds with ALREADY_EXISTS (import: per entry). Deactivating an employee
revokes its devices; reactivating does not bring them back (each phone enrolls again).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
import structlog

from callsight.core.clock import Clock
from callsight.core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    StorageError,
)
from callsight.pipeline import phone
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import (
    MAX_DEVICE_FIELD_BYTES,
    MAX_FILTER_EMPLOYEE_IDS,
    MAX_ID_BYTES,
    MAX_IMPORT_EMPLOYEES,
    MAX_NAME_BYTES,
    check_count,
    check_text,
    quote,
    tag_problems,
    text_problem,
)
from callsight.pipeline.paging import Page, PageTokens, open_page
from callsight.server.auth import caller_tenant
from callsight.server.auth import current_caller as caller
from callsight.storage import device_status
from callsight.storage.activity import DeviceActivity
from callsight.storage.database import Database
from callsight.storage.device_status import DeviceKey, DeviceState
from callsight.storage.directory import Device, Directory, Employee, Tenant
from callsight.v1 import admin_pb2, ingest_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

log = structlog.get_logger(__name__)

DEFAULT_SILENT_FOR_S = 86_400
DEFAULT_LOW_BATTERY_PCT = 15
# Validation and encryption of an import run on the event loop; it lets others run this often.
_IMPORT_SLICE = 256
_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,7}")


class NumberClaims:
    """Numbers being given to employees by requests in flight in this process, so that two
    concurrent requests for one number cannot both pass the check against the table."""

    def __init__(self) -> None:
        self._held: set[tuple[str, bytes]] = set()

    @contextmanager
    def hold(self, tenant_id: str, bidxs: Iterable[bytes]) -> Iterator[set[bytes]]:
        """Holds the numbers no other request holds until the block ends; yields the others."""
        mine: list[tuple[str, bytes]] = []
        busy: set[bytes] = set()
        for bidx in bidxs:
            key = (tenant_id, bidx)
            if key in self._held:
                busy.add(bidx)
            else:
                self._held.add(key)
                mine.append(key)
        try:
            yield busy
        finally:
            self._held.difference_update(mine)


def _taken(owner: str) -> str:
    return (
        f"number already belongs to active employee {owner}; deactivate that employee or give"
        " this one another number"
    )


_IN_FLIGHT = "number is being given to another employee by a request in flight; retry"


def _new_employee(
    request: admin_pb2.CreateEmployeeRequest, tenant: Tenant, keyring: Keyring, now_ms: int
) -> tuple[Employee | None, list[str]]:
    """The employee a request asks for, encrypted, or None and every problem of the request."""
    problems = []
    name = request.name.strip()
    if not name:
        problems.append("name is required")
    elif (problem := text_problem(name, "name", MAX_NAME_BYTES)) is not None:
        problems.append(problem)
    problems.extend(tag_problems(request.tags, "tags"))
    number = ""
    try:
        number = phone.normalize(request.number, tenant.default_region)
    except InvalidArgument as exc:
        problems.append(f"number {exc}" if request.number.strip() else "number is required")
    if problems:
        return None, problems
    employee = Employee(
        tenant_id=tenant.tenant_id,
        employee_id=str(uuid.uuid4()),
        name_enc=keyring.encrypt(name),
        number_enc=keyring.encrypt(number),
        number_bidx=keyring.blind_index(number),
        tags=tuple(sorted({t.strip() for t in request.tags if t.strip()})),
        created_at_ms=now_ms,
    )
    return employee, []


def _min_version(raw: str) -> list[int]:
    """A dotted version as numbers; empty for none; InvalidArgument when it is no version."""
    raw = check_text(raw.strip(), "min_app_version", MAX_DEVICE_FIELD_BYTES)
    if not raw:
        return []
    if not _VERSION.fullmatch(raw):
        raise InvalidArgument(
            f"min_app_version {quote(raw)} is not a dotted version; send numbers separated by"
            " dots, e.g. '3.2.0'"
        )
    return [int(part) for part in raw.split(".")]


def _device_cursor(page: Page) -> DeviceKey | None:
    if page.cursor is None:
        return None
    match page.cursor:
        case [str(employee_id), int(registered_at_ms), str(device_id)]:
            return DeviceKey(employee_id, registered_at_ms, device_id)
    raise InvalidArgument("page_token does not belong to ListDevices; start without a token")


def _device(d: Device) -> admin_pb2.Device:
    return admin_pb2.Device(
        device_id=d.device_id,
        model=d.model,
        manufacturer=d.manufacturer,
        app_version=d.app_version,
        registered_at_ms=d.registered_at_ms,
        revoked=d.revoked,
    )


def _status(s: DeviceState) -> admin_pb2.DeviceStatus:
    return admin_pb2.DeviceStatus(
        device=admin_pb2.Device(
            device_id=s.device_id,
            model=s.model,
            manufacturer=s.manufacturer,
            app_version=s.enrolled_app_version,
            registered_at_ms=s.registered_at_ms,
            revoked=s.revoked,
        ),
        employee_id=s.employee_id,
        android_version=s.android_version,
        app_version=s.app_version,
        last_seen_at_ms=s.last_seen_ms,
        last_sync_at_ms=s.last_sync_ms,
        last_batch_result=ingest_pb2.UploadResult.ValueType(s.last_result),
        battery_pct=s.battery_pct,
        network=ingest_pb2.NetworkType.ValueType(s.network),
        telemetry_at_ms=s.telemetry_at_ms,
    )


class PeopleAdmin:
    """Mixed into the service's servicer: the tenant's employees and devices."""

    _db: Database
    _clock: Clock
    _directory: Directory
    _keys: TenantKeys
    _tokens: PageTokens
    _activity: DeviceActivity
    _number_claims: NumberClaims

    async def _caller_tenant(self) -> Tenant:
        return await caller_tenant(self._directory)

    async def CreateEmployee(
        self, request: admin_pb2.CreateEmployeeRequest, context: Context
    ) -> admin_pb2.CreateEmployeeResponse:
        tenant = await self._caller_tenant()
        keyring = await self._keys.keyring(tenant.tenant_id)
        employee, problems = _new_employee(request, tenant, keyring, self._clock.now_ms())
        if employee is None:
            raise InvalidArgument("; ".join(problems))
        with self._number_claims.hold(tenant.tenant_id, [employee.number_bidx]) as busy:
            if busy:
                raise AlreadyExists(_IN_FLIGHT)
            taken = await self._directory.number_holders(tenant.tenant_id, [employee.number_bidx])
            if taken:
                raise AlreadyExists(_taken(taken[employee.number_bidx]))
            await self._directory.add_employee(employee)
        return admin_pb2.CreateEmployeeResponse(employee_id=employee.employee_id)

    async def UpdateEmployee(
        self, request: admin_pb2.UpdateEmployeeRequest, context: Context
    ) -> admin_pb2.UpdateEmployeeResponse:
        tenant = await self._caller_tenant()
        employee_id = check_text(request.employee_id.strip(), "employee_id", MAX_ID_BYTES)
        if not employee_id:
            raise InvalidArgument("employee_id is required")
        found = await self._directory.employees(tenant.tenant_id, employee_id)
        if not found:
            raise NotFound(f"employee {employee_id} does not exist in this tenant")
        current = found[0]
        keyring = await self._keys.keyring(tenant.tenant_id)
        problems: list[str] = []
        changes: dict[str, Any] = {}
        if request.HasField("name"):
            name = request.name.strip()
            if not name:
                problems.append("name must not be empty (leave it unset to keep the name)")
            elif (problem := text_problem(name, "name", MAX_NAME_BYTES)) is not None:
                problems.append(problem)
            else:
                changes["name_enc"] = keyring.encrypt(name)
        if request.HasField("number"):
            try:
                number = phone.normalize(request.number, tenant.default_region)
            except InvalidArgument as exc:
                problems.append(
                    f"number {exc}"
                    if request.number.strip()
                    else "number must not be empty (leave it unset to keep the number)"
                )
            else:
                bidx = keyring.blind_index(number)
                if bidx != current.number_bidx:
                    changes["number_enc"] = keyring.encrypt(number)
                    changes["number_bidx"] = bidx
        if request.update_tags:
            problems.extend(tag_problems(request.tags, "tags"))
            changes["tags"] = tuple(sorted({t.strip() for t in request.tags if t.strip()}))
        if problems:
            raise InvalidArgument("; ".join(problems) + "; nothing was changed")
        if request.HasField("active"):
            changes["active"] = request.active
        updated = replace(current, **changes)
        # The number is checked when the employee comes to hold it: a new number, or reactivation.
        check = updated.active and (
            updated.number_bidx != current.number_bidx or not current.active
        )
        with self._number_claims.hold(
            tenant.tenant_id, [updated.number_bidx] if check else []
        ) as busy:
            if busy:
                raise AlreadyExists(_IN_FLIGHT)
            if check:
                taken = await self._directory.number_holders(
                    tenant.tenant_id, [updated.number_bidx], other_than=employee_id
                )
                if taken:
                    raise AlreadyExists(
                        _taken(taken[updated.number_bidx]) + "; nothing was changed"
                    )
            if updated != current:
                await self._directory.add_employee(updated)
        # The employee is inactive before its devices are revoked, so that no enrollment code
        # of it registers a device meanwhile; asking again revokes any device that still did.
        devices = await self._directory.devices(tenant_id=tenant.tenant_id, employee_id=employee_id)
        revoked = []
        if request.HasField("active") and not request.active:
            revoked = [replace(d, revoked=True) for d in devices if not d.revoked]
            if revoked:
                # Applies to this process's identities at once, to the others at their refresh.
                await self._directory.put_devices(revoked)
            devices = [replace(d, revoked=True) for d in devices]
        return admin_pb2.UpdateEmployeeResponse(
            employee=admin_pb2.Employee(
                employee_id=employee_id,
                name=keyring.decrypt(updated.name_enc),
                number=keyring.decrypt(updated.number_enc),
                tags=updated.tags,
                devices=[_device(d) for d in sorted(devices, key=lambda d: d.registered_at_ms)],
                active=updated.active,
            ),
            devices_revoked=len(revoked),
        )

    async def ImportEmployees(
        self, request: admin_pb2.ImportEmployeesRequest, context: Context
    ) -> admin_pb2.ImportEmployeesResponse:
        count = len(request.employees)
        if count > MAX_IMPORT_EMPLOYEES:
            raise InvalidArgument(
                f"{count} employees in one request; at most {MAX_IMPORT_EMPLOYEES},"
                " split the import into several requests"
            )
        tenant = await self._caller_tenant()
        keyring = await self._keys.keyring(tenant.tenant_id)
        now_ms = self._clock.now_ms()
        errors = [""] * count
        candidates: list[tuple[int, Employee]] = []
        first_with: dict[bytes, int] = {}  # number -> the first entry that has it
        for i, entry in enumerate(request.employees):
            if i and i % _IMPORT_SLICE == 0:
                await asyncio.sleep(0)
            employee, problems = _new_employee(entry, tenant, keyring, now_ms)
            if employee is None:
                errors[i] = "; ".join(problems)
            elif (first := first_with.get(employee.number_bidx)) is not None:
                errors[i] = f"number is the same as that of employees[{first}] of this request"
            else:
                first_with[employee.number_bidx] = i
                candidates.append((i, employee))
        ids = [""] * count
        created: list[Employee] = []
        with self._number_claims.hold(tenant.tenant_id, first_with) as busy:
            taken = await self._directory.number_holders(tenant.tenant_id, list(first_with))
            for i, employee in candidates:
                owner = taken.get(employee.number_bidx)
                if owner is not None:
                    errors[i] = _taken(owner)
                elif employee.number_bidx in busy:
                    errors[i] = _IN_FLIGHT
                else:
                    ids[i] = employee.employee_id
                    created.append(employee)
            # All of them in one insert.
            await self._directory.put_employees(created)
        return admin_pb2.ImportEmployeesResponse(
            employees=[
                admin_pb2.ImportedEmployee(employee_id=i, error=e)
                for i, e in zip(ids, errors, strict=True)
            ],
            created=len(created),
        )

    async def _flush_activity(self) -> None:
        # What this process heard goes in first; a read without it is a few seconds stale.
        try:
            await self._activity.flush()
        except StorageError:
            log.warning("device activity flush before a read failed", exc_info=True)

    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Context
    ) -> admin_pb2.ListDevicesResponse:
        tenant_id = caller().tenant_id
        check_count(request.employee_ids, "employee_ids", MAX_FILTER_EMPLOYEE_IDS)
        for i, employee_id in enumerate(request.employee_ids):
            check_text(employee_id, f"employee_ids[{i}]", MAX_ID_BYTES)
        filter_bytes = admin_pb2.ListDevicesRequest(
            employee_ids=request.employee_ids, include_revoked=request.include_revoked
        ).SerializeToString(deterministic=True)
        opened = open_page(
            self._tokens,
            "ListDevices",
            tenant_id,
            filter_bytes,
            request.page_size,
            request.page_token,
            self._clock.now_ms(),
        )
        after = _device_cursor(opened.page)
        await self._flush_activity()
        rows = await device_status.page(
            self._db,
            tenant_id,
            list(request.employee_ids),
            request.include_revoked,
            opened.page.snapshot_ms,
            after,
            opened.page.size + 1,
        )
        served, token = opened.cut(rows, lambda r: [r.employee_id, r.registered_at_ms, r.device_id])
        return admin_pb2.ListDevicesResponse(
            devices=[_status(s) for s in served], next_page_token=token
        )

    async def DeviceHealth(
        self, request: admin_pb2.DeviceHealthRequest, context: Context
    ) -> admin_pb2.DeviceHealthResponse:
        tenant_id = caller().tenant_id
        if request.low_battery_pct > 100:
            raise InvalidArgument(
                f"low_battery_pct is {request.low_battery_pct}; send a percent, 1-100"
                " (0 means the default of 15)"
            )
        min_version = _min_version(request.min_app_version)
        silent_for_s = request.silent_for_s or DEFAULT_SILENT_FOR_S
        await self._flush_activity()
        found = await device_status.unhealthy(
            self._db,
            tenant_id,
            silent_before_ms=max(0, self._clock.now_ms() - silent_for_s * 1000),
            low_battery_pct=request.low_battery_pct or DEFAULT_LOW_BATTERY_PCT,
            min_version=min_version,
        )
        return admin_pb2.DeviceHealthResponse(
            devices=[
                admin_pb2.DeviceHealthEntry(
                    status=_status(h.state),
                    issues=[
                        issue
                        for issue, present in (
                            (admin_pb2.HEALTH_ISSUE_SILENT, h.silent),
                            (admin_pb2.HEALTH_ISSUE_LOW_BATTERY, h.low_battery),
                            (admin_pb2.HEALTH_ISSUE_OLD_APP, h.old_app),
                        )
                        if present
                    ],
                )
                for h in found
            ]
        )
