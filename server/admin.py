"""AdminService: tenants, API keys, employees, enrollments and devices."""

from __future__ import annotations

import uuid
import zoneinfo
from typing import Any, TypeAlias

import grpc

from pipeline import phone
from pipeline.keys import TenantKeys
from proto.callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from server.auth import API_KEY_PREFIX, ENROLLMENT_PREFIX, Authenticator, TokenHasher, new_public_id
from server.auth import current_caller as caller
from server.errors import Unimplemented
from storage import privacy
from storage.database import Database
from storage.directory import ApiKey, Directory, Employee, Enrollment, Tenant, now_ms
from storage.errors import InvalidArgument, NotFound

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

DEFAULT_ENROLLMENT_TTL_S = 86_400
MAX_ENROLLMENT_TTL_S = 30 * 86_400
_ROLES = {common_pb2.ROLE_ADMIN: "ADMIN", common_pb2.ROLE_REPORTS: "REPORTS"}


def _required(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > 256:
        raise InvalidArgument(f"{field} is longer than 256 characters")
    return value


def valid_timezone(name: str) -> str:
    """The IANA zone name, or InvalidArgument."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(
            f"timezone {name!r} is not an IANA time zone (e.g. 'Asia/Kolkata')"
        ) from exc
    return name


def valid_region(region: str, field: str) -> str:
    """The upper-case ISO 3166 alpha-2 region, or InvalidArgument."""
    if not phone.is_known_region(region):
        raise InvalidArgument(f"{field} {region!r} is not an ISO 3166 alpha-2 region (e.g. 'IN')")
    return region.upper()


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Administration of the caller's tenant; CreateTenant alone is the operator's."""

    def __init__(
        self,
        directory: Directory,
        keys: TenantKeys,
        hasher: TokenHasher,
        authenticator: Authenticator,
        db: Database,
    ) -> None:
        self._db = db
        self._directory = directory
        self._keys = keys
        self._hasher = hasher
        self._auth = authenticator

    async def _tenant(self) -> Tenant:
        tenant = await self._directory.tenant(caller().tenant_id)
        if tenant is None:
            raise NotFound("the caller's tenant no longer exists")
        return tenant

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Context
    ) -> admin_pb2.CreateTenantResponse:
        problems = []
        name = request.name.strip()
        if not name:
            problems.append("name is required")
        try:
            valid_region(request.default_region, "default_region")
        except InvalidArgument as exc:
            problems.append(str(exc))
        try:
            valid_timezone(request.timezone)
        except InvalidArgument as exc:
            problems.append(str(exc))
        if problems:
            raise InvalidArgument("; ".join(problems))
        tenant = Tenant(
            tenant_id=str(uuid.uuid4()),
            name=name,
            default_region=request.default_region.upper(),
            timezone=request.timezone,
            created_at_ms=now_ms(),
        )
        key_id, wrapped, _ = self._keys.create(tenant.tenant_id)
        await self._directory.add_tenant(tenant, key_id, wrapped)
        token = await self._add_api_key(tenant.tenant_id, "admin", "ADMIN")
        return admin_pb2.CreateTenantResponse(tenant_id=tenant.tenant_id, admin_api_key=token[0])

    async def _add_api_key(self, tenant_id: str, name: str, role: str) -> tuple[str, str]:
        key_id = new_public_id()
        token, token_hash = self._hasher.issue(API_KEY_PREFIX, key_id)
        await self._directory.add_api_key(
            ApiKey(tenant_id, key_id, name, role, token_hash, now_ms())
        )
        return token, key_id

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role must be ROLE_ADMIN or ROLE_REPORTS")
        token, key_id = await self._add_api_key(
            caller().tenant_id, _required(request.name, "name"), role
        )
        return admin_pb2.CreateApiKeyResponse(api_key=token, key_id=key_id)

    async def CreateEmployee(
        self, request: admin_pb2.CreateEmployeeRequest, context: Context
    ) -> admin_pb2.CreateEmployeeResponse:
        tenant = await self._tenant()
        name = _required(request.name, "name")
        number = phone.normalize(request.number, tenant.default_region)
        tags = tuple(sorted({t.strip() for t in request.tags if t.strip()}))
        keyring = await self._keys.keyring(tenant.tenant_id)
        employee = Employee(
            tenant_id=tenant.tenant_id,
            employee_id=str(uuid.uuid4()),
            name_enc=keyring.encrypt(name),
            number_enc=keyring.encrypt(number),
            number_bidx=keyring.blind_index(number),
            tags=tags,
            created_at_ms=now_ms(),
        )
        await self._directory.add_employee(employee)
        return admin_pb2.CreateEmployeeResponse(employee_id=employee.employee_id)

    async def ListEmployees(
        self, request: admin_pb2.ListEmployeesRequest, context: Context
    ) -> admin_pb2.ListEmployeesResponse:
        tenant_id = caller().tenant_id
        keyring = await self._keys.keyring(tenant_id)
        devices: dict[str, list[admin_pb2.Device]] = {}
        for d in sorted(
            await self._directory.devices(tenant_id=tenant_id), key=lambda d: d.registered_at_ms
        ):
            devices.setdefault(d.employee_id, []).append(
                admin_pb2.Device(
                    device_id=d.device_id,
                    model=d.model,
                    manufacturer=d.manufacturer,
                    app_version=d.app_version,
                    registered_at_ms=d.registered_at_ms,
                    revoked=d.revoked,
                )
            )
        employees = [
            admin_pb2.Employee(
                employee_id=e.employee_id,
                name=keyring.decrypt(e.name_enc),
                number=keyring.decrypt(e.number_enc),
                tags=e.tags,
                devices=devices.get(e.employee_id, []),
            )
            for e in await self._directory.employees(tenant_id)
        ]
        employees.sort(key=lambda e: (e.name.casefold(), e.employee_id))
        return admin_pb2.ListEmployeesResponse(employees=employees)

    async def CreateEnrollment(
        self, request: admin_pb2.CreateEnrollmentRequest, context: Context
    ) -> admin_pb2.CreateEnrollmentResponse:
        tenant_id = caller().tenant_id
        employee_id = _required(request.employee_id, "employee_id")
        if not await self._directory.employees(tenant_id, employee_id):
            raise NotFound(f"employee {employee_id} does not exist in this tenant")
        ttl_s = request.ttl_s or DEFAULT_ENROLLMENT_TTL_S
        if ttl_s > MAX_ENROLLMENT_TTL_S:
            raise InvalidArgument(f"ttl_s must be at most {MAX_ENROLLMENT_TTL_S} (30 days)")
        enrollment_id = new_public_id()
        code, code_hash = self._hasher.issue(ENROLLMENT_PREFIX, enrollment_id)
        created = now_ms()
        enrollment = Enrollment(
            tenant_id=tenant_id,
            enrollment_id=enrollment_id,
            employee_id=employee_id,
            code_hash=code_hash,
            created_at_ms=created,
            expires_at_ms=created + ttl_s * 1000,
        )
        await self._directory.put_enrollment(enrollment)
        return admin_pb2.CreateEnrollmentResponse(
            enrollment_code=code, expires_at_ms=enrollment.expires_at_ms
        )

    async def RevokeDevice(
        self, request: admin_pb2.RevokeDeviceRequest, context: Context
    ) -> admin_pb2.RevokeDeviceResponse:
        device_id = _required(request.device_id, "device_id")
        found = await self._directory.devices(tenant_id=caller().tenant_id, device_id=device_id)
        if not found:
            raise NotFound(f"device {device_id} does not exist in this tenant")
        if not found[0].revoked:
            await self._directory.revoke_device(found[0])
        self._auth.forget_device(device_id)
        return admin_pb2.RevokeDeviceResponse()

    async def SetExcludedNumbers(
        self, request: admin_pb2.SetExcludedNumbersRequest, context: Context
    ) -> admin_pb2.SetExcludedNumbersResponse:
        tenant = await self._tenant()
        keyring = await self._keys.keyring(tenant.tenant_id)
        numbers: dict[bytes, bytes] = {}
        problems = []
        for i, raw in enumerate(request.numbers):
            try:
                e164 = phone.normalize(raw, tenant.default_region)
            except InvalidArgument as exc:
                problems.append(f"numbers[{i}]: {exc}")
                continue
            numbers[keyring.blind_index(e164)] = keyring.encrypt(e164)
        if problems:
            raise InvalidArgument("; ".join(problems) + "; nothing was changed")
        excluded = await privacy.set_excluded(self._db, tenant.tenant_id, numbers)
        return admin_pb2.SetExcludedNumbersResponse(excluded=excluded)

    async def ImportLeads(
        self, request: admin_pb2.ImportLeadsRequest, context: Context
    ) -> admin_pb2.ImportLeadsResponse:
        raise Unimplemented("ImportLeads is not built yet (lead import and assignment)")

    async def EraseNumber(
        self, request: admin_pb2.EraseNumberRequest, context: Context
    ) -> admin_pb2.EraseNumberResponse:
        raise Unimplemented("EraseNumber is not built yet (erasure of a number's data)")
