"""Employees and devices end to end (issue 12, items 2 and 3): the number rule, UpdateEmployee,
deactivation, ImportEmployees, ListDevices and DeviceHealth, through a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests.conftest import make_config
from tests.integration.helpers import (
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
EMPTY_CALLS = ingest_pb2.UploadRequest(seq=1, batch_id="b1", calls=ingest_pb2.CallLogBatch())


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def ingest(channel: grpc.aio.Channel) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(channel)


async def update(
    channel: grpc.aio.Channel, tenant: Tenant, employee_id: str, **fields: object
) -> admin_pb2.UpdateEmployeeResponse:
    return await admin(channel).UpdateEmployee(
        admin_pb2.UpdateEmployeeRequest(employee_id=employee_id, **fields),  # type: ignore[arg-type]
        metadata=tenant.admin,
    )


async def employees(channel: grpc.aio.Channel, tenant: Tenant) -> dict[str, admin_pb2.Employee]:
    listed = await admin(channel).ListEmployees(
        admin_pb2.ListEmployeesRequest(), metadata=tenant.admin
    )
    return {e.employee_id: e for e in listed.employees}


async def one(request: ingest_pb2.UploadRequest) -> AsyncIterator[ingest_pb2.UploadRequest]:
    yield request


def telemetry(
    seq: int, battery_pct: int, app_version: str, charging: bool = False
) -> ingest_pb2.UploadRequest:
    return ingest_pb2.UploadRequest(
        seq=seq,
        batch_id=f"t{seq}",
        telemetry=ingest_pb2.TelemetryBatch(
            records=[
                ingest_pb2.Telemetry(
                    captured_at_ms=int(time.time() * 1000) - 60_000,
                    battery_pct=battery_pct,
                    charging=charging,
                    network=ingest_pb2.NETWORK_TYPE_CELLULAR,
                    app_version=app_version,
                    android_version="14",
                )
            ]
        ),
    )


# --- the number rule -----------------------------------------------------------------------------


async def test_a_number_belongs_to_one_active_employee_of_a_tenant(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel, region="IN")
    asha = await new_employee(channel, tenant, "Asha", "98765 43210")
    # The same number in another format is the same number.
    error = await expect_status(
        admin(channel).CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="Bina", number="+91 98765-43210"),
            metadata=tenant.admin,
        ),
        CODE.ALREADY_EXISTS,
    )
    assert error.details() == (
        f"number already belongs to active employee {asha}; deactivate that employee or give"
        " this one another number"
    )
    # Another tenant's employees are no obstacle.
    other = await new_tenant(channel, region="IN")
    await new_employee(channel, other, "Asha elsewhere", "9876543210")

    # Once Asha is inactive her number is free; reactivating her while Bina holds it is refused.
    await update(channel, tenant, asha, active=False)
    bina = await new_employee(channel, tenant, "Bina", "+919876543210")
    error = await expect_status(update(channel, tenant, asha, active=True), CODE.ALREADY_EXISTS)
    assert f"active employee {bina};" in (error.details() or "")
    assert "nothing was changed" in (error.details() or "")
    listed = await employees(channel, tenant)
    assert (listed[asha].active, listed[bina].active) == (False, True)


# --- UpdateEmployee ------------------------------------------------------------------------------


async def test_update_employee_changes_only_what_is_set(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel, region="IN")
    ravi = await new_employee(channel, tenant, "Ravi", "9876500001", ("sales", "north"))

    renamed = await update(channel, tenant, ravi, name="  Ravi Kumar ")
    assert (renamed.employee.name, renamed.employee.number) == ("Ravi Kumar", "+919876500001")
    assert list(renamed.employee.tags) == ["north", "sales"]
    assert (renamed.employee.active, renamed.devices_revoked) == (True, 0)

    # A number in the tenant's local format is stored in E.164; tags only with update_tags.
    moved = await update(channel, tenant, ravi, number="098765 00002", tags=["ignored"])
    assert (moved.employee.number, list(moved.employee.tags)) == (
        "+919876500002",
        ["north", "sales"],
    )
    retagged = await update(
        channel, tenant, ravi, tags=[" west ", "west", "east"], update_tags=True
    )
    assert list(retagged.employee.tags) == ["east", "west"]
    cleared = await update(channel, tenant, ravi, update_tags=True)
    assert list(cleared.employee.tags) == []

    listed = (await employees(channel, tenant))[ravi]
    assert (listed.name, listed.number, list(listed.tags), listed.active) == (
        "Ravi Kumar",
        "+919876500002",
        [],
        True,
    )
    # The old number is free again; the new one is taken.
    await new_employee(channel, tenant, "Old number", "9876500001")
    error = await expect_status(
        admin(channel).CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="New number", number="9876500002"),
            metadata=tenant.admin,
        ),
        CODE.ALREADY_EXISTS,
    )
    assert ravi in (error.details() or "")


async def test_update_employee_refuses_bad_input_and_changes_nothing(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel, region="IN")
    ravi = await new_employee(channel, tenant, "Ravi", "9876500011")
    meera = await new_employee(channel, tenant, "Meera", "9876500012")

    error = await expect_status(
        update(channel, tenant, ravi, name=" ", number="12", tags=["t" * 65], update_tags=True),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == (
        "name must not be empty (leave it unset to keep the name); number '12' is not a possible"
        " phone number in region IN (too short); tags[0] is 65 bytes (UTF-8); the limit is 64;"
        " nothing was changed"
    )
    error = await expect_status(
        update(channel, tenant, ravi, name="Ravi K", number="9876500012"), CODE.ALREADY_EXISTS
    )
    assert f"active employee {meera};" in (error.details() or "")
    error = await expect_status(update(channel, tenant, ""), CODE.INVALID_ARGUMENT)
    assert error.details() == "employee_id is required"
    error = await expect_status(update(channel, tenant, "nobody"), CODE.NOT_FOUND)
    assert error.details() == "employee nobody does not exist in this tenant"
    assert (await employees(channel, tenant))[ravi].name == "Ravi"

    # Another tenant's admin can neither change nor see Ravi.
    other = await new_tenant(channel)
    await expect_status(update(channel, other, ravi, name="Hijacked"), CODE.NOT_FOUND)
    await expect_status(update(channel, other, ravi, active=False), CODE.NOT_FOUND)
    assert (await employees(channel, tenant))[ravi].name == "Ravi"


# --- deactivation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def other(service: Service, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A second server on the session's database, refreshing its identities every 0.2 s."""
    svc = Service(make_config(data_dir, service.config.database, directory_refresh_s=0.2))
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


async def test_deactivation_revokes_every_device_and_stops_enrollment(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "9876500021")
    phones = [await enroll(channel, tenant, asha) for _ in range(2)]
    pending = await admin(channel).CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=asha), metadata=tenant.admin
    )
    for phone in phones:
        ack = await ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phone.device_token))
        assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED

    done = await update(channel, tenant, asha, active=False)
    assert done.devices_revoked == 2
    assert done.employee.active is False
    assert [d.revoked for d in done.employee.devices] == [True, True]
    for phone in phones:
        error = await expect_status(
            ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phone.device_token)),
            CODE.UNAUTHENTICATED,
        )
        assert "revoked" in (error.details() or "")
    error = await expect_status(
        admin(channel).CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=asha), metadata=tenant.admin
        ),
        CODE.FAILED_PRECONDITION,
    )
    assert error.details() == (
        f"employee {asha} is deactivated; reactivate them (UpdateEmployee with active true)"
        " before enrolling a device"
    )
    # A code issued before the deactivation no longer registers a device.
    error = await expect_status(
        ingest(channel).RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(
                enrollment_code=pending.enrollment_code,
                device=ingest_pb2.DeviceInfo(model="Pixel 8"),
            )
        ),
        CODE.FAILED_PRECONDITION,
    )
    assert "deactivated" in (error.details() or "")
    listed = (await employees(channel, tenant))[asha]
    assert listed.active is False
    assert [d.revoked for d in listed.devices] == [True, True]

    # Reactivation keeps the devices revoked (each phone enrolls again) and allows enrollment.
    back = await update(channel, tenant, asha, active=True)
    assert (back.employee.active, back.devices_revoked) == (True, 0)
    assert [d.revoked for d in back.employee.devices] == [True, True]
    await expect_status(
        ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phones[0].device_token)),
        CODE.UNAUTHENTICATED,
    )
    again = await enroll(channel, tenant, asha)
    ack = await ingest(channel).Upload(EMPTY_CALLS, metadata=auth(again.device_token))
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED


async def test_deactivation_in_another_process_revokes_within_a_few_refreshes(
    channel: grpc.aio.Channel, other: grpc.aio.Channel
) -> None:
    tenant = await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "9876500031")
    phone = await enroll(channel, tenant, asha)
    ack = await ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phone.device_token))
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED

    done = await update(other, tenant, asha, active=False)
    assert done.devices_revoked == 1
    # The session server refreshes its identities every second (the default).
    deadline = time.monotonic() + 5.0
    while True:
        try:
            await ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phone.device_token))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == CODE.UNAUTHENTICATED
            assert "revoked" in (exc.details() or "")
            break
        assert time.monotonic() < deadline, "the deactivation did not reach the other process"
        await asyncio.sleep(0.05)


# --- ImportEmployees -----------------------------------------------------------------------------


async def test_import_employees_writes_thousands_in_one_insert_and_reports_each(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel, region="IN")
    existing = await new_employee(channel, tenant, "Already here", "9100000007")
    count = 3_000
    entries = [
        admin_pb2.CreateEmployeeRequest(
            name=f"Agent {i}", number=f"91{i:08d}", tags=["import", f"team-{i % 3}"]
        )
        for i in range(count)
    ]
    entries[5] = admin_pb2.CreateEmployeeRequest(name=" ", number="9199999999")
    entries[6] = admin_pb2.CreateEmployeeRequest(name="Short", number="12")
    entries[8] = admin_pb2.CreateEmployeeRequest(name="Twin", number="+91 91000 00004")
    imported = await admin(channel).ImportEmployees(
        admin_pb2.ImportEmployeesRequest(employees=entries), metadata=tenant.admin
    )
    assert imported.created == count - 4
    assert len(imported.employees) == count
    errors = {i: e.error for i, e in enumerate(imported.employees) if e.error}
    assert errors == {
        5: "name is required",
        6: "number '12' is not a possible phone number in region IN (too short)",
        7: (
            f"number already belongs to active employee {existing}; deactivate that employee or"
            " give this one another number"
        ),
        8: "number is the same as that of employees[4] of this request",
    }
    assert all(not imported.employees[i].employee_id for i in errors)
    ids = [e.employee_id for e in imported.employees if e.employee_id]
    assert len(set(ids)) == count - 4

    listed = await employees(channel, tenant)
    assert len(listed) == count - 4 + 1
    first = listed[imported.employees[0].employee_id]
    assert (first.name, first.number, list(first.tags), first.active) == (
        "Agent 0",
        "+919100000000",
        ["import", "team-0"],
        True,
    )
    # One insert: every row of it carries the one version the insert was stamped with.
    versions = await db.query(
        "SELECT uniqExact(version) FROM employees WHERE tenant_id = {t:String}"
        " AND employee_id != {e:String}",
        {"t": tenant.tenant_id, "e": existing},
    )
    assert versions == [(1,)]
    # Imported employees are employees like any other: they enroll, and their numbers are taken.
    await enroll(channel, tenant, ids[0])
    await expect_status(
        admin(channel).CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="Late", number="9100000001"),
            metadata=tenant.admin,
        ),
        CODE.ALREADY_EXISTS,
    )
    # Another tenant sees none of them and may import the same numbers.
    other = await new_tenant(channel, region="IN")
    assert await employees(channel, other) == {}
    again = await admin(channel).ImportEmployees(
        admin_pb2.ImportEmployeesRequest(employees=entries[:3]), metadata=other.admin
    )
    assert again.created == 3


async def test_import_employees_refuses_more_than_the_limit(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    entries = [admin_pb2.CreateEmployeeRequest(name="x", number="9876543210")] * 10_001
    error = await expect_status(
        admin(channel).ImportEmployees(
            admin_pb2.ImportEmployeesRequest(employees=entries), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == (
        "10001 employees in one request; at most 10000, split the import into several requests"
    )
    assert await employees(channel, tenant) == {}
    empty = await admin(channel).ImportEmployees(
        admin_pb2.ImportEmployeesRequest(), metadata=tenant.admin
    )
    assert (list(empty.employees), empty.created) == ([], 0)


# --- ListDevices and DeviceHealth ----------------------------------------------------------------


async def test_list_devices_shows_activity_and_latest_telemetry_paged(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    first = await new_employee(channel, tenant, "First", "9876500041")
    second = await new_employee(channel, tenant, "Second", "9876500042")
    a1 = await enroll(channel, tenant, first)
    a2 = await enroll(channel, tenant, first)
    b1 = await enroll(channel, tenant, second)
    before_ms = int(time.time() * 1000)
    ack = await ingest(channel).Upload(telemetry(1, 42, "3.4.0"), metadata=auth(a1.device_token))
    assert ack.accepted == 1
    await ingest(channel).Upload(
        telemetry(2, 17, "3.4.1", charging=True), metadata=auth(a1.device_token)
    )
    # b1 syncs over a stream, then sends a batch refused whole: the sync stays, the result changes.
    streamed = [
        a async for a in ingest(channel).Stream(one(EMPTY_CALLS), metadata=auth(b1.device_token))
    ]
    assert [a.result for a in streamed] == [ingest_pb2.UPLOAD_RESULT_ACCEPTED]
    synced_ms = streamed[0].server_time_ms
    await expect_status(
        ingest(channel).Upload(ingest_pb2.UploadRequest(seq=2), metadata=auth(b1.device_token)),
        CODE.INVALID_ARGUMENT,
    )
    await admin(channel).RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=a2.device_id), metadata=tenant.admin
    )

    listed = await admin(channel).ListDevices(
        admin_pb2.ListDevicesRequest(include_revoked=True), metadata=tenant.admin
    )
    assert listed.next_page_token == ""
    by_id = {s.device.device_id: s for s in listed.devices}
    order = sorted(
        [a1, a2, b1], key=lambda d: (d.employee_id, by_id[d.device_id].device.registered_at_ms)
    )
    assert [s.device.device_id for s in listed.devices] == [d.device_id for d in order]
    synced = by_id[a1.device_id]
    assert synced.employee_id == first
    assert (synced.device.model, synced.device.revoked) == ("Pixel 8", False)
    # The latest sample, by capture time, gives battery, network and versions.
    assert (synced.battery_pct, synced.app_version) == (17, "3.4.1")
    assert synced.device.app_version == ""  # as enrolled
    assert synced.network == ingest_pb2.NETWORK_TYPE_CELLULAR
    assert synced.android_version == "14"
    assert synced.telemetry_at_ms > 0
    assert synced.last_seen_at_ms >= before_ms
    assert synced.last_sync_at_ms >= before_ms
    assert synced.last_batch_result == ingest_pb2.UPLOAD_RESULT_ACCEPTED
    calls_only = by_id[b1.device_id]
    assert (calls_only.battery_pct, calls_only.telemetry_at_ms) == (-1, 0)
    assert calls_only.network == ingest_pb2.NETWORK_TYPE_UNSPECIFIED
    assert calls_only.last_sync_at_ms == synced_ms
    assert calls_only.last_seen_at_ms >= synced_ms
    assert calls_only.last_batch_result == ingest_pb2.UPLOAD_RESULT_REJECTED
    silent = by_id[a2.device_id]
    assert silent.device.revoked
    assert (silent.last_seen_at_ms, silent.last_sync_at_ms, silent.battery_pct) == (0, 0, -1)
    assert silent.last_batch_result == ingest_pb2.UPLOAD_RESULT_UNSPECIFIED

    # Revoked devices are left out unless asked for; employee_ids filters.
    active = await admin(channel).ListDevices(admin_pb2.ListDevicesRequest(), metadata=tenant.admin)
    assert {s.device.device_id for s in active.devices} == {a1.device_id, b1.device_id}
    only = await admin(channel).ListDevices(
        admin_pb2.ListDevicesRequest(employee_ids=[second]), metadata=tenant.admin
    )
    assert [s.device.device_id for s in only.devices] == [b1.device_id]

    # One device a page walks the same listing.
    walked, token = [], ""
    while True:
        page = await admin(channel).ListDevices(
            admin_pb2.ListDevicesRequest(include_revoked=True, page_size=1, page_token=token),
            metadata=tenant.admin,
        )
        walked += [s.device.device_id for s in page.devices]
        token = page.next_page_token
        if not token:
            break
    assert walked == [d.device_id for d in order]

    # A token of another filter or tenant is refused; so is an oversized page.
    first_page = await admin(channel).ListDevices(
        admin_pb2.ListDevicesRequest(page_size=1), metadata=tenant.admin
    )
    error = await expect_status(
        admin(channel).ListDevices(
            admin_pb2.ListDevicesRequest(
                include_revoked=True, page_size=1, page_token=first_page.next_page_token
            ),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "same filter" in (error.details() or "")
    other = await new_tenant(channel)
    await expect_status(
        admin(channel).ListDevices(
            admin_pb2.ListDevicesRequest(page_size=1, page_token=first_page.next_page_token),
            metadata=other.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    error = await expect_status(
        admin(channel).ListDevices(
            admin_pb2.ListDevicesRequest(page_size=1001), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == "page_size 1001 is over the maximum of 1000"
    # The other tenant sees none of these devices, even naming their employee.
    theirs = await admin(channel).ListDevices(
        admin_pb2.ListDevicesRequest(employee_ids=[first], include_revoked=True),
        metadata=other.admin,
    )
    assert list(theirs.devices) == []


async def test_device_health_lists_silent_low_battery_and_old_devices(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    staff = [await new_employee(channel, tenant, f"E{i}", f"98765000{50 + i}") for i in range(4)]
    low, fine, never, revoked = [await enroll(channel, tenant, e) for e in staff]
    assert (
        await ingest(channel).Upload(telemetry(1, 9, "3.1.9"), metadata=auth(low.device_token))
    ).accepted == 1
    assert (
        await ingest(channel).Upload(telemetry(1, 80, "3.10.0"), metadata=auth(fine.device_token))
    ).accepted == 1
    await ingest(channel).Upload(telemetry(1, 5, "1.0"), metadata=auth(revoked.device_token))
    await admin(channel).RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=revoked.device_id), metadata=tenant.admin
    )

    health = await admin(channel).DeviceHealth(
        admin_pb2.DeviceHealthRequest(min_app_version="3.2"), metadata=tenant.admin
    )
    found = {e.status.device.device_id: list(e.issues) for e in health.devices}
    assert found == {
        never.device_id: [admin_pb2.HEALTH_ISSUE_SILENT],
        low.device_id: [admin_pb2.HEALTH_ISSUE_LOW_BATTERY, admin_pb2.HEALTH_ISSUE_OLD_APP],
    }
    # Never synced is the most silent.
    assert [e.status.device.device_id for e in health.devices] == [never.device_id, low.device_id]
    low_status = health.devices[1].status
    assert (low_status.battery_pct, low_status.app_version) == (9, "3.1.9")

    # A threshold at 5 % leaves the 9 % battery alone; charging is never low.
    health = await admin(channel).DeviceHealth(
        admin_pb2.DeviceHealthRequest(low_battery_pct=5), metadata=tenant.admin
    )
    assert [e.status.device.device_id for e in health.devices] == [never.device_id]

    # After a second without a sync every device is silent, the least recently synced first.
    await asyncio.sleep(1.1)
    health = await admin(channel).DeviceHealth(
        admin_pb2.DeviceHealthRequest(silent_for_s=1, low_battery_pct=5), metadata=tenant.admin
    )
    assert [e.status.device.device_id for e in health.devices] == [
        never.device_id,
        low.device_id,
        fine.device_id,
    ]
    assert all(list(e.issues) == [admin_pb2.HEALTH_ISSUE_SILENT] for e in health.devices)

    error = await expect_status(
        admin(channel).DeviceHealth(
            admin_pb2.DeviceHealthRequest(min_app_version="latest"), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == (
        "min_app_version 'latest' is not a dotted version; send numbers separated by dots,"
        " e.g. '3.2.0'"
    )
    error = await expect_status(
        admin(channel).DeviceHealth(
            admin_pb2.DeviceHealthRequest(low_battery_pct=101), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "low_battery_pct is 101" in (error.details() or "")
    other = await new_tenant(channel)
    theirs = await admin(channel).DeviceHealth(
        admin_pb2.DeviceHealthRequest(min_app_version="99"), metadata=other.admin
    )
    assert list(theirs.devices) == []


async def test_device_activity_is_written_at_shutdown(
    service: Service, data_dir: Path, db: Database
) -> None:
    svc = Service(make_config(data_dir, service.config.database))
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            tenant = await new_tenant(channel)
            employee = await new_employee(channel, tenant, "Asha", "9876500061")
            phone = await enroll(channel, tenant, employee)
            ack = await ingest(channel).Upload(EMPTY_CALLS, metadata=auth(phone.device_token))
    finally:
        # Well within the flush interval: only the shutdown writes it.
        await svc.stop()
    rows = await db.query(
        "SELECT max(last_seen_ms), max(last_sync_ms), tupleElement(max(last_batch), 2)"
        " FROM device_activity WHERE tenant_id = {t:String} AND device_id = {d:String}",
        {"t": tenant.tenant_id, "d": phone.device_id},
    )
    assert rows == [(ack.server_time_ms, ack.server_time_ms, ingest_pb2.UPLOAD_RESULT_ACCEPTED)]
