"""Per-tenant data keys: created wrapped by the master key, unwrapped once, cached as Keyrings."""

from __future__ import annotations

import asyncio

from callsight.core.errors import NotFound
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key, unwrap_key, wrap_key
from callsight.storage.directory import Directory

FIRST_KEY_ID = 1


class TenantKeys:
    """Hands out each tenant's Keyring; keys are immutable, so the cache needs no expiry."""

    def __init__(self, directory: Directory, master_key: bytes) -> None:
        self._directory = directory
        self._master_key = master_key
        self._keyrings: dict[str, Keyring] = {}
        self._lock = asyncio.Lock()

    def create(self, tenant_id: str) -> tuple[int, bytes, Keyring]:
        """A new first data key for a tenant: (key id, wrapped key to store, keyring)."""
        data_key = new_data_key()
        wrapped = wrap_key(self._master_key, tenant_id, data_key)
        keyring = Keyring(TenantCipher(FIRST_KEY_ID, data_key))
        self._keyrings[tenant_id] = keyring
        return FIRST_KEY_ID, wrapped, keyring

    async def keyring(self, tenant_id: str) -> Keyring:
        """The tenant's keyring, newest key current; NotFound when the tenant has no key."""
        keyring = self._keyrings.get(tenant_id)
        if keyring is not None:
            return keyring
        async with self._lock:
            keyring = self._keyrings.get(tenant_id)
            if keyring is None:
                stored = await self._directory.tenant_keys(tenant_id)
                if not stored:
                    raise NotFound(f"tenant {tenant_id} has no data key")
                ciphers = [
                    TenantCipher(key_id, unwrap_key(self._master_key, tenant_id, wrapped))
                    for key_id, wrapped in stored
                ]
                keyring = Keyring(ciphers[-1], ciphers[:-1])
                self._keyrings[tenant_id] = keyring
            return keyring
