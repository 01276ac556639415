"""AdminService and RegisterDevice end to end: real server, real gRPC channel, real chDB."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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
    OPERATOR,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode


async def test_health_reports_serving_for_every_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in (
        "",
        "callsight.v1.AdminService",
        "callsight.v1.IngestService",
        "callsight.v1.ReportService",
    ):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in response.list_services_response.service}
    assert {
        "callsight.v1.AdminService",
        "callsight.v1.IngestService",
        "callsight.v1.ReportService",
        "grpc.health.v1.Health",
    } <= names


async def test_create_tenant_needs_the_operator_token(channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.CreateTenantRequest(name="x", default_region="IN", timezone="UTC")
    await expect_status(admin.CreateTenant(request), CODE.UNAUTHENTICATED)
    await expect_status(
        admin.CreateTenant(request, metadata=auth("not-the-operator-token")),
        CODE.UNAUTHENTICATED,
    )
    await expect_status(
        admin.CreateTenant(request, metadata=(("authorization", "Basic abc"),)),
        CODE.UNAUTHENTICATED,
    )
    tenant = await new_tenant(channel)
    error = await expect_status(
        admin.CreateTenant(request, metadata=tenant.admin), CODE.PERMISSION_DENIED
    )
    assert "operator" in (error.details() or "")


async def test_create_tenant_reports_every_invalid_field(channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    error = await expect_status(
        admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="", default_region="XX", timezone="Mars/Base"),
            metadata=OPERATOR,
        ),
        CODE.INVALID_ARGUMENT,
    )
    details = error.details() or ""
    assert "name is required" in details
    assert "'XX'" in details
    assert "'Mars/Base'" in details


async def test_api_key_roles(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    reports = report_pb2_grpc.ReportServiceStub(channel)
    await expect_status(
        admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(name="x"), metadata=tenant.admin),
        CODE.INVALID_ARGUMENT,
    )
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="dashboard", role=common_pb2.ROLE_REPORTS),
        metadata=tenant.admin,
    )
    reports_key = auth(created.api_key)
    assert created.key_id and created.key_id in created.api_key
    # A REPORTS key may call reports (a new tenant has no calls) but not admin RPCs.
    summary = await reports.CallSummary(report_pb2.CallSummaryRequest(), metadata=reports_key)
    assert summary.summary.total_calls == 0
    await expect_status(
        admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=reports_key),
        CODE.PERMISSION_DENIED,
    )
    # A tampered secret with a real key id is refused.
    await expect_status(
        admin.ListEmployees(
            admin_pb2.ListEmployeesRequest(), metadata=auth(tenant.admin_key[:-2] + "xx")
        ),
        CODE.UNAUTHENTICATED,
    )
    second_admin = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="ops", role=common_pb2.ROLE_ADMIN),
        metadata=tenant.admin,
    )
    listed = await admin.ListEmployees(
        admin_pb2.ListEmployeesRequest(), metadata=auth(second_admin.api_key)
    )
    assert list(listed.employees) == []


async def test_employees_are_normalised_and_listed_with_devices(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel, region="IN")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    asha = await new_employee(channel, tenant, "Asha", "098765 43210", ("sales", "north"))
    bob = await new_employee(channel, tenant, "bob", "+44 20 7946 0958", ("support",))
    await expect_status(
        admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="Bad", number="12"), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    await expect_status(
        admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name=" ", number="9876543210"), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    device = await enroll(channel, tenant, asha, region="IN")
    listed = await admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=tenant.admin)
    assert [(e.employee_id, e.name, e.number, list(e.tags)) for e in listed.employees] == [
        (asha, "Asha", "+919876543210", ["north", "sales"]),
        (bob, "bob", "+442079460958", ["support"]),
    ]
    (asha_row,) = [e for e in listed.employees if e.employee_id == asha]
    assert [(d.device_id, d.model, d.revoked) for d in asha_row.devices] == [
        (device.device_id, "Pixel 8", False)
    ]
    assert device.employee_id == asha


async def test_tenants_cannot_reach_each_other(channel: grpc.aio.Channel) -> None:
    a = await new_tenant(channel)
    b = await new_tenant(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    a_employee = await new_employee(channel, a, "Asha", "9876543210")
    a_device = await enroll(channel, a, a_employee)
    await expect_status(
        admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=a_employee), metadata=b.admin
        ),
        CODE.NOT_FOUND,
    )
    await expect_status(
        admin.RevokeDevice(
            admin_pb2.RevokeDeviceRequest(device_id=a_device.device_id), metadata=b.admin
        ),
        CODE.NOT_FOUND,
    )
    listed = await admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=b.admin)
    assert list(listed.employees) == []
    # A device token is no API key, whatever tenant.
    await expect_status(
        admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=auth(a_device.device_token)),
        CODE.PERMISSION_DENIED,
    )


async def test_enrollment_code_is_single_use_and_expires(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    employee = await new_employee(channel, tenant, "Asha", "9876543210")

    code = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee), metadata=tenant.admin
    )
    register = ingest_pb2.RegisterDeviceRequest(enrollment_code=code.enrollment_code)
    first = await ingest.RegisterDevice(register)
    assert first.device_id and first.device_token.startswith("csd_")
    error = await expect_status(ingest.RegisterDevice(register), CODE.UNAUTHENTICATED)
    assert "already used" in (error.details() or "")

    short = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee, ttl_s=1), metadata=tenant.admin
    )
    await asyncio.sleep(1.2)
    error = await expect_status(
        ingest.RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(enrollment_code=short.enrollment_code)
        ),
        CODE.UNAUTHENTICATED,
    )
    assert "expired" in (error.details() or "")

    for bogus in ("", "cse_nope_nope", code.enrollment_code[:-3] + "abc"):
        await expect_status(
            ingest.RegisterDevice(ingest_pb2.RegisterDeviceRequest(enrollment_code=bogus)),
            CODE.UNAUTHENTICATED,
        )
    await expect_status(
        admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=employee, ttl_s=31 * 86400),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    await expect_status(
        admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id="no-such-employee"),
            metadata=tenant.admin,
        ),
        CODE.NOT_FOUND,
    )


async def test_concurrent_registrations_with_one_code_yield_one_device(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    employee = await new_employee(channel, tenant, "Asha", "9876543210")
    code = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee), metadata=tenant.admin
    )
    request = ingest_pb2.RegisterDeviceRequest(enrollment_code=code.enrollment_code)
    results = await asyncio.gather(
        *(ingest.RegisterDevice(request) for _ in range(5)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, ingest_pb2.RegisterDeviceResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1
    assert [r.code() for r in refused] == [CODE.UNAUTHENTICATED] * 4


async def test_device_tokens_only_ingest_and_revocation_applies_at_once(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    reports = report_pb2_grpc.ReportServiceStub(channel)
    employee = await new_employee(channel, tenant, "Asha", "9876543210")
    device = await enroll(channel, tenant, employee)
    token = auth(device.device_token)
    upload = ingest_pb2.UploadRequest(seq=1, batch_id="b1", calls=ingest_pb2.CallLogBatch())

    ack = await ingest.Upload(upload, metadata=token)
    assert (ack.seq, ack.result) == (1, ingest_pb2.UPLOAD_RESULT_ACCEPTED)
    await expect_status(
        reports.CallSummary(report_pb2.CallSummaryRequest(), metadata=token),
        CODE.PERMISSION_DENIED,
    )
    await expect_status(ingest.Upload(upload, metadata=tenant.admin), CODE.PERMISSION_DENIED)
    await expect_status(ingest.Upload(upload), CODE.UNAUTHENTICATED)

    await admin.RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=device.device_id), metadata=tenant.admin
    )
    error = await expect_status(ingest.Upload(upload, metadata=token), CODE.UNAUTHENTICATED)
    assert "revoked" in (error.details() or "")
    listed = await admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=tenant.admin)
    assert [d.revoked for d in listed.employees[0].devices] == [True]
    await expect_status(
        admin.RevokeDevice(
            admin_pb2.RevokeDeviceRequest(device_id="unknown"), metadata=tenant.admin
        ),
        CODE.NOT_FOUND,
    )


async def test_auth_runs_before_decoding_and_bad_bytes_are_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    raw = channel.unary_unary(
        "/callsight.v1.AdminService/ListEmployees",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    garbage = b"\xff\xff\xff\xff"
    await expect_status(raw(garbage), CODE.UNAUTHENTICATED)
    error = await expect_status(raw(garbage, metadata=tenant.admin), CODE.INVALID_ARGUMENT)
    assert "decode" in (error.details() or "")
    # The server keeps serving afterwards.
    assert await raw(b"", metadata=tenant.admin) == b""
