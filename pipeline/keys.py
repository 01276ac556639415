"""Per-tenant data keys: created wrapped by the master key, unwrapped once, cached as Keyrings.

A tenant's keys are its first one (id 1) and one per rotation. The newest (by creation) is
current, for new writes; every one is held for reading. All of them take their blind-index key
from the first key, so indexes do not change with a rotation. A rotation's key id is random,
not the next number: two processes rotating one tenant at the same moment could otherwise both
store "id 2", and the ciphertexts written under the key that lost would never open again.

A cached keyring is dropped (``forget``) when the tenant's keys change: rotated or destroyed in
this process at once, in another one at its next identity refresh (``Identities.on_key_change``).
"""

from __future__ import annotations

import asyncio
import secrets

from callsight.core.errors import NotFound
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key, unwrap_key, wrap_key
from callsight.storage.directory import Directory

FIRST_KEY_ID = 1
_MAX_KEY_ID = 2**32 - 1


class TenantKeys:
    """Hands out each tenant's Keyring, cached until the tenant's keys change."""

    def __init__(self, directory: Directory, master_key: bytes) -> None:
        self._directory = directory
        self._master_key = master_key
        self._keyrings: dict[str, Keyring] = {}
        self._lock = asyncio.Lock()
        # Bumped by forget: a load that began before it does not cache what it read.
        self._epoch = 0

    def create(self, tenant_id: str) -> tuple[int, bytes, Keyring]:
        """A new first data key for a tenant: (key id, wrapped key to store, keyring)."""
        data_key = new_data_key()
        wrapped = wrap_key(self._master_key, tenant_id, data_key)
        keyring = Keyring(TenantCipher(FIRST_KEY_ID, data_key))
        self._keyrings[tenant_id] = keyring
        return FIRST_KEY_ID, wrapped, keyring

    def forget(self, tenant_id: str) -> None:
        """Drops the tenant's cached keyring: the next ``keyring`` reads its keys again."""
        self._epoch += 1
        self._keyrings.pop(tenant_id, None)

    def cached(self, tenant_id: str) -> Keyring | None:
        """The tenant's keyring if it is in memory (no await: ingest asks once per batch)."""
        return self._keyrings.get(tenant_id)

    async def keyring(self, tenant_id: str) -> Keyring:
        """The tenant's keyring, newest key current; NotFound when the tenant has no key."""
        keyring = self._keyrings.get(tenant_id)
        if keyring is not None:
            return keyring
        async with self._lock:
            keyring = self._keyrings.get(tenant_id)
            if keyring is None:
                epoch = self._epoch
                keyring = _build(await self._unwrapped(tenant_id))
                if epoch == self._epoch:
                    self._keyrings[tenant_id] = keyring
            return keyring

    async def rotate(self, tenant_id: str) -> int:
        """Stores a new data key for the tenant, current from now on; returns its key id."""
        async with self._lock:
            keys = await self._unwrapped(tenant_id)
            taken = {FIRST_KEY_ID, *(k for k, _ in keys)}
            key_id = FIRST_KEY_ID
            while key_id in taken:
                key_id = 1 + secrets.randbelow(_MAX_KEY_ID)
            data_key = new_data_key()
            await self._directory.add_tenant_key(
                tenant_id, key_id, wrap_key(self._master_key, tenant_id, data_key)
            )
            self.forget(tenant_id)
            self._keyrings[tenant_id] = _build([*keys, (key_id, data_key)])
            return key_id

    async def _unwrapped(self, tenant_id: str) -> list[tuple[int, bytes]]:
        """(key id, data key) of the tenant's live keys, oldest first; NotFound when none."""
        stored = [(k, w) for k, w in await self._directory.tenant_keys(tenant_id) if w]
        if not stored:
            raise NotFound(f"tenant {tenant_id} has no data key (it does not exist or was deleted)")
        return [(k, unwrap_key(self._master_key, tenant_id, w)) for k, w in stored]


def _build(keys: list[tuple[int, bytes]]) -> Keyring:
    """The keyring of (key id, data key) pairs, oldest first: the newest is current."""
    index_key = dict(keys).get(FIRST_KEY_ID, keys[0][1])
    ciphers = [TenantCipher(k, data_key, index_key) for k, data_key in keys]
    return Keyring(ciphers[-1], ciphers[:-1])
