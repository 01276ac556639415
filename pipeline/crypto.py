"""Per-tenant keys and field encryption for phone numbers, names and notes.

Each tenant has a 32-byte data key, stored only wrapped (AES-256-GCM) under the master key with
the tenant id as associated data, so a wrapped key cannot be moved to another tenant. Deleting a
tenant's wrapped key makes every ciphertext of that tenant unreadable (crypto-shredding).

From the data key, HKDF-SHA256 derives two independent subkeys:

* an AEAD key. A field encrypts to ``0x01 | key id (uint32, big-endian) | 12-byte nonce |
  ciphertext || 16-byte tag``; the 5-byte header is authenticated as associated data. The key id
  lets a ``Keyring`` pick the right key after rotation. The nonce is random, so equal plaintexts
  give different ciphertexts; rotate a key well before 2**32 encryptions under it.
* a blind-index key. ``blind_index`` is the full 32-byte HMAC-SHA256 of a normalised number: equal
  numbers give equal indexes, so ClickHouse can group and join on them without the plaintext.
  Its key comes from the tenant's first data key (``index_key``), not the current one, so
  indexes stay equal across a key rotation: dedup, reports and erasure keep matching old rows.
  ``name_keys`` uses the same key for a 32-bit keyed hash of a name (domain-separated from
  numbers), so equal names of one client share a key without their plaintext.

The empty string encrypts to ``b""``: empty names and notes cost nothing, and whether a field is
empty is not treated as secret.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from callsight.core.errors import CallsightError

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
VERSION = 0x01

_HEADER = struct.Struct(">BI")  # version byte, key id
_HEADER_LEN = _HEADER.size
_MIN_BLOB_LEN = _HEADER_LEN + NONCE_LEN + TAG_LEN
_MAX_KEY_ID = 2**32 - 1
_AEAD_INFO = b"callsight/v1/aead"
_BLIND_INDEX_INFO = b"callsight/v1/blind-index"
# Derived from the blind-index key: the key devices hash numbers under (device policies).
_MATCH_INFO = b"callsight/v1/device-match"
# Prefixed to a name before it is hashed: no normalised number contains a NUL, so a name's
# hash can never equal a number's blind index.
_NAME_DOMAIN = b"name\x00"


class KeyUnwrapError(CallsightError):
    """A wrapped data key does not open: wrong master key, wrong tenant, or tampered bytes."""


class DecryptError(CallsightError):
    """A ciphertext does not decrypt; ``key_id`` is the id in its header when it has one."""

    def __init__(self, message: str, key_id: int | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


def _check_key(name: str, key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"{name} must be {KEY_LEN} bytes, got {len(key)}")


def new_data_key() -> bytes:
    """Return a fresh random 32-byte data key."""
    return os.urandom(KEY_LEN)


def wrap_key(master_key: bytes, tenant_id: str, data_key: bytes) -> bytes:
    """Encrypt ``data_key`` under ``master_key``, bound to ``tenant_id``.

    The result is ``nonce || ciphertext || tag`` (60 bytes).
    """
    _check_key("master key", master_key)
    _check_key("data key", data_key)
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(master_key).encrypt(nonce, data_key, tenant_id.encode())


def unwrap_key(master_key: bytes, tenant_id: str, wrapped: bytes) -> bytes:
    """Inverse of ``wrap_key``; raises KeyUnwrapError if the key does not open for this tenant."""
    _check_key("master key", master_key)
    if len(wrapped) != NONCE_LEN + KEY_LEN + TAG_LEN:
        raise KeyUnwrapError(
            f"wrapped key of tenant {tenant_id!r} has {len(wrapped)} bytes, "
            f"expected {NONCE_LEN + KEY_LEN + TAG_LEN}"
        )
    nonce, body = wrapped[:NONCE_LEN], wrapped[NONCE_LEN:]
    try:
        return AESGCM(master_key).decrypt(nonce, body, tenant_id.encode())
    except InvalidTag:
        raise KeyUnwrapError(
            f"cannot unwrap the data key of tenant {tenant_id!r}: "
            "wrong master key, key wrapped for another tenant, or tampered bytes"
        ) from None


def key_id_of(blob: bytes) -> int:
    """Return the key id in the header of a non-empty ciphertext."""
    if len(blob) < _HEADER_LEN:
        raise DecryptError(f"ciphertext of {len(blob)} bytes has no header")
    version, key_id = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise DecryptError(f"unsupported ciphertext version {version}", key_id)
    return int(key_id)


class TenantCipher:
    """Encrypts fields and computes blind indexes under one tenant data key."""

    __slots__ = ("_aead", "_aead_key", "_blind_key", "_header", "_key_id")

    def __init__(self, key_id: int, data_key: bytes, index_key: bytes | None = None) -> None:
        """``index_key``: the data key the blind-index key derives from (the tenant's first
        data key, so that indexes survive rotation); ``data_key`` when not given."""
        if not 0 <= key_id <= _MAX_KEY_ID:
            raise ValueError(f"key id must fit in an unsigned 32-bit integer, got {key_id}")
        _check_key("data key", data_key)
        if index_key is not None:
            _check_key("index key", index_key)
        self._set_keys(
            key_id, _derive(data_key, _AEAD_INFO), _derive(index_key or data_key, _BLIND_INDEX_INFO)
        )

    def _set_keys(self, key_id: int, aead_key: bytes, blind_key: bytes) -> None:
        self._key_id = key_id
        self._header = _HEADER.pack(VERSION, key_id)
        self._aead_key = aead_key
        self._aead = AESGCM(aead_key)
        self._blind_key = blind_key

    def derived_keys(self) -> tuple[int, bytes, bytes]:
        """(key id, AEAD key, blind-index key): what ``from_derived_keys`` rebuilds the cipher
        from. Only for handing the cipher to a decode worker process of this server
        (``pipeline.decode_pool``); the tenant's data key itself is not among them."""
        return self._key_id, self._aead_key, self._blind_key

    @classmethod
    def from_derived_keys(cls, key_id: int, aead_key: bytes, blind_key: bytes) -> TenantCipher:
        """The cipher ``derived_keys`` describes."""
        _check_key("AEAD key", aead_key)
        _check_key("blind-index key", blind_key)
        cipher = cls.__new__(cls)
        cipher._set_keys(key_id, aead_key, blind_key)
        return cipher

    @property
    def key_id(self) -> int:
        """The id written into every ciphertext's header."""
        return self._key_id

    def __repr__(self) -> str:
        return f"TenantCipher(key_id={self._key_id})"

    def encrypt(self, plaintext: str) -> bytes:
        """Encrypt one field; ``""`` gives ``b""``."""
        if not plaintext:
            return b""
        nonce = os.urandom(NONCE_LEN)
        header = self._header
        return header + nonce + self._aead.encrypt(nonce, plaintext.encode(), header)

    def encrypt_many(self, plaintexts: Sequence[str]) -> list[bytes]:
        """Encrypt a column of fields."""
        aead_encrypt = self._aead.encrypt
        header = self._header
        # One urandom call for the whole column instead of one per field.
        nonces = os.urandom(NONCE_LEN * len(plaintexts))
        out: list[bytes] = []
        append = out.append
        for i, plaintext in enumerate(plaintexts):
            if not plaintext:
                append(b"")
                continue
            nonce = nonces[i * NONCE_LEN : (i + 1) * NONCE_LEN]
            append(header + nonce + aead_encrypt(nonce, plaintext.encode(), header))
        return out

    def decrypt(self, blob: bytes) -> str:
        """Decrypt one field; raises DecryptError on a foreign key id, bad version or tampering."""
        if not blob:
            return ""
        key_id = key_id_of(blob)
        if key_id != self._key_id:
            raise DecryptError(
                f"ciphertext is under key id {key_id}, this cipher holds key id {self._key_id}",
                key_id,
            )
        if len(blob) < _MIN_BLOB_LEN:
            raise DecryptError(f"ciphertext of {len(blob)} bytes is truncated", key_id)
        nonce = blob[_HEADER_LEN : _HEADER_LEN + NONCE_LEN]
        try:
            plaintext = self._aead.decrypt(nonce, blob[_HEADER_LEN + NONCE_LEN :], self._header)
        except InvalidTag:
            raise DecryptError(
                f"ciphertext under key id {key_id} failed authentication: wrong key or tampered",
                key_id,
            ) from None
        # Authentic bytes came from str.encode() in encrypt, so they decode.
        return plaintext.decode()

    def decrypt_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Decrypt a column of fields; raises DecryptError on the first one that fails."""
        decrypt = self.decrypt
        return [decrypt(blob) for blob in blobs]

    def blind_index(self, e164: str) -> bytes:
        """Return the 32-byte HMAC-SHA256 of a normalised number, for grouping and joins."""
        return hmac.digest(self._blind_key, e164.encode(), "sha256")

    def match_key(self) -> bytes:
        """The key of a device policy's never-upload hashes: HKDF of the blind-index key under
        its own label, so handing it to devices reveals neither that key nor any index."""
        return _derive(self._blind_key, _MATCH_INFO)

    def blind_index_many(self, values: Sequence[str]) -> list[bytes]:
        """Blind-index a column of normalised numbers."""
        key = self._blind_key
        digest = hmac.digest
        return [digest(key, value.encode(), "sha256") for value in values]

    def name_keys(self, names: Sequence[str]) -> list[int]:
        """A 32-bit keyed hash of each name, never 0; ``""`` gives 0 (no name).

        The first 4 bytes, little-endian, of the HMAC-SHA256 of the domain-separated name under
        the blind-index key: equal names of a tenant get equal keys, for joins without the name.
        """
        key = self._blind_key
        digest = hmac.digest
        out = []
        for name in names:
            if not name:
                out.append(0)
                continue
            value = int.from_bytes(
                digest(key, _NAME_DOMAIN + name.encode(), "sha256")[:4], "little"
            )
            out.append(value or 1)
        return out


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=KEY_LEN, salt=None, info=info).derive(data_key)


class Keyring:
    """A tenant's current cipher plus older ones, so data written before a rotation decrypts."""

    __slots__ = ("_by_id", "_current")

    def __init__(self, current: TenantCipher, older: Iterable[TenantCipher] = ()) -> None:
        self._current = current
        self._by_id = {current.key_id: current}
        for cipher in older:
            if cipher.key_id in self._by_id:
                raise ValueError(f"key id {cipher.key_id} appears twice in the keyring")
            self._by_id[cipher.key_id] = cipher

    @property
    def current(self) -> TenantCipher:
        """The cipher new data is written with."""
        return self._current

    def __repr__(self) -> str:
        return f"Keyring(current={self._current.key_id}, key_ids={sorted(self._by_id)})"

    def encrypt(self, plaintext: str) -> bytes:
        """Encrypt under the current key."""
        return self._current.encrypt(plaintext)

    def blind_index(self, e164: str) -> bytes:
        """Blind-index under the current key."""
        return self._current.blind_index(e164)

    def decrypt(self, blob: bytes) -> str:
        """Decrypt with whichever key the blob's header names; DecryptError if it is not held."""
        if not blob:
            return ""
        key_id = key_id_of(blob)
        cipher = self._by_id.get(key_id)
        if cipher is None:
            raise DecryptError(f"no key with id {key_id} in this keyring", key_id)
        return cipher.decrypt(blob)
