"""What every report handler gets, resolved for the caller, and the one way reports are paged.

``ReportCall`` carries the caller's tenant, validated filter and keys, the database and the
service's rollups and page tokens. ``paged`` serves one page of any paged report: it checks the
page size and token (bound to the RPC, the tenant and the serialized filter), reads the calls as
of the first page's snapshot with an open range anchored there too, reads one row more than the
page holds to know whether another follows, and issues the next token. ``bounded`` runs any
report (paged or not) inside its tenant's quota and turns the report database's bounds into
errors that tell the caller to ask for less.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from callsight.core.errors import (
    CallsightError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    StorageError,
)
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.paging import Page, PageTokens, open_page
from callsight.server.filters import anchored
from callsight.server.report_quota import ReportQuota
from callsight.storage.database import Database
from callsight.storage.directory import Directory, Tenant
from callsight.storage.filters import CallFilter
from callsight.storage.rollups import Rollups
from callsight.v1 import report_pb2

Row = TypeVar("Row")
Cursor = TypeVar("Cursor")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ReportCall:
    """Everything a report handler needs, resolved for the caller at ``now_ms``."""

    tenant: Tenant
    filter: CallFilter
    keyring: Keyring
    db: Database
    directory: Directory
    tokens: PageTokens
    rollups: Rollups
    now_ms: int


class PagedRequest(Protocol):
    """What every paged report request carries."""

    @property
    def filter(self) -> report_pb2.ReportFilter: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


# A report's SQL for one page: (db, filter, snapshot_ms, cursor or None, limit) -> rows.
Fetch = Callable[[Database, CallFilter, int, Cursor | None, int], Awaitable[Sequence[Row]]]


async def paged(
    call: ReportCall,
    rpc: str,
    request: PagedRequest,
    fetch: Fetch[Cursor, Row],
    cursor_of: Callable[[Page], Cursor | None],
    key_of: Callable[[Row], list[Any]],
) -> tuple[Sequence[Row], str]:
    """One page of a paged report and the token of the next one (empty on the last page).

    Every page reads the calls received up to the first page's snapshot, over the range the
    first page had, so the pages of one walk form one consistent listing.
    """
    opened = open_page(
        call.tokens,
        rpc,
        call.tenant.tenant_id,
        request.filter.SerializeToString(deterministic=True),
        request.page_size,
        request.page_token,
        call.now_ms,
    )
    page = opened.page
    f = anchored(call.filter, request.filter, page.snapshot_ms)
    rows = await fetch(call.db, f, page.snapshot_ms, cursor_of(page), page.size + 1)
    return opened.cut(rows, key_of)


def malformed() -> InvalidArgument:
    """The error for a signed token whose cursor does not fit the report."""
    return InvalidArgument("page_token does not belong to this report; start without a token")


def text_cursor(page: Page) -> str | None:
    """A cursor of one string (an employee or lead id); None on the first page."""
    if page.cursor is None:
        return None
    if len(page.cursor) != 1 or not isinstance(page.cursor[0], str):
        raise malformed()
    return page.cursor[0]


# ClickHouse codes of a query stopped by the bounds the report database sets.
_MEMORY_LIMIT_EXCEEDED = 241
_TIMEOUT_EXCEEDED = (159, 160)  # TIMEOUT_EXCEEDED, TOO_SLOW


def bounded_error(exc: StorageError, settings: Mapping[str, Any]) -> CallsightError:
    """What a report stopped by the bounds in ``settings`` (the report database's ClickHouse
    settings) tells its caller; ``exc`` itself for any other error."""
    if exc.code == _MEMORY_LIMIT_EXCEEDED:
        limit = settings.get("max_memory_usage")
        size = f" ({_size(int(limit))})" if limit else ""
        return ResourceExhausted(
            f"the report needed more memory than one report may use{size}; ask for a shorter "
            "range or fewer employees, or split the range into several calls"
        )
    if exc.code in _TIMEOUT_EXCEEDED:
        limit = settings.get("max_execution_time")
        took = f" ({float(limit):g} s)" if limit else ""
        return DeadlineExceeded(
            f"the report ran longer than one report may{took}; ask for a shorter range or "
            "fewer employees, or split the range into several calls"
        )
    return exc


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


async def bounded(
    quota: ReportQuota, db: Database, tenant_id: str, report: Callable[[], Awaitable[Result]]
) -> Result:
    """Runs ``report`` inside the tenant's report quota on ``db`` (the report database); a
    query stopped by that database's bounds is told to ask for less (``bounded_error``)."""
    async with quota.admit(tenant_id):
        try:
            return await report()
        except StorageError as exc:
            stopped = bounded_error(exc, db.settings)
            if stopped is exc:
                raise
            raise stopped from exc
