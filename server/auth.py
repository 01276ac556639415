"""Who is calling: bearer tokens, their hashes, and the access rule of every RPC.

Tokens are 256-bit random secrets prefixed with a public id so that the record can be found
without the secret: ``csk_<key_id>_<secret>`` (API keys), ``csd_<device_id>_<secret>`` (devices),
``cse_<enrollment_id>_<secret>`` (enrollment codes). Only an HMAC-SHA256 of each token, keyed by a
key derived from the master key, is stored, and hashes are compared in constant time. The operator
token comes from the configuration.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from callsight.core.errors import NotFound, PermissionDenied, Unauthenticated
from callsight.storage.directory import Directory, Tenant
from callsight.storage.identities import Identities
from callsight.storage.tenants import KeyUses

if TYPE_CHECKING:
    from callsight.server.operator import OperatorTokens

API_KEY_PREFIX = "csk"
DEVICE_PREFIX = "csd"
ENROLLMENT_PREFIX = "cse"
# Tokens are "prefix_<32 hex>_<43 urlsafe>" (85 characters); anything far longer is garbage.
MAX_TOKEN_CHARS = 128
_PUBLIC_ID = re.compile(r"[0-9a-f]{32}")


class Access(Enum):
    """Who may call an RPC."""

    PUBLIC = "public"
    OPERATOR = "operator"
    ADMIN = "admin"
    REPORTS = "reports"
    DEVICE = "device"


_ADMIN = "/callsight.v1.AdminService/"
_INGEST = "/callsight.v1.IngestService/"
_REPORT = "/callsight.v1.ReportService/"


_OPERATOR_METHODS = frozenset(
    _ADMIN + name for name in ("CreateTenant", "ListTenants", "DeleteTenant")
)


def access_for(method: str) -> Access | None:
    """The rule for a full method name; None for services outside callsight (health, reflection)."""
    if method in _OPERATOR_METHODS:
        return Access.OPERATOR
    if method.startswith(_ADMIN):
        return Access.ADMIN
    if method.startswith(_REPORT):
        return Access.REPORTS
    if method == _INGEST + "RegisterDevice":
        return Access.PUBLIC
    if method.startswith(_INGEST):
        return Access.DEVICE
    return None


@dataclass(frozen=True)
class Caller:
    """The authenticated identity of an RPC; servicers take the tenant from here, not a request."""

    kind: Access
    tenant_id: str = ""
    role: str = ""
    key_id: str = ""
    device_id: str = ""
    employee_id: str = ""


ANONYMOUS = Caller(Access.PUBLIC)

_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being served."""
    return _current.get()


async def caller_tenant(directory: Directory) -> Tenant:
    """The caller's tenant; NotFound once it has been deleted."""
    tenant = await directory.tenant(current_caller().tenant_id)
    if tenant is None:
        raise NotFound("the caller's tenant no longer exists")
    return tenant


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    """Binds ``caller`` to the running RPC (the interceptor does this)."""
    return _current.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    """Undoes ``set_caller``; nothing to undo where the RPC's context is already gone (a
    response stream closed by asyncio's finaliser runs in a context of its own)."""
    with contextlib.suppress(ValueError):
        _current.reset(token)


class TokenHasher:
    """Issues tokens and hashes them with a key only the server knows."""

    def __init__(self, master_key: bytes) -> None:
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"callsight/v1/token-hash"
        ).derive(master_key)

    def hash(self, token: str) -> bytes:
        """HMAC-SHA256 of the token (32 bytes)."""
        return hmac.new(self._key, token.encode(), sha256).digest()

    def matches(self, token: str, stored_hash: bytes) -> bool:
        """Constant-time comparison of the token's hash with the stored one."""
        return hmac.compare_digest(self.hash(token), stored_hash)

    def issue(self, prefix: str, public_id: str) -> tuple[str, bytes]:
        """A new token for ``public_id`` and its hash."""
        token = f"{prefix}_{public_id}_{secrets.token_urlsafe(32)}"
        return token, self.hash(token)


def new_public_id() -> str:
    """A random identifier safe to show and log (128 bits, hex)."""
    return secrets.token_hex(16)


def split_token(token: str) -> tuple[str, str] | None:
    """(prefix, public id) of a callsight token, or None when it has not that shape: a public id
    of 32 hex digits (``new_public_id``) and at most ``MAX_TOKEN_CHARS`` in all. A malformed
    token is unknown at once, without waiting for the directory to catch up."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    parts = token.split("_", 2)
    if len(parts) != 3 or not _PUBLIC_ID.fullmatch(parts[1]) or not parts[2]:
        return None
    return parts[0], parts[1]


def bearer(metadata: dict[str, str]) -> str:
    """The token of an ``authorization: Bearer <token>`` header."""
    header = metadata.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()


class Authenticator:
    """Resolves bearer tokens to callers from the identity directory in memory.

    No call waits on a point query: a token whose id is in memory is checked there. An id not in
    memory may belong to a device or key created a moment ago by another process, so it waits
    for the directory's shared, rate-limited catch-up refresh once; after that it is unknown.
    A revocation in this process applies at once, one made by another process with the next
    refresh (about a second).
    """

    def __init__(
        self,
        identities: Identities,
        hasher: TokenHasher,
        operator: OperatorTokens | None,
        key_uses: KeyUses | None = None,
    ) -> None:
        """``key_uses`` records when each API key authenticates (ListApiKeys shows it)."""
        self._identities = identities
        self._hasher = hasher
        self._operator = operator
        self._key_uses = key_uses

    async def authenticate(self, access: Access, metadata: dict[str, str]) -> Caller:
        """The caller allowed to make an RPC with rule ``access``, or an auth error."""
        if access is Access.PUBLIC:
            return ANONYMOUS
        token = bearer(metadata)
        caller = await self._identify(token)
        _authorize(access, caller)
        return caller

    async def _identify(self, token: str) -> Caller:
        shape = split_token(token)
        if shape is not None and shape[0] == API_KEY_PREFIX:
            key_id = shape[1]
            key = await self._identities.find(lambda: self._identities.api_key(key_id))
            if key is None or key.revoked or not self._hasher.matches(token, key.token_hash):
                raise Unauthenticated("unknown or revoked API key")
            if self._key_uses is not None:
                self._key_uses.touch(key.tenant_id, key.key_id)
            return Caller(Access.ADMIN, tenant_id=key.tenant_id, role=key.role, key_id=key.key_id)
        if shape is not None and shape[0] == DEVICE_PREFIX:
            device_id = shape[1]
            device = await self._identities.find(lambda: self._identities.device(device_id))
            if device is None or not self._hasher.matches(token, device.token_hash):
                raise Unauthenticated("unknown device token; register the device again")
            if device.revoked:
                raise Unauthenticated("this device was revoked; enroll it again")
            return Caller(
                Access.DEVICE,
                tenant_id=device.tenant_id,
                device_id=device.device_id,
                employee_id=device.employee_id,
            )
        if self._operator is not None and self._operator.matches(token):
            return Caller(Access.OPERATOR)
        raise Unauthenticated("unknown token")


def _authorize(access: Access, caller: Caller) -> None:
    if access is Access.OPERATOR:
        if caller.kind is not Access.OPERATOR:
            raise PermissionDenied(
                "this RPC needs the operator token (CreateTenant, ListTenants, DeleteTenant)"
            )
    elif access is Access.ADMIN:
        if caller.kind is not Access.ADMIN or caller.role != "ADMIN":
            raise PermissionDenied("this RPC needs a tenant API key with role ROLE_ADMIN")
    elif access is Access.REPORTS:
        if caller.kind is not Access.ADMIN:
            raise PermissionDenied("reports need a tenant API key (ROLE_ADMIN or ROLE_REPORTS)")
    elif access is Access.DEVICE and caller.kind is not Access.DEVICE:
        raise PermissionDenied("ingestion needs a device token from RegisterDevice")
