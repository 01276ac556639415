"""ExportCalls, ExportContacts and ExportLeads end to end, through a real server.

Calls go in through a device's Upload; the exports come back as Arrow IPC or CSV chunks, read
with pyarrow and the csv module like a client would.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.ipc

from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration.helpers import (
    Metadata,
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
T = common_pb2
DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)
# Over the 400 days other reports allow.
OLD_MS = NOW_MS - 500 * DAY_MS
CALLS_PER_DEVICE = 450


@dataclass
class Dataset:
    tenant: Tenant
    reports: Metadata
    devices: list[str]
    # (started_at_ms, device_id, call_id) of every call, in export order.
    keys: list[tuple[int, str, str]]


def _calls(device: int) -> list[ingest_pb2.CallRecord]:
    records = []
    for i in range(CALLS_PER_DEVICE):
        # Two devices share start times, so ties are broken by device then call.
        started = (OLD_MS if i < 5 else NOW_MS - 3 * DAY_MS) + (i // 2) * 60_000
        records.append(
            ingest_pb2.CallRecord(
                call_id=f"c{i:04d}",
                number=f"+9198{device}{i % 40:07d}",
                name=f"Client {i % 40}",
                type=(T.CALL_TYPE_INCOMING, T.CALL_TYPE_OUTGOING, T.CALL_TYPE_MISSED)[i % 3],
                started_at_ms=started,
                duration_s=0 if i % 3 == 2 else 10 + i,
                note="called back" if i == 7 else "",
                presentation=T.NUMBER_PRESENTATION_RESTRICTED if i == 9 else 0,
            )
        )
    return records


async def _upload(channel: grpc.aio.Channel, token: str, seq: int, **payload: Any) -> None:
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        ingest_pb2.UploadRequest(seq=seq, batch_id=f"b{seq}", **payload), metadata=auth(token)
    )
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and ack.rejected == 0, ack


_DATASET: Dataset | None = None


async def dataset(channel: grpc.aio.Channel) -> Dataset:
    global _DATASET
    if _DATASET is not None:
        return _DATASET
    tenant = await new_tenant(channel)
    key = await admin_pb2_grpc.AdminServiceStub(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="bi", role=T.ROLE_REPORTS), metadata=tenant.admin
    )
    devices, keys = [], []
    for d in range(2):
        employee = await new_employee(channel, tenant, f"E{d}", f"+91970000000{d}")
        device = await enroll(channel, tenant, employee)
        devices.append(device.device_id)
        records = _calls(d)
        await _upload(
            channel, device.device_token, 1, calls=ingest_pb2.CallLogBatch(records=records)
        )
        keys += [(r.started_at_ms, device.device_id, r.call_id) for r in records]
    _DATASET = Dataset(tenant, auth(key.api_key), devices, sorted(keys))
    return _DATASET


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


def everything() -> report_pb2.ReportFilter:
    return report_pb2.ReportFilter(from_ms=0, to_ms=NOW_MS + DAY_MS)


async def export_calls(
    channel: grpc.aio.Channel, metadata: Metadata, **request: Any
) -> list[common_pb2.ExportChunk]:
    request.setdefault("filter", everything())
    call = reports(channel).ExportCalls(report_pb2.ExportCallsRequest(**request), metadata=metadata)
    return [chunk async for chunk in call]


def arrow(chunks: list[common_pb2.ExportChunk]) -> pa.Table:
    tables = [pyarrow.ipc.open_stream(c.data).read_all() for c in chunks]
    for table, chunk in zip(tables, chunks, strict=True):
        assert table.num_rows == chunk.rows
    return pa.concat_tables(tables)


def row_keys(table: pa.Table) -> list[tuple[int, str, str]]:
    started = [int(t.timestamp() * 1000) for t in table.column("started_at").to_pylist()]
    return list(
        zip(
            started,
            table.column("device_id").to_pylist(),
            table.column("call_id").to_pylist(),
            strict=True,
        )
    )


async def test_export_calls_streams_every_call_once_in_order(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    chunks = await export_calls(channel, data.tenant.admin, chunk_rows=100)
    assert len(chunks) == 9  # 900 calls, 100 a chunk
    assert [c.rows for c in chunks] == [100] * 9
    assert [c.rows_so_far for c in chunks] == [100 * (i + 1) for i in range(9)]
    assert [c.last for c in chunks] == [False] * 8 + [True]
    assert all(c.resume_token for c in chunks[:-1]) and chunks[-1].resume_token == ""
    table = arrow(chunks)
    # Every call exactly once, in (started_at, device_id, call_id) order, the old ones too.
    assert row_keys(table) == data.keys
    rows = {(r["device_id"], r["call_id"]): r for r in table.to_pylist()}
    first = rows[(data.devices[0], "c0001")]
    assert first["number"] == "+919800000001" and first["name"] == "Client 1"
    assert first["type"] == "OUTGOING" and first["duration_s"] == 11
    assert first["presentation"] == "ALLOWED" and first["method"] == "PHONE"
    assert rows[(data.devices[0], "c0007")]["note"] == "called back"
    hidden = rows[(data.devices[1], "c0009")]
    assert hidden["number"] == "private" and hidden["name"] == ""
    assert len(first["client"]) == 16


async def test_export_resumes_after_a_chunk_without_gaps_or_repeats(
    channel: grpc.aio.Channel,
) -> None:
    data = await dataset(channel)
    chunks = await export_calls(channel, data.tenant.admin, chunk_rows=100)
    resumed = await export_calls(
        channel, data.tenant.admin, chunk_rows=250, resume_token=chunks[2].resume_token
    )
    assert [c.rows_so_far for c in resumed] == [550, 800, 900]
    assert row_keys(arrow(chunks[:3])) + row_keys(arrow(resumed)) == data.keys


async def test_export_csv_has_a_header_then_the_rows(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    chunks = await export_calls(
        channel, data.tenant.admin, chunk_rows=400, format=T.EXPORT_FORMAT_CSV
    )
    assert [c.rows for c in chunks] == [400, 400, 100]
    text = b"".join(c.data for c in chunks).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 900
    assert list(rows[0])[:4] == ["call_id", "device_id", "employee_id", "client"]
    assert [(r["device_id"], r["call_id"]) for r in rows] == [(d, c) for _, d, c in data.keys]
    # Times in UTC to the millisecond, as Arrow writes them ("Z": the zone).
    assert [r["started_at"] for r in rows] == [_utc_text(ms) for ms, _, _ in data.keys]
    assert {r["number"] for r in rows if r["call_id"] == "c0001"} == {
        "+919800000001",
        "+919810000001",
    }
    # A resumed CSV export has no second header.
    resumed = await export_calls(
        channel,
        data.tenant.admin,
        chunk_rows=400,
        format=T.EXPORT_FORMAT_CSV,
        resume_token=chunks[0].resume_token,
    )
    assert not resumed[0].data.startswith(b'"call_id"')


def _utc_text(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"
    )


async def test_each_call_shows_its_own_name_for_a_shared_number(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Ravi", "+919700000011")
    device = await enroll(channel, tenant, employee)
    names = ["Asha", "Asha K", "", "Asha"]
    records = [
        ingest_pb2.CallRecord(
            call_id=f"n{i}",
            number="+919812345678",
            name=name,
            type=T.CALL_TYPE_INCOMING,
            started_at_ms=NOW_MS - DAY_MS + i * 60_000,
            duration_s=5,
            note="left a message" if i == 1 else "",
        )
        for i, name in enumerate(names)
    ]
    records.append(
        ingest_pb2.CallRecord(
            call_id="n4",
            number="+919887654321",
            name="Hidden",
            type=T.CALL_TYPE_MISSED,
            started_at_ms=NOW_MS - DAY_MS + 4 * 60_000,
            presentation=T.NUMBER_PRESENTATION_RESTRICTED,
        )
    )
    await _upload(channel, device.device_token, 1, calls=ingest_pb2.CallLogBatch(records=records))
    # One call a message, all from one read: names are found per (number, name), not per row.
    rows = arrow(await export_calls(channel, tenant.admin, chunk_rows=1)).to_pylist()
    assert [r["call_id"] for r in rows] == ["n0", "n1", "n2", "n3", "n4"]
    assert [r["name"] for r in rows] == [*names, ""]
    assert [r["number"] for r in rows] == ["+919812345678"] * 4 + ["private"]
    assert [r["note"] for r in rows] == ["", "left a message", "", "", ""]
    assert len({r["client"] for r in rows[:4]}) == 1 and rows[4]["client"] != rows[0]["client"]


async def test_reports_keys_get_client_keys_not_numbers(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    admin_rows = arrow(await export_calls(channel, data.tenant.admin))
    table = arrow(await export_calls(channel, data.reports))
    assert table.num_rows == 900
    assert not {"number", "name", "note", "recording_uri"} & set(table.column_names)
    # The same pseudonym for the same number, in both exports.
    assert table.column("client").to_pylist() == admin_rows.column("client").to_pylist()


async def test_a_filter_narrows_the_export(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    chunks = await export_calls(
        channel,
        data.tenant.admin,
        filter=report_pb2.ReportFilter(
            from_ms=NOW_MS - 10 * DAY_MS, call_types=[T.CALL_TYPE_MISSED]
        ),
    )
    table = arrow(chunks)
    assert set(table.column("type").to_pylist()) == {"MISSED"}
    assert table.num_rows == sum(1 for i in range(5, CALLS_PER_DEVICE) if i % 3 == 2) * 2


async def test_tenants_see_only_their_own_calls_and_tokens(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    other = await new_tenant(channel)
    chunks = await export_calls(channel, other.admin)
    assert [(c.rows, c.last) for c in chunks] == [(0, True)]
    assert arrow(chunks).num_rows == 0
    mine = await export_calls(channel, data.tenant.admin, chunk_rows=100)
    error = await expect_status(
        export_calls(channel, other.admin, chunk_rows=100, resume_token=mine[0].resume_token),
        CODE.INVALID_ARGUMENT,
    )
    assert "another report or filter" in (error.details() or "")


async def test_bad_requests_say_what_to_fix(channel: grpc.aio.Channel) -> None:
    data = await dataset(channel)
    admin = data.tenant.admin
    error = await expect_status(
        export_calls(channel, admin, resume_token="not-a-token"), CODE.INVALID_ARGUMENT
    )
    assert "resume_token" in (error.details() or "") or "token" in (error.details() or "")
    error = await expect_status(
        export_calls(channel, admin, chunk_rows=100_001), CODE.INVALID_ARGUMENT
    )
    assert "chunk_rows 100001" in (error.details() or "")
    error = await expect_status(
        export_calls(channel, admin, filter=report_pb2.ReportFilter(from_ms=10, to_ms=5)),
        CODE.INVALID_ARGUMENT,
    )
    assert "from_ms must be before to_ms" in (error.details() or "")
    # A token of another filter (or format) is refused.
    chunks = await export_calls(channel, admin, chunk_rows=100)
    await expect_status(
        export_calls(
            channel,
            admin,
            chunk_rows=100,
            format=T.EXPORT_FORMAT_CSV,
            resume_token=chunks[0].resume_token,
        ),
        CODE.INVALID_ARGUMENT,
    )


async def test_export_contacts_and_leads(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    employee = await new_employee(channel, tenant, "Asha", "+919700000009")
    device = await enroll(channel, tenant, employee)
    await _upload(
        channel,
        device.device_token,
        1,
        contacts=ingest_pb2.ContactBatch(
            records=[
                ingest_pb2.Contact(
                    contact_id=f"k{i:02d}", name=f"N{i}", numbers=[f"+91931110{i:04d}"]
                )
                for i in range(25)
            ]
        ),
    )
    await stub.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[
                admin_pb2.Lead(first_name=f"L{i}", primary_number=f"+91932220{i:04d}")
                for i in range(15)
            ]
        ),
        metadata=tenant.admin,
    )
    contacts = [
        c
        async for c in stub.ExportContacts(
            admin_pb2.ExportContactsRequest(chunk_rows=10), metadata=tenant.admin
        )
    ]
    assert [c.rows for c in contacts] == [10, 10, 5] and contacts[-1].last
    table = arrow(contacts)
    assert table.column("contact_id").to_pylist() == [f"k{i:02d}" for i in range(25)]
    assert table.column("numbers").to_pylist()[3] == ["+919311100003"]
    assert table.column("employee_id").to_pylist() == [employee] * 25
    resumed = [
        c
        async for c in stub.ExportContacts(
            admin_pb2.ExportContactsRequest(chunk_rows=10, resume_token=contacts[0].resume_token),
            metadata=tenant.admin,
        )
    ]
    assert arrow(resumed).column("contact_id").to_pylist() == [f"k{i:02d}" for i in range(10, 25)]

    leads = [
        c
        async for c in stub.ExportLeads(
            admin_pb2.ExportLeadsRequest(format=T.EXPORT_FORMAT_CSV), metadata=tenant.admin
        )
    ]
    rows = list(csv.DictReader(io.StringIO(b"".join(c.data for c in leads).decode())))
    assert sorted(r["first_name"] for r in rows) == sorted(f"L{i}" for i in range(15))
    assert {r["primary_number"] for r in rows} == {f"+91932220{i:04d}" for i in range(15)}

    # Another tenant's admin sees none of them; a REPORTS key may not export contacts.
    other = await new_tenant(channel)
    none = [
        c
        async for c in stub.ExportContacts(admin_pb2.ExportContactsRequest(), metadata=other.admin)
    ]
    assert [c.rows for c in none] == [0]
    key = await stub.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="bi", role=T.ROLE_REPORTS), metadata=tenant.admin
    )

    async def as_reports() -> None:
        async for _ in stub.ExportLeads(admin_pb2.ExportLeadsRequest(), metadata=auth(key.api_key)):
            pass

    await expect_status(as_reports(), CODE.PERMISSION_DENIED)
