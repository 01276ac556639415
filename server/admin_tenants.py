"""AdminService for the operator's tenants, the tenant's API keys and its data keys (issue 12):
ListTenants, DeleteTenant, ListApiKeys, RevokeApiKey, RotateTenantKey.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
import structlog

from callsight.core.clock import Clock
from callsight.core.errors import FailedPrecondition, InvalidArgument, NotFound
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_ID_BYTES, check_text
from callsight.server.auth import current_caller as caller
from callsight.storage import tenants
from callsight.storage.database import Database
from callsight.storage.directory import ApiKey, Directory
from callsight.storage.tenants import KeyUses
from callsight.v1 import admin_pb2, common_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

log = structlog.get_logger(__name__)

_ROLE_OF = {"ADMIN": common_pb2.ROLE_ADMIN, "REPORTS": common_pb2.ROLE_REPORTS}


def _id(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required")
    return check_text(value, field, MAX_ID_BYTES)


class TenantAdmin:
    """Mixed into the service's servicer: tenants (operator), API keys and data keys (ADMIN)."""

    _db: Database
    _clock: Clock
    _directory: Directory
    _keys: TenantKeys
    _key_uses: KeyUses | None
    _erase_settle_s: float

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Context
    ) -> admin_pb2.ListTenantsResponse:
        return admin_pb2.ListTenantsResponse(
            tenants=[
                admin_pb2.Tenant(
                    tenant_id=t.tenant_id,
                    name=t.name,
                    default_region=t.default_region,
                    timezone=t.timezone,
                    created_at_ms=t.created_at_ms,
                    employees=t.employees,
                    devices=t.devices,
                )
                for t in await tenants.tenants(self._db)
            ]
        )

    async def DeleteTenant(
        self, request: admin_pb2.DeleteTenantRequest, context: Context
    ) -> admin_pb2.DeleteTenantResponse:
        tenant_id = _id(request.tenant_id, "tenant_id")
        if request.confirm_tenant_id.strip() != tenant_id:
            raise InvalidArgument(
                "confirm_tenant_id must equal tenant_id: repeat the id of the tenant to delete"
            )
        if await self._directory.tenant(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        # 1. Crypto-shred: once the wrapped keys are gone no ciphertext of the tenant opens, in
        # this process at once (its keyring is dropped), in the others at their next refresh.
        destroyed = await tenants.destroy_keys(self._db, tenant_id, self._clock.now_ns())
        self._keys.forget(tenant_id)
        await tenants.hide_tenant(self._db, tenant_id)
        # 2. Its API keys and device tokens are refused from the next call, here at once.
        now = self._clock.now_ms()
        keys = await tenants.api_keys(self._db, tenant_id)
        await asyncio.gather(
            *(self._directory.add_api_key(_revoked(k, now)) for k in keys if not k.revoked)
        )
        devices = [d for d in await self._directory.devices(tenant_id=tenant_id) if not d.revoked]
        if devices:
            await self._directory.put_devices([replace(d, revoked=True) for d in devices])
        # 3. Every process has seen the revocations and flushed what it decoded before them,
        # so no row of the tenant is written after the deletion.
        await asyncio.sleep(self._erase_settle_s)
        tables = await tenants.delete_rows(self._db, tenant_id)
        log.warning(
            "tenant deleted", tenant_id=tenant_id, keys_destroyed=destroyed, tables=len(tables)
        )
        return admin_pb2.DeleteTenantResponse(keys_destroyed=destroyed)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        pending = self._key_uses.pending if self._key_uses is not None else lambda _: 0
        return admin_pb2.ListApiKeysResponse(
            keys=[
                admin_pb2.ApiKey(
                    key_id=k.key_id,
                    name=k.name,
                    role=_ROLE_OF[k.role],
                    created_at_ms=k.created_at_ms,
                    last_used_at_ms=max(k.last_used_at_ms, pending(k.key_id)),
                    revoked_at_ms=k.revoked_at_ms if k.revoked else 0,
                )
                for k in await tenants.api_keys(self._db, caller().tenant_id)
            ]
        )

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_pb2.RevokeApiKeyResponse:
        key_id = _id(request.key_id, "key_id")
        me = caller()
        if key_id == me.key_id:
            raise FailedPrecondition(
                "an API key cannot revoke itself; revoke it with another ADMIN key of the tenant"
            )
        found = await tenants.api_keys(self._db, me.tenant_id, key_id)
        if not found:
            raise NotFound(f"API key {key_id} does not exist in this tenant")
        if not found[0].revoked:
            # The directory applies the revocation to this process's identities at once; the
            # others read it at their next refresh (directory_refresh_s, a second by default).
            await self._directory.add_api_key(_revoked(found[0], self._clock.now_ms()))
        return admin_pb2.RevokeApiKeyResponse()

    async def RotateTenantKey(
        self, request: admin_pb2.RotateTenantKeyRequest, context: Context
    ) -> admin_pb2.RotateTenantKeyResponse:
        key_id = await self._keys.rotate(caller().tenant_id)
        return admin_pb2.RotateTenantKeyResponse(key_version=key_id)


def _revoked(key: tenants.StoredApiKey, now_ms: int) -> ApiKey:
    return ApiKey(
        tenant_id=key.tenant_id,
        key_id=key.key_id,
        name=key.name,
        role=key.role,
        token_hash=key.token_hash,
        created_at_ms=key.created_at_ms,
        revoked=True,
        revoked_at_ms=now_ms,
    )
