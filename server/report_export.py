"""ReportService.ExportCalls and WatchSummary (issue 13): every call in bulk, and live totals.

ExportCalls walks the filtered calls in (started_at, device_id, call_id) order in keyset chunks
(``storage/export.py``), each read under the tenant's report quota on the report database, and
streams them as Arrow IPC or CSV (``server/export_chunks.py``). Numbers and names are decrypted
once per distinct client and (client, name) of the export, kept as Arrow arrays and put in place
with Arrow's ``index_in`` and ``take``, no Python work per row; notes and recording URIs only
where they are set. ADMIN keys get them; REPORTS keys get only ``client``, the hex client key,
a pseudonym stable within a tenant.

WatchSummary holds a watcher of the process's ``WatchHub`` (``pipeline/watch.py``): the first
message holds the filter's totals and every employee's, later ones the totals and the employees
that changed, sent when the hub publishes the watcher's counter set (at most twice a second).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
import pyarrow as pa
import pyarrow.compute as pc

from callsight.core.clock import Clock
from callsight.core.errors import InvalidArgument, Unavailable
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import PRIVATE_NUMBER
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.paging import PageTokens
from callsight.pipeline.watch import Loaded, WatchFilter, WatchHub
from callsight.server.auth import caller_tenant, current_caller
from callsight.server.export_chunks import (
    Rows,
    chunk_rows,
    export_format,
    malformed,
    open_export,
    stream,
)
from callsight.server.filters import DAY_MS, call_filter
from callsight.server.report_call import bounded
from callsight.server.report_quota import ReportQuota
from callsight.storage import export, summaries
from callsight.storage.database import Database
from callsight.storage.directory import Directory, Tenant
from callsight.storage.filters import CallFilter
from callsight.storage.rollups import Rollups
from callsight.v1 import report_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Decrypted parties an export remembers between chunks before starting over.
MAX_CACHED_PARTIES = 500_000
# A watch's totals re-read per employee, a page at a time.
_EMPLOYEE_PAGE = 1000
# The columns of an exported call, in order; the last four only for ADMIN keys.
CALL_COLUMNS = (
    "call_id",
    "device_id",
    "employee_id",
    "client",
    "number",
    "name",
    "type",
    "started_at",
    "duration_s",
    "synced_at",
    "sim_slot",
    "presentation",
    "method",
    "mode",
    "lead_id",
    "note",
    "recording_uri",
)
_SEALED_ONLY = {"number", "name", "note", "recording_uri"}


async def export_filter(
    request: report_pb2.ReportFilter, tenant: Tenant, directory: Directory, snapshot_ms: int
) -> CallFilter:
    """A report filter for an export: any range (unset: from the beginning, to the snapshot and
    the day after it, for clocks ahead); every other field as for reports."""
    probe = report_pb2.ReportFilter()
    probe.CopyFrom(request)
    probe.from_ms = probe.to_ms = 0  # checked here instead: no cap on the length
    f = await call_filter(probe, tenant, directory, snapshot_ms)
    from_ms, to_ms = request.from_ms, request.to_ms or snapshot_ms + DAY_MS
    if from_ms < 0:
        raise InvalidArgument("filter.from_ms must not be negative")
    if to_ms <= from_ms:
        raise InvalidArgument(
            f"filter range is empty or reversed (from_ms {from_ms} >= to_ms {to_ms});"
            " from_ms must be before to_ms"
        )
    return replace(f, from_ms=from_ms, to_ms=to_ms)


def _call_key(cursor: list[Any] | None) -> export.CallKey | None:
    if cursor is None:
        return None
    match cursor:
        case [int(started_at_ms), str(device_id), str(call_id)]:
            return export.CallKey(started_at_ms, device_id, call_id)
    raise malformed()


class _Parties:
    """Numbers and names an export decrypted, as Arrow arrays looked up with ``index_in``:
    client ``i`` (``client_keys[i]``) has ``numbers[i]``; pair ``j`` (``pairs[j]``, the client's
    index times 2**32 plus the name key) has ``names[j]``."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.clear()

    def clear(self) -> None:
        self.client_keys = pa.array([], pa.uint64())
        self.numbers = pa.array([], pa.string())
        self.pairs = pa.array([], pa.uint64())
        self.names = pa.array([], pa.string())

    def missing(self, client_keys: pa.ChunkedArray) -> pa.Array:
        """The distinct keys of ``client_keys`` not decrypted yet."""
        distinct = pc.unique(client_keys.combine_chunks())
        return distinct.filter(pc.invert(pc.is_in(distinct, value_set=self.client_keys)))

    def add(self, found: pa.Table, wanted: pa.Array) -> None:
        """Decrypts the party rows ``found`` of the client keys ``wanted`` (a key without one
        gets an empty number)."""
        if len(self.client_keys) + len(wanted) > MAX_CACHED_PARTIES:
            self.clear()
        decrypt = self.keyring.decrypt
        # Every party row of a key holds the same number: the first one's is decrypted.
        first = pc.index_in(wanted, value_set=found.column("client_key").combine_chunks())
        sealed = found.column("number_enc").take(first).to_pylist()
        numbers = pa.array([decrypt(blob or b"") for blob in sealed], pa.string())
        at = pc.index_in(found.column("client_key"), value_set=wanted)
        base = pa.scalar(len(self.client_keys), pa.uint64())
        pairs = _pair_keys(pc.add(pc.cast(at, pa.uint64()), base), found)
        names = pa.array([decrypt(b) for b in found.column("name_enc").to_pylist()], pa.string())
        self.client_keys = pa.concat_arrays([self.client_keys, wanted.cast(pa.uint64())])
        self.numbers = pa.concat_arrays([self.numbers, numbers])
        self.pairs = pa.concat_arrays([self.pairs, pairs.combine_chunks()])
        self.names = pa.concat_arrays([self.names, names])

    def shown(self, rows: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        """The number and name of each row ("" where no party row has them)."""
        client = pc.index_in(rows.column("client_key"), value_set=self.client_keys)
        numbers = pc.fill_null(self.numbers.take(client), "")
        pair = pc.index_in(_pair_keys(pc.cast(client, pa.uint64()), rows), value_set=self.pairs)
        return numbers, pc.fill_null(self.names.take(pair), "")


def _pair_keys(client_at: Any, rows: pa.Table) -> pa.ChunkedArray:
    # One uint64 per (client index, name key): the index takes the high 32 bits (the cache holds
    # far fewer than 2**32 clients), the name key the low ones.
    return pc.bit_wise_or(
        pc.shift_left(client_at, pa.scalar(32, pa.uint64())),
        pc.cast(rows.column("name_key"), pa.uint64()),
    )


def _decrypted(column: pa.ChunkedArray, keyring: Keyring) -> pa.Array:
    # Mostly empty (notes, recording URIs): only the set values are decrypted, then put in place.
    column = column.combine_chunks()
    filled = pc.fill_null(pc.greater(pc.binary_length(column), 0), False)
    decrypt = keyring.decrypt
    plain = pa.array([decrypt(blob) for blob in column.filter(filled).to_pylist()], pa.string())
    nothing = pa.nulls(len(column), pa.string())
    return pc.fill_null(pc.replace_with_mask(nothing, filled, plain), "")


def shown_calls(rows: pa.Table, known: _Parties | None) -> pa.Table:
    """Read rows as exported: numbers, names, notes and recording URIs decrypted (``known``,
    ADMIN) or left out (None); a hidden caller's number is "private" and has no name."""
    columns: dict[str, Any] = {name: rows.column(name) for name in rows.column_names}
    if known is not None:
        numbers, names = known.shown(rows)
        shown = pc.equal(rows.column("presentation"), "ALLOWED")
        columns["number"] = pc.if_else(shown, numbers, PRIVATE_NUMBER)
        columns["name"] = pc.if_else(shown, names, "")
        columns["note"] = _decrypted(rows.column("note_enc"), known.keyring)
        columns["recording_uri"] = _decrypted(rows.column("recording_uri_enc"), known.keyring)
    names_out = [n for n in CALL_COLUMNS if known is not None or n not in _SEALED_ONLY]
    return pa.table({name: columns[name] for name in names_out})


def watch_filter(f: CallFilter, from_ms: int) -> WatchFilter:
    """The fields of a validated filter a watch applies."""
    return WatchFilter(
        tenant_id=f.tenant_id,
        from_ms=from_ms,
        timezone=f.timezone,
        employee_ids=f.employee_ids,
        call_types=f.call_types,
        include_excluded=f.include_excluded,
    )


class WatchLoader:
    """Reads a watched filter's totals like CallSummary and EmployeeSummary, on the report
    database."""

    def __init__(self, db: Database, rollups: Rollups, clock: Clock) -> None:
        self._db = db
        self._rollups = rollups
        self._clock = clock

    def call_filter(self, f: WatchFilter) -> CallFilter:
        """The filter as reports read it, open-ended from now."""
        return CallFilter(
            tenant_id=f.tenant_id,
            from_ms=f.from_ms,
            to_ms=self._clock.now_ms() + DAY_MS,
            timezone=f.timezone,
            employee_ids=f.employee_ids,
            call_types=f.call_types,
            include_excluded=f.include_excluded,
        )

    async def __call__(self, f: WatchFilter) -> Loaded:
        calls = self.call_filter(f)
        totals = await summaries.call_summary(self._db, calls, rollups=self._rollups)
        employees: dict[str, summaries.Totals] = {}
        after: str | None = None
        while True:
            page = await summaries.employee_summary(
                self._db, calls, calls.to_ms, after, _EMPLOYEE_PAGE
            )
            employees.update((r.employee_id, r.totals) for r in page)
            if len(page) < _EMPLOYEE_PAGE:
                return Loaded(totals, employees)
            after = page[-1].employee_id


class ExportReport:
    """ExportCalls and WatchSummary, mixed into the ReportService servicer."""

    _db: Database
    _directory: Directory
    _keys: TenantKeys
    _tokens: PageTokens
    _quota: ReportQuota
    _clock: Clock
    _watch: WatchHub | None

    async def ExportCalls(
        self, request: report_pb2.ExportCallsRequest, context: Context
    ) -> AsyncIterator[Any]:
        caller = current_caller()
        tenant_id = caller.tenant_id
        limit = chunk_rows(request.chunk_rows)
        fmt = export_format(request.format)
        tenant = await caller_tenant(self._directory)
        bound = request.filter.SerializeToString(deterministic=True) + fmt.encode()
        resume = open_export(
            self._tokens,
            "ExportCalls",
            tenant_id,
            bound,
            request.resume_token,
            self._clock.now_ms(),
        )
        f = await export_filter(request.filter, tenant, self._directory, resume.snapshot_ms)
        sealed = caller.role == "ADMIN"
        known = _Parties(await self._keys.keyring(tenant_id)) if sealed else None
        walk = export.call_range(f, resume.snapshot_ms, sealed)
        window = export.FIRST_WINDOW_MS
        db = self._db

        async def fetch(cursor: list[Any] | None) -> Rows:
            nonlocal window
            after = _call_key(cursor)

            async def read() -> tuple[export.CallChunk, pa.Table | None, pa.Array | None]:
                # A read holds more rows than a message may (READ_ROWS): fewer, cheaper queries.
                chunk = await export.calls_chunk(db, walk, after, export.READ_ROWS, window)
                if known is None or not chunk.rows.num_rows:
                    return chunk, None, None
                wanted = known.missing(chunk.rows.column("client_key"))
                if not len(wanted):
                    return chunk, None, None
                return chunk, await export.call_parties(db, tenant_id, wanted), wanted

            chunk, found, wanted = await bounded(self._quota, db, tenant_id, read)
            window = chunk.next_window_ms

            def show() -> pa.Table:
                if known is not None and found is not None and wanted is not None:
                    known.add(found, wanted)
                return shown_calls(chunk.rows, known)

            table = await asyncio.to_thread(show)
            started = pc.cast(table.column("started_at"), pa.int64())
            devices, calls = table.column("device_id"), table.column("call_id")
            return Rows(
                table,
                lambda i: [started[i].as_py(), devices[i].as_py(), calls[i].as_py()],
                chunk.last,
            )

        if resume.cursor is not None:
            _call_key(resume.cursor)  # a malformed cursor fails before anything is read
        async for message in stream(self._tokens, resume, fmt, fetch, limit):
            yield message

    async def WatchSummary(
        self, request: report_pb2.WatchSummaryRequest, context: Context
    ) -> AsyncIterator[Any]:
        hub = self._watch
        if hub is None:
            raise Unavailable("live totals are not enabled on this server")
        tenant = await caller_tenant(self._directory)
        now_ms = self._clock.now_ms()
        probe = report_pb2.ReportFilter(
            employee_ids=request.filter.employee_ids,
            employee_tags=request.filter.employee_tags,
            call_types=request.filter.call_types,
            include_excluded_numbers=request.filter.include_excluded_numbers,
            timezone=request.filter.timezone,
        )
        f = await call_filter(probe, tenant, self._directory, now_ms)
        if request.filter.from_ms < 0:
            raise InvalidArgument("filter.from_ms must not be negative")
        watched = watch_filter(f, request.filter.from_ms)
        async with hub.watch(watched) as watcher:
            while True:
                # The hub paces the publishes; changes published while a write waited on a slow
                # client go out together in the next update.
                yield watcher.update()
                await watcher.changed.wait()
