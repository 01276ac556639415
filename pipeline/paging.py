"""Opaque, tamper-evident page tokens for keyset pagination.

A token carries the report, a fingerprint of the caller's tenant and filter, the sort key of the
last row served and the snapshot instant of the first page, signed with HMAC-SHA256 under a key
derived from the master key. A token from another report, tenant or filter, or an edited one, is
refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from callsight.core.errors import InvalidArgument
from callsight.pipeline.limits import MAX_PAGE_TOKEN_BYTES

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_MAC_BYTES = 32
Row = TypeVar("Row")


@dataclass(frozen=True)
class Page:
    """Where a page starts: after ``cursor`` (None: first page), as of ``snapshot_ms``."""

    size: int
    snapshot_ms: int
    cursor: list[Any] | None = None


def page_size(requested: int) -> int:
    """The page size to serve: 0 means the default; more than the maximum is refused."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {requested} is over the maximum of {MAX_PAGE_SIZE}")
    return requested


def fingerprint(*parts: object) -> str:
    """A short digest of what a token is bound to (report, tenant, serialized filter)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


class PageTokens:
    """Signs and opens page tokens."""

    def __init__(self, master_key: bytes) -> None:
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"callsight/v1/page-token"
        ).derive(master_key)

    def issue(self, bound_to: str, cursor: list[Any], snapshot_ms: int) -> str:
        """A token for the page after ``cursor``."""
        body = json.dumps([bound_to, snapshot_ms, cursor], separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def open(self, token: str, bound_to: str, size: int, now_ms: int) -> Page:
        """The page a request asks for; a new snapshot when there is no token."""
        if not token:
            return Page(size=size, snapshot_ms=now_ms)
        if len(token) > MAX_PAGE_TOKEN_BYTES:
            raise InvalidArgument(
                f"page_token is {len(token)} characters; the limit is {MAX_PAGE_TOKEN_BYTES}:"
                " send the next_page_token of the previous page as it came"
            )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError as exc:
            raise InvalidArgument("page_token is not a token this server issued") from exc
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, expected):
            raise InvalidArgument("page_token is not a token this server issued, or was altered")
        token_bound_to, snapshot_ms, cursor = json.loads(body)
        if token_bound_to != bound_to:
            raise InvalidArgument(
                "page_token belongs to another report or filter; send the same filter as for the"
                " first page, or start again without a token"
            )
        return Page(size=size, snapshot_ms=int(snapshot_ms), cursor=list(cursor))


@dataclass(frozen=True)
class OpenedPage:
    """A page request checked against its token: the page, and what its tokens are bound to."""

    tokens: PageTokens
    page: Page
    bound_to: str

    def cut(
        self, rows: Sequence[Row], key_of: Callable[[Row], list[Any]]
    ) -> tuple[Sequence[Row], str]:
        """The page out of a read of one row more than it holds, and the next page's token.

        The token is empty on the last page; otherwise it resumes after the page's last row
        (``key_of``), from the first page's snapshot.
        """
        if len(rows) <= self.page.size:
            return rows, ""
        rows = rows[: self.page.size]
        return rows, self.tokens.issue(self.bound_to, key_of(rows[-1]), self.page.snapshot_ms)


def open_page(
    tokens: PageTokens,
    report: str,
    tenant_id: str,
    request_filter: bytes,
    size: int,
    token: str,
    now_ms: int,
) -> OpenedPage:
    """Checks a page request's size, then its token, bound to the report, the tenant and the
    serialized filter; a first page takes ``now_ms`` as its snapshot."""
    bound_to = fingerprint(report, tenant_id, request_filter)
    return OpenedPage(tokens, tokens.open(token, bound_to, page_size(size), now_ms), bound_to)
