"""ReportService.ExportCalls and WatchSummary (issue 13): every call in bulk, and live totals.

ExportCalls walks the filtered calls in (started_at, device_id, call_id) order in keyset chunks
(``storage/export.py``), each read under the tenant's report quota on the report database, and
streams them as Arrow IPC or CSV (``server/export_chunks.py``). Numbers and names are decrypted
once per distinct (client, name) of a chunk, remembered for the rest of the export, and put in
place with Arrow's ``take``; notes and recording URIs only where they are set. ADMIN keys get
them; REPORTS keys get only ``client``, the hex client key, a pseudonym stable within a tenant.

WatchSummary holds a watcher of the process's ``WatchHub`` (``pipeline/watch.py``): the first
message holds the filter's totals and every employee's, later ones the totals and the employees
that changed, at most two a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from typing import Any, TypeAlias

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from callsight.core.clock import Clock
from callsight.core.errors import InvalidArgument, NotFound, Unavailable
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import PRIVATE_NUMBER
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.paging import PageTokens
from callsight.pipeline.watch import Loaded, Update, WatchFilter, WatchHub
from callsight.server.auth import current_caller
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
from callsight.storage import export, parties, summaries
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
# The shortest gap between two updates of a watch: an ack waits at most this plus one hub tick
# (0.1 s) to be shown, inside the 1 s the issue asks for; 1 s gave p99 staleness over 1 s.
WATCH_INTERVAL_S = 0.5
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
    """Numbers and names an export decrypted, by client key and (client key, name key)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.numbers: dict[int, str] = {}
        self.names: dict[tuple[int, int], str] = {}

    def missing(self, client_keys: pa.ChunkedArray) -> list[int]:
        distinct = pc.unique(client_keys).to_numpy()
        return [k for k in distinct.tolist() if k not in self.numbers]

    def add(self, found: dict[int, parties.Party], wanted: list[int]) -> None:
        if len(self.numbers) + len(wanted) > MAX_CACHED_PARTIES:
            self.numbers.clear()
            self.names.clear()
        decrypt = self.keyring.decrypt
        for key in wanted:
            party = found.get(key, parties.NO_PARTY)
            self.numbers[key] = decrypt(party.number_enc)
            for name_key, name_enc in party.names_enc.items():
                self.names[(key, name_key)] = decrypt(name_enc)


def _decrypted(column: pa.ChunkedArray, keyring: Keyring) -> pa.Array:
    # Mostly empty (notes, recording URIs): only the set values are decrypted.
    n = len(column)
    filled = np.flatnonzero(pc.binary_length(column).to_numpy(zero_copy_only=False) > 0)
    if not len(filled):
        return pa.array([""] * n, pa.string())
    out = [""] * n
    values = column.take(pa.array(filled)).to_pylist()
    for i, blob in zip(filled.tolist(), values, strict=True):
        out[i] = keyring.decrypt(blob)
    return pa.array(out, pa.string())


def _distinct_pairs(
    keys: npt.NDArray[np.uint64], name_keys: npt.NDArray[np.uint32]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Where each distinct (client key, name key) pair first occurs in sorted order, and each
    row's pair number: np.unique's answer from two numeric sorts (np.unique on a structured
    array compares element by element and took a fifth of an export's time)."""
    order = np.lexsort((name_keys, keys))
    k, n = keys[order], name_keys[order]
    new = np.ones(len(order), dtype=np.bool_)
    new[1:] = (k[1:] != k[:-1]) | (n[1:] != n[:-1])
    inverse = np.empty(len(order), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def shown_calls(rows: pa.Table, known: _Parties | None) -> pa.Table:
    """Read rows as exported: numbers, names, notes and recording URIs decrypted (``known``,
    ADMIN) or left out (None); a hidden caller's number is "private" and has no name."""
    columns: dict[str, Any] = {name: rows.column(name) for name in rows.column_names}
    if known is not None:
        keys = rows.column("client_key").to_numpy()
        name_keys = rows.column("name_key").to_numpy()
        firsts, inverse = _distinct_pairs(keys, name_keys)
        numbers, names = [], []
        for client_key, name_key in zip(
            keys[firsts].tolist(), name_keys[firsts].tolist(), strict=True
        ):
            numbers.append(known.numbers.get(client_key, ""))
            names.append(known.names.get((client_key, name_key), ""))
        at = pa.array(inverse)
        shown = pc.equal(rows.column("presentation"), "ALLOWED")
        columns["number"] = pc.if_else(
            shown, pa.array(numbers, pa.string()).take(at), PRIVATE_NUMBER
        )
        columns["name"] = pc.if_else(shown, pa.array(names, pa.string()).take(at), "")
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


_SUMMARY_FIELDS = tuple(f.name for f in fields(summaries.Totals))


def _summary(totals: summaries.Totals) -> report_pb2.Summary:
    # Field by field: asdict() deep-copies, and 1,000 watchers made it most of the event loop's
    # time (py-spy: 275 of 655 samples of the loop thread).
    return report_pb2.Summary(**{name: getattr(totals, name) for name in _SUMMARY_FIELDS})


def _message(update: Update) -> report_pb2.WatchSummaryUpdate:
    return report_pb2.WatchSummaryUpdate(
        summary=_summary(update.totals),
        employees=[
            report_pb2.EmployeeDelta(employee_id=e, summary=_summary(t))
            for e, t in update.employees.items()
        ],
        as_of_ms=update.as_of_ms,
        newest_ack_ms=update.newest_ack_ms,
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

    async def _tenant(self, tenant_id: str) -> Tenant:
        tenant = await self._directory.tenant(tenant_id)
        if tenant is None:
            raise NotFound("the caller's tenant no longer exists")
        return tenant

    async def ExportCalls(
        self, request: report_pb2.ExportCallsRequest, context: Context
    ) -> AsyncIterator[Any]:
        caller = current_caller()
        tenant_id = caller.tenant_id
        limit = chunk_rows(request.chunk_rows)
        fmt = export_format(request.format)
        tenant = await self._tenant(tenant_id)
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

            async def read() -> tuple[export.CallChunk, dict[int, parties.Party], list[int]]:
                chunk = await export.calls_chunk(db, walk, after, limit, window)
                if known is None or not chunk.rows.num_rows:
                    return chunk, {}, []
                wanted = known.missing(chunk.rows.column("client_key"))
                return chunk, await parties.lookup(db, tenant_id, wanted), wanted

            chunk, found, wanted = await bounded(self._quota, db, tenant_id, read)
            window = chunk.next_window_ms

            def show() -> pa.Table:
                if known is not None:
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
        async for message in stream(self._tokens, resume, fmt, fetch):
            yield message

    async def WatchSummary(
        self, request: report_pb2.WatchSummaryRequest, context: Context
    ) -> AsyncIterator[Any]:
        hub = self._watch
        if hub is None:
            raise Unavailable("live totals are not enabled on this server")
        tenant = await self._tenant(current_caller().tenant_id)
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
            loop = asyncio.get_running_loop()
            sent_at = -1.0
            while True:
                # At most one update per WATCH_INTERVAL_S: changes in between go out together.
                wait_s = sent_at + WATCH_INTERVAL_S - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                sent_at = loop.time()
                yield _message(watcher.update())
                await watcher.changed.wait()
