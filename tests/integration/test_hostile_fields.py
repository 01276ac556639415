"""Hostile field values replayed through a real server (issue 11, items 8 and 9).

Each oversized field is refused naming the field and its limit: per record on ingest (the rest of
the batch goes in), with INVALID_ARGUMENT on admin and report requests. Time zones are checked
against the IANA set before any lookup, and nothing huge is echoed back or logged.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from callsight.pipeline.limits import MAX_ID_BYTES, MAX_NAME_BYTES, MAX_NOTE_BYTES, MAX_URI_BYTES
from callsight.storage.database import Database
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration.calls import BASE_MS, batch, call, counts, stored_calls
from tests.integration.helpers import (
    OPERATOR,
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
INT64_MAX = 2**63 - 1
HUGE_ZONE = "A" * 5000
GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


def tenant_request(**fields: str) -> admin_pb2.CreateTenantRequest:
    request = admin_pb2.CreateTenantRequest(
        name="acme", default_region="IN", timezone="Asia/Kolkata"
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


async def invalid(awaitable: object) -> str:
    """The details of an INVALID_ARGUMENT, checked to be short."""
    error = await expect_status(awaitable, CODE.INVALID_ARGUMENT)
    details = error.details() or ""
    assert len(details) < 500, details[:600]
    return details


async def device_token(channel: grpc.aio.Channel, tenant: Tenant) -> tuple[str, str]:
    employee = await new_employee(channel, tenant, "Asha", "9876543210")
    device = await enroll(channel, tenant, employee)
    return device.device_id, device.device_token


# --- item 8: time zones ---------------------------------------------------------------------


async def test_huge_timezone_is_refused_briefly_and_the_server_keeps_serving(
    channel: grpc.aio.Channel, log_file: Path
) -> None:
    for zone in (HUGE_ZONE, "Asia/" + "x" * 5000):
        details = await invalid(
            admin(channel).CreateTenant(tenant_request(timezone=zone), metadata=OPERATOR)
        )
        assert 'such as "Asia/Kolkata"' in details
        assert details.startswith("timezone ")
    tenant = await new_tenant(channel)  # still serving
    details = await invalid(
        reports(channel).CallSummary(
            report_pb2.CallSummaryRequest(filter=report_pb2.ReportFilter(timezone=HUGE_ZONE)),
            metadata=tenant.admin,
        )
    )
    assert details.startswith("filter.timezone 'AAAA")
    assert "(5000 characters)" in details
    summary = await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(), metadata=tenant.admin
    )
    assert summary.summary.total_calls == 0
    # The log line has the refusal, cut short like the message.
    logged = log_file.read_text()
    assert "A" * 65 not in logged
    assert "x" * 65 not in logged


async def test_non_zones_are_refused(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    for zone in ("Factory", "posixrules", "localtime", "EST", "Mars/Base"):
        details = await invalid(
            admin(channel).CreateTenant(tenant_request(timezone=zone), metadata=OPERATOR)
        )
        assert f"'{zone}' is not an IANA time zone" in details
        details = await invalid(
            reports(channel).HourlyAnalytics(
                report_pb2.HourlyAnalyticsRequest(filter=report_pb2.ReportFilter(timezone=zone)),
                metadata=tenant.admin,
            )
        )
        assert f"filter.timezone '{zone}'" in details
    for zone in ("UTC", "Etc/GMT-3", "America/Argentina/Buenos_Aires"):
        await new_tenant(channel, timezone=zone)


# --- item 9: admin and report requests ------------------------------------------------------


async def test_oversized_admin_fields_are_refused_naming_field_and_limit(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    md = tenant.admin
    huge = "n" * 1_000_000
    details = await invalid(
        admin(channel).CreateTenant(tenant_request(name=huge), metadata=OPERATOR)
    )
    assert details == "name is 1000000 bytes (UTF-8); the limit is 256"
    details = await invalid(
        admin(channel).CreateTenant(tenant_request(default_region="X" * 5000), metadata=OPERATOR)
    )
    assert "default_region 'XXXX" in details
    details = await invalid(
        admin(channel).CreateApiKey(admin_pb2.CreateApiKeyRequest(name=huge, role=2), metadata=md)
    )
    assert details == "name is 1000000 bytes (UTF-8); the limit is 256"

    employees = [
        (admin_pb2.CreateEmployeeRequest(name=huge, number="9876543210"), "name is 1000000 bytes"),
        (
            admin_pb2.CreateEmployeeRequest(name="A", number="9876543210", tags=["t"] * 50_000),
            "tags has 50000 entries; the limit is 64",
        ),
        (
            admin_pb2.CreateEmployeeRequest(name="A", number="9876543210", tags=["t" * 100]),
            "tags[0] is 100 bytes (UTF-8); the limit is 64",
        ),
    ]
    for request, expected in employees:
        assert expected in await invalid(admin(channel).CreateEmployee(request, metadata=md))
    # At the caps, an employee is created.
    await admin(channel).CreateEmployee(
        admin_pb2.CreateEmployeeRequest(
            name="n" * MAX_NAME_BYTES, number="9876543210", tags=[f"{i:064d}" for i in range(64)]
        ),
        metadata=md,
    )
    details = await invalid(
        admin(channel).CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id="e" * 100_000), metadata=md
        )
    )
    assert details == "employee_id is 100000 bytes (UTF-8); the limit is 128"
    details = await invalid(
        admin(channel).RevokeDevice(admin_pb2.RevokeDeviceRequest(device_id="d" * 200), metadata=md)
    )
    assert details == "device_id is 200 bytes (UTF-8); the limit is 128"
    details = await invalid(
        admin(channel).SetExcludedNumbers(
            admin_pb2.SetExcludedNumbersRequest(numbers=["9876543210"] * 10_001), metadata=md
        )
    )
    assert details == "numbers has 10001 entries; the limit is 10000"


async def test_oversized_lead_imports_are_refused(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    await new_employee(channel, tenant, "Asha", "9876543210")
    md = tenant.admin
    details = await invalid(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[admin_pb2.Lead(primary_number="9876500000")],
                employee_ids=[f"e{i}" for i in range(100_000)],
            ),
            metadata=md,
        )
    )
    assert details == "employee_ids has 100000 entries; the limit is 10000"
    details = await invalid(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[admin_pb2.Lead(primary_number="9876500000")],
                employee_ids=["ghost" * 1000, *(f"g{i}" for i in range(20))],
            ),
            metadata=md,
        )
    )
    assert "and 16 more are not employees" in details
    details = await invalid(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[
                    admin_pb2.Lead(primary_number="9876500000", company="c" * 1025),
                    admin_pb2.Lead(primary_number="9876500001", tags=["t"] * 1000),
                ]
            ),
            metadata=md,
        )
    )
    assert "leads[0].company is 1025 bytes (UTF-8); the limit is 1024" in details
    assert "leads[1].tags has 1000 entries; the limit is 64" in details


async def test_oversized_report_filters_are_refused(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    cases = [
        (
            report_pb2.ReportFilter(employee_ids=[f"e{i}" for i in range(100_000)]),
            "filter.employee_ids has 100000 entries; the limit is 10000",
        ),
        (
            report_pb2.ReportFilter(employee_ids=["e" * 5000]),
            "filter.employee_ids[0] is 5000 bytes (UTF-8); the limit is 128",
        ),
        (
            report_pb2.ReportFilter(employee_tags=["t"] * 1000),
            "filter.employee_tags has 1000 entries; the limit is 64",
        ),
        (
            report_pb2.ReportFilter(call_types=[99] * 100_000),
            "filter.call_types has 100000 entries; the limit is 16",
        ),
    ]
    for f, expected in cases:
        details = await invalid(
            reports(channel).CallSummary(
                report_pb2.CallSummaryRequest(filter=f), metadata=tenant.admin
            )
        )
        assert expected in details
    details = await invalid(
        reports(channel).CallHistory(
            report_pb2.CallHistoryRequest(page_token="A" * 100_000), metadata=tenant.admin
        )
    )
    assert "page_token is 100000 characters; the limit is 4096" in details
    # At the caps, a filter is served.
    at_caps = report_pb2.ReportFilter(
        employee_ids=[f"{i:0128d}" for i in range(10_000)], employee_tags=["t" * 64] * 64
    )
    summary = await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=at_caps), metadata=tenant.admin
    )
    assert summary.summary.total_calls == 0


async def test_oversized_device_info_is_refused(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Asha", "9876543210")
    code = await admin(channel).CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee), metadata=tenant.admin
    )
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    details = await invalid(
        ingest.RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(
                enrollment_code=code.enrollment_code,
                device=ingest_pb2.DeviceInfo(
                    model="m" * 100_000, fcm_id="f" * 600, sim_ids=["s"] * 20
                ),
            )
        )
    )
    assert "device.sim_ids has 20 entries; the limit is 8" in details
    assert "device.model is 100000 bytes (UTF-8); the limit is 128" in details
    assert "device.fcm_id is 600 bytes (UTF-8); the limit is 512" in details
    # The code was not spent on the refusal.
    registered = await ingest.RegisterDevice(
        ingest_pb2.RegisterDeviceRequest(
            enrollment_code=code.enrollment_code,
            device=ingest_pb2.DeviceInfo(model="Pixel 8", fcm_id="f" * 200, sim_ids=["s1", "s2"]),
        )
    )
    assert registered.device_token


# --- item 9: ingest, per record -------------------------------------------------------------


async def test_oversized_call_fields_are_rejected_per_record(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel)
    device_id, token = await device_token(channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    records = [
        call(0),
        call(1, note="x" * 1_500_000),
        call(2, name="n" * 1_000_000),
        call(3, sim_id="s" * 100_000),
        call(4, recording_uri="u" * 5000),
        call(5, call_id="c" * 200),
        call(6, updated_at_ms=INT64_MAX),
        call(7),
    ]
    ack = await ingest.Upload(batch(1, records), metadata=auth(token))
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED
    assert counts(ack) == (2, 0, 0, 6)
    assert [(e.index, e.reason) for e in ack.errors] == [
        (1, "note is 1500000 bytes (UTF-8); the limit is 2048"),
        (2, "name is 1000000 bytes (UTF-8); the limit is 256"),
        (3, "sim_id is 100000 bytes (UTF-8); the limit is 128"),
        (4, "recording_uri is 5000 bytes (UTF-8); the limit is 1024"),
        (5, "call_id is 200 bytes (UTF-8); the limit is 128"),
        (6, f"updated_at_ms {INT64_MAX} is more than a day in the future"),
    ]
    assert set(await stored_calls(db, tenant.tenant_id)) == {(device_id, "c0"), (device_id, "c7")}

    # The INT64_MAX version never got in, so a later edit of that call still wins.
    first = await ingest.Upload(batch(2, [call(6)]), metadata=auth(token))
    edit = await ingest.Upload(batch(3, [call(6, version=60_000, note="ok")]), metadata=auth(token))
    assert (counts(first), counts(edit)) == ((1, 0, 0, 0), (0, 1, 0, 0))
    stored = await stored_calls(db, tenant.tenant_id)
    assert stored[(device_id, "c6")] == BASE_MS + 6_000 + 60_000

    # A batch_id over its cap refuses the batch, and is not echoed back.
    await invalid(ingest.Upload(batch(4, [call(8)], batch_id="b" * 5000), metadata=auth(token)))


async def test_oversized_contact_and_telemetry_fields_are_rejected_per_record(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    _, token = await device_token(channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    contacts = ingest_pb2.UploadRequest(
        seq=1,
        batch_id="k1",
        contacts=ingest_pb2.ContactBatch(
            records=[
                ingest_pb2.Contact(contact_id="k0", name="Ravi", numbers=["9876543210"]),
                ingest_pb2.Contact(contact_id="k1", numbers=["9876543210"] * 10_000),
                ingest_pb2.Contact(contact_id="k2", name="n" * 1_000_000),
                ingest_pb2.Contact(contact_id="k3", updated_at_ms=INT64_MAX),
                ingest_pb2.Contact(contact_id="k4", photo_uri="u" * 2000),
            ]
        ),
    )
    ack = await ingest.Upload(contacts, metadata=auth(token))
    assert counts(ack) == (1, 0, 0, 4)
    assert [(e.index, e.reason) for e in ack.errors] == [
        (1, "numbers has 10000 entries; the limit is 32"),
        (2, "name is 1000000 bytes (UTF-8); the limit is 256"),
        (3, f"updated_at_ms {INT64_MAX} is more than a day in the future"),
        (4, "photo_uri is 2000 bytes (UTF-8); the limit is 1024"),
    ]
    sample = {"captured_at_ms": BASE_MS, "battery_pct": 50, "network": 1}
    telemetry = ingest_pb2.UploadRequest(
        seq=2,
        batch_id="t1",
        telemetry=ingest_pb2.TelemetryBatch(
            records=[
                ingest_pb2.Telemetry(**sample),
                ingest_pb2.Telemetry(
                    **{**sample, "captured_at_ms": BASE_MS + 1}, model="m" * 100_000
                ),
                ingest_pb2.Telemetry(
                    **{**sample, "captured_at_ms": BASE_MS + 2}, sim_ids=["s"] * 50
                ),
            ]
        ),
    )
    ack = await ingest.Upload(telemetry, metadata=auth(token))
    assert counts(ack) == (1, 0, 0, 2)
    assert [(e.index, e.reason) for e in ack.errors] == [
        (1, "model is 100000 bytes (UTF-8); the limit is 128"),
        (2, "sim_ids has 50 entries; the limit is 8"),
    ]


async def test_call_history_of_max_size_calls_fits_the_default_client_limit(
    channel: grpc.aio.Channel,
) -> None:
    # The session channel has gRPC's default 4 MiB receive limit: the page must come through it.
    tenant = await new_tenant(channel)
    _, token = await device_token(channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    note = "\u00e9" * (MAX_NOTE_BYTES // 2)  # two bytes each: the cap in bytes, exactly
    records = [
        call(
            i,
            call_id=f"{i:0{MAX_ID_BYTES}d}",
            name="n" * MAX_NAME_BYTES,
            note=note,
            recording_uri="u" * MAX_URI_BYTES,
        )
        for i in range(1000)
    ]
    for seq, start in enumerate(range(0, 1000, 250), 1):
        ack = await ingest.Upload(batch(seq, records[start : start + 250]), metadata=auth(token))
        assert counts(ack) == (250, 0, 0, 0), list(ack.errors)[:3]
    page = await reports(channel).CallHistory(
        report_pb2.CallHistoryRequest(page_size=1000), metadata=tenant.admin
    )
    assert len(page.calls) == 1000
    assert all(c.note == note and len(c.name) == MAX_NAME_BYTES for c in page.calls)
    assert page.ByteSize() < GRPC_DEFAULT_MAX_RECEIVE
