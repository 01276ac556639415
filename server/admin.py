"""AdminService: tenants, API keys, employees, enrollments, devices, leads and privacy."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any, TypeAlias

import grpc

from callsight.core.clock import Clock
from callsight.core.errors import FailedPrecondition, InvalidArgument, NotFound
from callsight.pipeline import phone
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import client_keys
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import (
    MAX_EXCLUDED_NUMBERS,
    MAX_ID_BYTES,
    MAX_IMPORT_EMPLOYEE_IDS,
    MAX_IMPORT_LEADS,
    MAX_LEAD_FIELD_BYTES,
    MAX_NAME_BYTES,
    check_count,
    check_text,
    quote,
    tag_problems,
    text_problem,
)
from callsight.pipeline.paging import PageTokens
from callsight.server.admin_export import ExportAdmin, ExportBounds
from callsight.server.admin_people import NumberClaims, PeopleAdmin
from callsight.server.admin_policy import PolicyAdmin
from callsight.server.admin_reads import ReadAdmin
from callsight.server.admin_tenants import TenantAdmin
from callsight.server.admin_webhooks import WebhookAdmin
from callsight.server.auth import (
    API_KEY_PREFIX,
    ENROLLMENT_PREFIX,
    TokenHasher,
    new_public_id,
)
from callsight.server.auth import current_caller as caller
from callsight.server.policy import PolicyMessages
from callsight.server.webhooks import Webhooks
from callsight.storage import leads, privacy
from callsight.storage.activity import DeviceActivity
from callsight.storage.database import Database
from callsight.storage.directory import ApiKey, Directory, Enrollment, Tenant
from callsight.storage.tenants import KeyUses
from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

DEFAULT_ENROLLMENT_TTL_S = 86_400
MAX_ENROLLMENT_TTL_S = 30 * 86_400
_ROLES = {common_pb2.ROLE_ADMIN: "ADMIN", common_pb2.ROLE_REPORTS: "REPORTS"}
# An import with thousands of bad leads names the first ones and counts the rest.
_MAX_PROBLEMS_SHOWN = 50


def _required(value: str, field: str, limit: int = MAX_NAME_BYTES) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required")
    return check_text(value, field, limit)


def _all_problems(problems: list[str], suffix: str) -> InvalidArgument:
    shown = problems[:_MAX_PROBLEMS_SHOWN]
    if len(problems) > len(shown):
        shown.append(f"and {len(problems) - len(shown)} more problems")
    return InvalidArgument("; ".join(shown) + suffix)


class _Assigner:
    """Picks the employee of each new lead: round robin, or the least loaded at that moment."""

    def __init__(self, pool: list[str], load: dict[str, int] | None) -> None:
        self._pool = pool
        self._load = load
        self._turn = 0

    def next(self) -> str:
        """The employee of the next new lead."""
        if not self._pool:
            raise FailedPrecondition(
                "the tenant has no employees to assign leads to; create an employee first"
            )
        if self._load is None:
            employee_id = self._pool[self._turn % len(self._pool)]
            self._turn += 1
            return employee_id
        load = self._load
        # min() keeps the first of equals, so ties go to the earlier employee in the pool.
        employee_id = min(self._pool, key=lambda e: load.get(e, 0))
        load[employee_id] = load.get(employee_id, 0) + 1
        return employee_id


class AdminServicer(
    TenantAdmin,
    PeopleAdmin,
    ReadAdmin,
    PolicyAdmin,
    WebhookAdmin,
    ExportAdmin,
    admin_pb2_grpc.AdminServiceServicer,
):
    """Administration of the caller's tenant; CreateTenant alone is the operator's."""

    def __init__(
        self,
        directory: Directory,
        keys: TenantKeys,
        hasher: TokenHasher,
        db: Database,
        clock: Clock,
        tokens: PageTokens,
        erase_settle_s: float = 0.0,
        *,
        policies: PolicyMessages,
        key_uses: KeyUses | None = None,
        activity: DeviceActivity,
        webhooks: Webhooks | None = None,
        exports: ExportBounds | None = None,
    ) -> None:
        """``erase_settle_s``: how long EraseNumber waits between writing its tombstone and
        deleting, so that every process has the tombstone and has flushed what it decoded
        before (the identity refresh interval plus the batcher's maximum age). ``policies``:
        the device policies, shared with ingest."""
        self._policy_messages = policies
        # Where ExportContacts and ExportLeads read (None: they are unavailable).
        self._exports = exports
        # Webhook subscriptions, the events RPCs raise, and the dispatcher (TestWebhook).
        self._webhooks = webhooks
        # The API key uses this process saw and has not written yet (ListApiKeys).
        self._key_uses = key_uses
        self._db = db
        self._erase_settle_s = erase_settle_s
        self._clock = clock
        self._directory = directory
        self._keys = keys
        self._hasher = hasher
        self._tokens = tokens
        # What devices were last heard of (ListDevices, DeviceHealth), and the numbers being
        # given to employees right now.
        self._activity = activity
        self._number_claims = NumberClaims()
        # Imports run one at a time in this process, so two of one number cannot both create it.
        self._import_lock = asyncio.Lock()

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Context
    ) -> admin_pb2.CreateTenantResponse:
        problems = []
        name = request.name.strip()
        if not name:
            problems.append("name is required")
        elif (problem := text_problem(name, "name", MAX_NAME_BYTES)) is not None:
            problems.append(problem)
        try:
            phone.valid_region(request.default_region, "default_region")
        except InvalidArgument as exc:
            problems.append(str(exc))
        try:
            phone.valid_timezone(request.timezone)
        except InvalidArgument as exc:
            problems.append(str(exc))
        if problems:
            raise InvalidArgument("; ".join(problems))
        tenant = Tenant(
            tenant_id=str(uuid.uuid4()),
            name=name,
            default_region=request.default_region.upper(),
            timezone=request.timezone,
            created_at_ms=self._clock.now_ms(),
        )
        key_id, wrapped, _ = self._keys.create(tenant.tenant_id)
        await self._directory.add_tenant(tenant, key_id, wrapped)
        token = await self._add_api_key(tenant.tenant_id, "admin", "ADMIN")
        return admin_pb2.CreateTenantResponse(tenant_id=tenant.tenant_id, admin_api_key=token[0])

    async def _add_api_key(self, tenant_id: str, name: str, role: str) -> tuple[str, str]:
        key_id = new_public_id()
        token, token_hash = self._hasher.issue(API_KEY_PREFIX, key_id)
        await self._directory.add_api_key(
            ApiKey(tenant_id, key_id, name, role, token_hash, self._clock.now_ms())
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
                active=e.active,
            )
            for e in await self._directory.employees(tenant_id)
        ]
        employees.sort(key=lambda e: (e.name.casefold(), e.employee_id))
        return admin_pb2.ListEmployeesResponse(employees=employees)

    async def CreateEnrollment(
        self, request: admin_pb2.CreateEnrollmentRequest, context: Context
    ) -> admin_pb2.CreateEnrollmentResponse:
        tenant_id = caller().tenant_id
        employee_id = _required(request.employee_id, "employee_id", MAX_ID_BYTES)
        active = await self._directory.employee_active(tenant_id, employee_id)
        if active is None:
            raise NotFound(f"employee {employee_id} does not exist in this tenant")
        if not active:
            raise FailedPrecondition(
                f"employee {employee_id} is deactivated; reactivate them (UpdateEmployee with"
                " active true) before enrolling a device"
            )
        ttl_s = request.ttl_s or DEFAULT_ENROLLMENT_TTL_S
        if ttl_s > MAX_ENROLLMENT_TTL_S:
            raise InvalidArgument(f"ttl_s must be at most {MAX_ENROLLMENT_TTL_S} (30 days)")
        enrollment_id = new_public_id()
        code, code_hash = self._hasher.issue(ENROLLMENT_PREFIX, enrollment_id)
        created = self._clock.now_ms()
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
        device_id = _required(request.device_id, "device_id", MAX_ID_BYTES)
        found = await self._directory.devices(tenant_id=caller().tenant_id, device_id=device_id)
        if not found:
            raise NotFound(f"device {device_id} does not exist in this tenant")
        if not found[0].revoked:
            # The directory applies the revocation to this process's identities at once.
            await self._directory.revoke_device(found[0])
        return admin_pb2.RevokeDeviceResponse()

    async def SetExcludedNumbers(
        self, request: admin_pb2.SetExcludedNumbersRequest, context: Context
    ) -> admin_pb2.SetExcludedNumbersResponse:
        check_count(request.numbers, "numbers", MAX_EXCLUDED_NUMBERS)
        tenant = await self._caller_tenant()
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
            raise _all_problems(problems, "; nothing was changed")
        excluded = await privacy.set_excluded(
            self._db, tenant.tenant_id, numbers, self._clock.now_ns()
        )
        return admin_pb2.SetExcludedNumbersResponse(excluded=excluded)

    async def ImportLeads(
        self, request: admin_pb2.ImportLeadsRequest, context: Context
    ) -> admin_pb2.ImportLeadsResponse:
        if len(request.leads) > MAX_IMPORT_LEADS:
            raise InvalidArgument(
                f"{len(request.leads)} leads in one request; at most {MAX_IMPORT_LEADS},"
                " split the import into several requests"
            )
        check_count(request.employee_ids, "employee_ids", MAX_IMPORT_EMPLOYEE_IDS)
        tenant = await self._caller_tenant()
        problems: list[str] = []
        strategy = request.strategy or admin_pb2.ASSIGNMENT_STRATEGY_ROUND_ROBIN
        if strategy not in admin_pb2.AssignmentStrategy.values():
            problems.append(f"strategy {strategy} is not an AssignmentStrategy value")
        on_existing = request.on_existing or admin_pb2.ON_EXISTING_IGNORE
        if on_existing not in admin_pb2.OnExisting.values():
            problems.append(f"on_existing {on_existing} is not an OnExisting value")
        explicit = strategy == admin_pb2.ASSIGNMENT_STRATEGY_EXPLICIT
        employees = sorted(e.employee_id for e in await self._directory.employees(tenant.tenant_id))
        known = set(employees)
        unknown = [e for e in request.employee_ids if e not in known]
        if unknown:
            shown = ", ".join(quote(e) for e in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            problems.append(f"employee_ids [{shown}]{more} are not employees of this tenant")
        keyring = await self._keys.keyring(tenant.tenant_id)
        imported = [
            self._imported_lead(i, lead, tenant, keyring, explicit, known, problems)
            for i, lead in enumerate(request.leads)
        ]
        if problems:
            raise _all_problems(problems, "; no lead was imported")

        pool = list(dict.fromkeys(request.employee_ids)) or employees
        async with self._import_lock:
            load = None
            if strategy == admin_pb2.ASSIGNMENT_STRATEGY_LEAST_LOADED:
                load = await leads.open_leads(self._db, tenant.tenant_id)
            assigner = _Assigner(pool, load)
            current: dict[bytes, leads.Lead] = {}
            # Lowest lead_id wins if several leads ever shared a primary number.
            for found in reversed(
                await leads.by_primary(
                    self._db, tenant.tenant_id, [i.primary_bidx for i in imported]
                )
            ):
                current[found.primary_bidx] = found
            created = self._clock.now_ms()
            assigned_before = {lead.lead_id: lead.employee_id for lead in current.values()}
            changed: dict[str, leads.Lead] = {}
            results = []
            for lead in imported:
                existing = current.get(lead.primary_bidx)
                if existing is None:
                    employee_id = lead.employee_id if explicit else assigner.next()
                    new = replace(
                        lead,
                        lead_id=str(uuid.uuid4()),
                        employee_id=employee_id,
                        created_at_ms=created,
                    )
                    current[new.primary_bidx] = changed[new.lead_id] = new
                    results.append(
                        admin_pb2.ImportedLead(
                            lead_id=new.lead_id, is_new=True, employee_id=employee_id
                        )
                    )
                    continue
                # A repeat of a number earlier in this request meets the lead it created: not new.
                if on_existing == admin_pb2.ON_EXISTING_OVERWRITE:
                    updated = leads.overwrite(
                        existing, lead, lead.employee_id if explicit else None
                    )
                elif on_existing == admin_pb2.ON_EXISTING_FILL_BLANKS:
                    updated = leads.fill_blanks(existing, lead)
                else:
                    updated = existing
                if updated != existing:
                    current[updated.primary_bidx] = changed[updated.lead_id] = updated
                results.append(
                    admin_pb2.ImportedLead(
                        lead_id=updated.lead_id, is_new=False, employee_id=updated.employee_id
                    )
                )
            await leads.put(self._db, list(changed.values()), self._clock.now_ns())
            await self._leads_assigned(
                tenant.tenant_id,
                keyring,
                [x for x in changed.values() if assigned_before.get(x.lead_id) != x.employee_id],
            )
        return admin_pb2.ImportLeadsResponse(leads=results)

    @staticmethod
    def _imported_lead(
        index: int,
        lead: admin_pb2.Lead,
        tenant: Tenant,
        keyring: Keyring,
        explicit: bool,
        employees: set[str],
        problems: list[str],
    ) -> leads.Lead:
        """The request lead, encrypted and not yet assigned; its problems go to ``problems``."""
        where = f"leads[{index}]"
        text = {
            name: getattr(lead, name).strip()
            for name in (
                "first_name",
                "last_name",
                "company",
                "email",
                "address",
                "city",
                "state",
                "country",
                "zipcode",
            )
        }
        for name, value in text.items():
            problem = text_problem(value, f"{where}.{name}", MAX_LEAD_FIELD_BYTES)
            if problem is not None:
                problems.append(problem)
        problems.extend(tag_problems(lead.tags, f"{where}.tags"))
        primary = secondary = ""
        if not lead.primary_number.strip():
            problems.append(f"{where}.primary_number is required")
        else:
            try:
                primary = phone.normalize(lead.primary_number, tenant.default_region)
            except InvalidArgument as exc:
                problems.append(f"{where}.primary_number: {exc}")
        if lead.secondary_number.strip():
            try:
                secondary = phone.normalize(lead.secondary_number, tenant.default_region)
            except InvalidArgument as exc:
                problems.append(f"{where}.secondary_number: {exc}")
        employee_id = ""
        if explicit:
            employee_id = lead.employee_id.strip()
            if not employee_id:
                problems.append(
                    f"{where}.employee_id is required with ASSIGNMENT_STRATEGY_EXPLICIT"
                )
            elif employee_id not in employees:
                problems.append(
                    f"{where}.employee_id {quote(employee_id)} is not an employee of this tenant"
                )
        return leads.Lead(
            tenant_id=tenant.tenant_id,
            lead_id="",
            employee_id=employee_id,
            first_name_enc=keyring.encrypt(text["first_name"]),
            last_name_enc=keyring.encrypt(text["last_name"]),
            company_enc=keyring.encrypt(text["company"]),
            primary_enc=keyring.encrypt(primary),
            primary_bidx=keyring.blind_index(primary) if primary else leads.NO_NUMBER,
            secondary_enc=keyring.encrypt(secondary),
            secondary_bidx=keyring.blind_index(secondary) if secondary else leads.NO_NUMBER,
            email_enc=keyring.encrypt(text["email"]),
            address_enc=keyring.encrypt(text["address"]),
            city_enc=keyring.encrypt(text["city"]),
            state=text["state"],
            country=text["country"],
            zipcode_enc=keyring.encrypt(text["zipcode"]),
            tags=tuple(sorted({t.strip() for t in lead.tags if t.strip()})),
            created_at_ms=0,
        )

    async def _client_key(self, tenant: Tenant, number: str) -> tuple[int, bytes]:
        """(client key, blind index) of a request's number in the tenant's region."""
        if not number.strip():
            raise InvalidArgument("number is required")
        e164 = phone.normalize(number, tenant.default_region)
        bidx = (await self._keys.keyring(tenant.tenant_id)).blind_index(e164)
        return int(client_keys([bidx])[0]), bidx

    async def EraseNumber(
        self, request: admin_pb2.EraseNumberRequest, context: Context
    ) -> admin_pb2.EraseNumberResponse:
        tenant = await self._caller_tenant()
        client_key, bidx = await self._client_key(tenant, request.number)
        # The tombstone first: from here on ingest drops the number, in this process at once and
        # in the others at their next identity refresh; then the rows batches decoded before it
        # had time to flush are deleted with the rest.
        await self._directory.put_erasure(tenant.tenant_id, client_key, erased=True)
        await asyncio.sleep(self._erase_settle_s)
        erased = await privacy.erase_number(self._db, tenant.tenant_id, bidx)
        # Again, now that the rows are gone: every process forgets the versions it remembered
        # (dedup), so that after a lift a re-sent record is stored, not counted a duplicate.
        await self._directory.put_erasure(tenant.tenant_id, client_key, erased=True)
        return admin_pb2.EraseNumberResponse(
            erased_calls=erased.calls, erased_contacts=erased.contacts, erased_leads=erased.leads
        )

    async def LiftErasure(
        self, request: admin_pb2.LiftErasureRequest, context: Context
    ) -> admin_pb2.LiftErasureResponse:
        tenant = await self._caller_tenant()
        client_key, _ = await self._client_key(tenant, request.number)
        if not await self._directory.is_erased(tenant.tenant_id, client_key):
            return admin_pb2.LiftErasureResponse(lifted=False)
        await self._directory.put_erasure(tenant.tenant_id, client_key, erased=False)
        return admin_pb2.LiftErasureResponse(lifted=True)
