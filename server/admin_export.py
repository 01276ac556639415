"""AdminService.ExportContacts and ExportLeads (issue 13): the tenant's contacts and leads in bulk.

Like ExportCalls (``server/report_export.py``): keyset chunks read under the tenant's report
quota on the report database, streamed as Arrow IPC or CSV with a resume token per chunk
(``server/export_chunks.py``). Everything is decrypted, so these are ADMIN-only (the service's
rule). Contacts come by (device_id, contact_id), leads by lead_id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from callsight.core.clock import Clock
from callsight.core.errors import Unavailable
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_FILTER_EMPLOYEE_IDS, MAX_ID_BYTES, check_count, check_text
from callsight.pipeline.paging import PageTokens
from callsight.server.auth import current_caller
from callsight.server.export_chunks import (
    Resume,
    Rows,
    chunk_rows,
    export_format,
    malformed,
    open_export,
    stream,
)
from callsight.server.report_call import bounded
from callsight.server.report_quota import ReportQuota
from callsight.storage import export, reads
from callsight.storage.database import Database
from callsight.v1 import admin_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True)
class ExportBounds:
    """Where admin exports read: the report database and quota, so that they never hold a
    thread an insert waits for."""

    db: Database
    quota: ReportQuota


def _employee_ids(values: Any) -> tuple[str, ...] | None:
    check_count(values, "employee_ids", MAX_FILTER_EMPLOYEE_IDS)
    for i, value in enumerate(values):
        check_text(value, f"employee_ids[{i}]", MAX_ID_BYTES)
    return tuple(sorted(set(values))) or None


def _decrypt(column: pa.ChunkedArray, keyring: Keyring) -> pa.Array:
    decrypt = keyring.decrypt
    return pa.array([decrypt(blob) for blob in column.to_pylist()], pa.string())


def _contacts(rows: pa.Table, keyring: Keyring) -> pa.Table:
    numbers = rows.column("numbers_enc").combine_chunks()
    decrypt = keyring.decrypt
    plain = [decrypt(blob) for blob in pc.list_flatten(numbers).to_pylist()]
    # A number the device sent that could not be read was stored as b"": left out.
    keep = np.array([bool(p) for p in plain], dtype=np.bool_)
    kept = np.concatenate([[0], np.cumsum(keep, dtype=np.int32)]).astype(np.int32)
    offsets = kept[numbers.offsets.to_numpy()]
    listed = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(plain, pa.string()).filter(pa.array(keep))
    )
    return pa.table(
        {
            "device_id": rows.column("device_id"),
            "employee_id": rows.column("employee_id"),
            "contact_id": rows.column("contact_id"),
            "name": _decrypt(rows.column("name_enc"), keyring),
            "numbers": listed,
            "updated_at": rows.column("updated_at"),
        }
    )


def _leads(rows: pa.Table, keyring: Keyring) -> pa.Table:
    columns: dict[str, Any] = {
        "lead_id": rows.column("lead_id"),
        "employee_id": rows.column("employee_id"),
    }
    for sealed in export.LEAD_SEALED:
        columns[sealed.removesuffix("_enc")] = _decrypt(rows.column(sealed), keyring)
    for name in ("state", "country", "tags", "created_at"):
        columns[name] = rows.column(name)
    table = pa.table(columns)
    return table.rename_columns(
        [
            {"primary": "primary_number", "secondary": "secondary_number"}.get(n, n)
            for n in table.column_names
        ]
    )


class ExportAdmin:
    """ExportContacts and ExportLeads, mixed into the AdminService servicer."""

    _keys: TenantKeys
    _tokens: PageTokens
    _clock: Clock
    _exports: ExportBounds | None

    def _bounds(self) -> ExportBounds:
        if self._exports is None:
            raise Unavailable("exports are not enabled on this server")
        return self._exports

    async def _walk(
        self,
        rpc: str,
        request_key: bytes,
        token: str,
        fmt: str,
        read: Callable[[Database, str, Resume, list[Any] | None], Any],
        show: Callable[[pa.Table, Keyring], pa.Table],
        key_of: Callable[[pa.Table], Callable[[int], list[Any]]],
        limit: int,
    ) -> AsyncIterator[Any]:
        bounds = self._bounds()
        tenant_id = current_caller().tenant_id
        resume = open_export(
            self._tokens, rpc, tenant_id, request_key + fmt.encode(), token, self._clock.now_ms()
        )
        keyring = await self._keys.keyring(tenant_id)

        async def fetch(cursor: list[Any] | None) -> Rows:
            rows: pa.Table = await bounded(
                bounds.quota,
                bounds.db,
                tenant_id,
                lambda: read(bounds.db, tenant_id, resume, cursor),
            )
            table = await asyncio.to_thread(show, rows, keyring)
            return Rows(table, key_of(table), rows.num_rows < limit)

        async for message in stream(self._tokens, resume, fmt, fetch, limit):
            yield message

    async def ExportContacts(
        self, request: admin_pb2.ExportContactsRequest, context: Context
    ) -> AsyncIterator[Any]:
        limit = chunk_rows(request.chunk_rows)
        fmt = export_format(request.format)
        employee_ids = _employee_ids(request.employee_ids)
        key = admin_pb2.ExportContactsRequest(employee_ids=request.employee_ids)

        def cursor_of(cursor: list[Any] | None) -> reads.ContactKey | None:
            if cursor is None:
                return None
            match cursor:
                case [str(device_id), str(contact_id)]:
                    return reads.ContactKey(device_id, contact_id)
            raise malformed()

        async def read(
            db: Database, tenant_id: str, resume: Resume, cursor: list[Any] | None
        ) -> pa.Table:
            return await export.contacts_chunk(
                db, tenant_id, employee_ids, resume.snapshot_ms, cursor_of(cursor), limit
            )

        def key_of(table: pa.Table) -> Callable[[int], list[Any]]:
            devices, contacts = table.column("device_id"), table.column("contact_id")
            return lambda i: [devices[i].as_py(), contacts[i].as_py()]

        async for message in self._walk(
            "ExportContacts",
            key.SerializeToString(deterministic=True),
            request.resume_token,
            fmt,
            read,
            _contacts,
            key_of,
            limit,
        ):
            yield message

    async def ExportLeads(
        self, request: admin_pb2.ExportLeadsRequest, context: Context
    ) -> AsyncIterator[Any]:
        limit = chunk_rows(request.chunk_rows)
        fmt = export_format(request.format)
        employee_ids = _employee_ids(request.employee_ids)
        key = admin_pb2.ExportLeadsRequest(employee_ids=request.employee_ids)

        def cursor_of(cursor: list[Any] | None) -> str | None:
            if cursor is None:
                return None
            match cursor:
                case [str(lead_id)]:
                    return lead_id
            raise malformed()

        async def read(
            db: Database, tenant_id: str, resume: Resume, cursor: list[Any] | None
        ) -> pa.Table:
            return await export.leads_chunk(db, tenant_id, employee_ids, cursor_of(cursor), limit)

        def key_of(table: pa.Table) -> Callable[[int], list[Any]]:
            leads = table.column("lead_id")
            return lambda i: [leads[i].as_py()]

        async for message in self._walk(
            "ExportLeads",
            key.SerializeToString(deterministic=True),
            request.resume_token,
            fmt,
            read,
            _leads,
            key_of,
            limit,
        ):
            yield message
