"""AdminService reads of what the tenant stored (issue 12): GetExcludedNumbers, ListLeads,
ListContacts.

Everything is decrypted with the tenant's keyring, so these are ADMIN-only (the service's rule).
The listings are paged with the service's page tokens, bound to the RPC, the tenant and the
request's filter; a page is cut from one row more than it holds, like the report listings.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from callsight.core.clock import Clock
from callsight.core.errors import InvalidArgument
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import (
    MAX_FILTER_EMPLOYEE_IDS,
    MAX_FILTER_TAGS,
    MAX_ID_BYTES,
    MAX_TAG_BYTES,
    check_count,
    check_text,
)
from callsight.pipeline.paging import Page, PageTokens, open_page
from callsight.server.auth import current_caller as caller
from callsight.storage import reads
from callsight.storage.database import Database
from callsight.v1 import admin_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _malformed() -> InvalidArgument:
    return InvalidArgument("page_token does not belong to this listing; start without a token")


def _lead_cursor(page: Page) -> reads.LeadKey | None:
    if page.cursor is None:
        return None
    match page.cursor:
        case [int(created_at_ms), str(lead_id)]:
            return reads.LeadKey(created_at_ms, lead_id)
    raise _malformed()


def _contact_cursor(page: Page) -> reads.ContactKey | None:
    if page.cursor is None:
        return None
    match page.cursor:
        case [str(device_id), str(contact_id)]:
            return reads.ContactKey(device_id, contact_id)
    raise _malformed()


def _employee_ids(values: Any) -> tuple[str, ...] | None:
    """A request's employee_ids checked against the caps; None (all) when empty."""
    check_count(values, "employee_ids", MAX_FILTER_EMPLOYEE_IDS)
    for i, value in enumerate(values):
        check_text(value, f"employee_ids[{i}]", MAX_ID_BYTES)
    return tuple(sorted(set(values))) or None


def _stored_lead(keyring: Keyring, stored: reads.StoredLead) -> admin_pb2.StoredLead:
    lead = stored.lead
    decrypt = keyring.decrypt
    return admin_pb2.StoredLead(
        lead_id=lead.lead_id,
        lead=admin_pb2.Lead(
            first_name=decrypt(lead.first_name_enc),
            last_name=decrypt(lead.last_name_enc),
            company=decrypt(lead.company_enc),
            primary_number=decrypt(lead.primary_enc),
            secondary_number=decrypt(lead.secondary_enc),
            email=decrypt(lead.email_enc),
            address=decrypt(lead.address_enc),
            city=decrypt(lead.city_enc),
            state=lead.state,
            country=lead.country,
            zipcode=decrypt(lead.zipcode_enc),
            tags=lead.tags,
            employee_id=lead.employee_id,
        ),
        employee_id=lead.employee_id,
        created_at_ms=lead.created_at_ms,
        first_call_at_ms=stored.first_call_at_ms,
    )


class ReadAdmin:
    """Mixed into the AdminService servicer: the tenant's stored numbers, leads and contacts."""

    _db: Database
    _keys: TenantKeys
    _tokens: PageTokens
    _clock: Clock

    async def GetExcludedNumbers(
        self, request: admin_pb2.GetExcludedNumbersRequest, context: Context
    ) -> admin_pb2.GetExcludedNumbersResponse:
        tenant_id = caller().tenant_id
        keyring = await self._keys.keyring(tenant_id)
        stored = await reads.excluded_numbers(self._db, tenant_id)
        return admin_pb2.GetExcludedNumbersResponse(
            numbers=sorted(keyring.decrypt(enc) for enc in stored)
        )

    async def ListLeads(
        self, request: admin_pb2.ListLeadsRequest, context: Context
    ) -> admin_pb2.ListLeadsResponse:
        tenant_id = caller().tenant_id
        employee_ids = _employee_ids(request.employee_ids)
        check_count(request.tags, "tags", MAX_FILTER_TAGS)
        for i, tag in enumerate(request.tags):
            check_text(tag, f"tags[{i}]", MAX_TAG_BYTES)
        lead_filter = reads.LeadFilter(
            tenant_id=tenant_id,
            employee_ids=employee_ids,
            # Leads store their tags stripped (ImportLeads), so the filter's are stripped too.
            tags=tuple(sorted({t.strip() for t in request.tags if t.strip()})),
            uncalled_only=request.uncalled_only,
        )
        opened = open_page(
            self._tokens,
            "ListLeads",
            tenant_id,
            admin_pb2.ListLeadsRequest(
                employee_ids=request.employee_ids,
                tags=request.tags,
                uncalled_only=request.uncalled_only,
            ).SerializeToString(deterministic=True),
            request.page_size,
            request.page_token,
            self._clock.now_ms(),
        )
        rows = await reads.leads_page(
            self._db, lead_filter, _lead_cursor(opened.page), opened.page.size + 1
        )
        served, token = opened.cut(rows, lambda r: [r.key.created_at_ms, r.key.lead_id])
        keyring = await self._keys.keyring(tenant_id)
        return admin_pb2.ListLeadsResponse(
            leads=[_stored_lead(keyring, r) for r in served], next_page_token=token
        )

    async def ListContacts(
        self, request: admin_pb2.ListContactsRequest, context: Context
    ) -> admin_pb2.ListContactsResponse:
        tenant_id = caller().tenant_id
        employee_ids = _employee_ids(request.employee_ids)
        opened = open_page(
            self._tokens,
            "ListContacts",
            tenant_id,
            admin_pb2.ListContactsRequest(employee_ids=request.employee_ids).SerializeToString(
                deterministic=True
            ),
            request.page_size,
            request.page_token,
            self._clock.now_ms(),
        )
        rows = await reads.contacts_page(
            self._db, tenant_id, employee_ids, _contact_cursor(opened.page), opened.page.size + 1
        )
        served, token = opened.cut(rows, lambda r: [r.key.device_id, r.key.contact_id])
        keyring = await self._keys.keyring(tenant_id)
        decrypt = keyring.decrypt
        return admin_pb2.ListContactsResponse(
            contacts=[
                admin_pb2.StoredContact(
                    device_id=r.device_id,
                    employee_id=r.employee_id,
                    contact_id=r.contact_id,
                    name=decrypt(r.name_enc),
                    # A number the device sent that could not be read was stored as b"".
                    numbers=[decrypt(n) for n in r.numbers_enc if n],
                    updated_at_ms=r.updated_at_ms,
                )
                for r in served
            ],
            next_page_token=token,
        )
