"""Device policy: SetDevicePolicy / GetDevicePolicy for the tenant and an employee's override,
the policy returned at registration and by GetPolicy, and the server dropping what a policy
excludes (a SIM slot not tracked, outside office hours, a never-upload number): unstored,
counted in the ack's duplicates and dropped_by_policy, absent from reports; acks carry the
policy version, also another server's within its refresh interval."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.storage.policies import Policies
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.conftest import make_config
from tests.integration.calls import batch, counts, stored_calls
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
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PERSONAL = "+919811100001"
# Monday 2024-06-03 00:00 in Asia/Kolkata (UTC+5:30), epoch ms.
MONDAY_MS = int(datetime(2024, 6, 2, 18, 30, tzinfo=UTC).timestamp() * 1000)
OFFICE = ingest_pb2.DevicePolicy(
    sim_slots=[0],
    office_hours=ingest_pb2.OfficeHours(
        start_minute=9 * 60, end_minute=18 * 60, weekdays=[1, 2, 3, 4, 5]
    ),
    sync_interval_s=900,
)


@pytest.fixture(scope="module")
async def other(service: Service, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A second server on the session's database, refreshing every 0.2 s."""
    svc = Service(make_config(data_dir, service.config.database, directory_refresh_s=0.2))
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


def call(i: int, slot: int, hour: float, number: str = "") -> ingest_pb2.CallRecord:
    """Call ``i``: ``hour`` hours after Monday 00:00 in Kolkata, on SIM slot ``slot``."""
    return ingest_pb2.CallRecord(
        call_id=f"c{i}",
        number=number or f"+9198000000{i:02d}",
        name=f"Client {i}",
        type=common_pb2.CALL_TYPE_OUTGOING,
        started_at_ms=MONDAY_MS + int(hour * HOUR_MS),
        duration_s=30,
        sim_slot=slot,
    )


def match_hash(policy: ingest_pb2.DevicePolicy, e164: str) -> str:
    key = base64.b64decode(policy.match_key)
    return hmac.new(key, e164.encode(), hashlib.sha256).hexdigest()


async def excluded_policy(
    admin: admin_pb2_grpc.AdminServiceStub, tenant: Tenant, employee_id: str = ""
) -> admin_pb2.GetDevicePolicyResponse:
    """The policy once it lists the tenant's excluded numbers (within the refresh interval)."""
    deadline = time.monotonic() + 5.0
    while True:
        got = await admin.GetDevicePolicy(
            admin_pb2.GetDevicePolicyRequest(employee_id=employee_id), metadata=tenant.admin
        )
        if got.policy.never_upload:
            return got
        assert time.monotonic() < deadline, "the excluded numbers never reached the policy"
        await asyncio.sleep(0.05)


async def history(channel: grpc.aio.Channel, admin: Metadata) -> list[tuple[str, str]]:
    """(call_id, number) of every stored call, excluded numbers included."""
    reports = report_pb2_grpc.ReportServiceStub(channel)
    response = await reports.CallHistory(
        report_pb2.CallHistoryRequest(
            filter=report_pb2.ReportFilter(
                from_ms=MONDAY_MS - 7 * DAY_MS,
                to_ms=MONDAY_MS + 7 * DAY_MS,
                include_excluded_numbers=True,
            ),
            page_size=1000,
        ),
        metadata=admin,
    )
    return sorted((c.call_id, c.number) for c in response.calls)


async def test_policy_drops_what_it_excludes(channel: grpc.aio.Channel, db: Database) -> None:
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    asha = await new_employee(channel, tenant, "Asha", "9876500001")

    # No policy yet: version 0, nothing restricted, the excluded numbers are not applied.
    await admin.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=["098111 00001"]), metadata=tenant.admin
    )
    before = await admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=tenant.admin)
    assert before == admin_pb2.GetDevicePolicyResponse(policy=ingest_pb2.DevicePolicy(version=0))

    done = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=OFFICE), metadata=tenant.admin
    )
    effective = done.effective
    assert effective.version > 0
    assert list(effective.sim_slots) == [0]
    assert effective.office_hours.timezone == "Asia/Kolkata"  # the tenant's, made explicit
    assert list(effective.office_hours.weekdays) == [1, 2, 3, 4, 5]
    assert effective.sync_interval_s == 900
    got = await excluded_policy(admin, tenant)
    assert not got.overridden
    assert list(got.policy.never_upload) == [match_hash(got.policy, PERSONAL)]
    policy = got.policy

    # Registration returns the policy in force; so does GetPolicy.
    device = await enroll(channel, tenant, asha)
    assert device.policy == policy
    token = auth(device.device_token)
    assert (await ingest.GetPolicy(ingest_pb2.GetPolicyRequest(), metadata=token)).policy == policy

    records = [
        call(1, slot=0, hour=10),  # kept
        call(2, slot=1, hour=10),  # SIM slot not tracked
        call(3, slot=-1, hour=11),  # slot unknown: kept
        call(4, slot=0, hour=20),  # after office hours
        call(5, slot=0, hour=-14),  # Sunday
        call(6, slot=0, hour=10.5, number="09811100001"),  # never to upload
        call(7, slot=0, hour=9 - 1 / 60),  # 08:59, before office hours
        call(8, slot=0, hour=18 - 1 / 60),  # 17:59, kept
    ]
    ack = await ingest.Upload(batch(1, records), metadata=token)
    assert counts(ack) == (3, 0, 5, 0)
    assert (ack.dropped_by_policy, ack.erased, ack.policy_version) == (5, 0, policy.version)
    # Sent again: the three stored are duplicates, the five still dropped (never remembered).
    ack = await ingest.Upload(batch(2, records), metadata=token)
    assert (counts(ack), ack.dropped_by_policy) == ((0, 0, 8, 0), 5)

    kept = [("c1", "+919800000001"), ("c3", "+919800000003"), ("c8", "+919800000008")]
    assert await history(channel, tenant.admin) == kept
    assert sorted(c for _, c in await stored_calls(db, tenant.tenant_id)) == ["c1", "c3", "c8"]

    # A contact holding a never-upload number goes whole; telemetry is never dropped.
    contacts = ingest_pb2.UploadRequest(
        seq=3,
        batch_id="k",
        contacts=ingest_pb2.ContactBatch(
            records=[
                ingest_pb2.Contact(contact_id="k1", numbers=["+919800000001", PERSONAL]),
                ingest_pb2.Contact(contact_id="k2", numbers=["+919800000001"]),
            ]
        ),
    )
    ack = await ingest.Upload(contacts, metadata=token)
    assert (counts(ack), ack.dropped_by_policy) == ((1, 0, 1, 0), 1)
    telemetry = ingest_pb2.UploadRequest(
        seq=4,
        batch_id="t",
        telemetry=ingest_pb2.TelemetryBatch(
            records=[ingest_pb2.Telemetry(captured_at_ms=MONDAY_MS - DAY_MS, battery_pct=40)]
        ),
    )
    ack = await ingest.Upload(telemetry, metadata=token)
    assert (counts(ack), ack.dropped_by_policy) == ((1, 0, 0, 0), 0)

    # Stream acks carry the counts and the version too.
    async def one() -> AsyncIterator[ingest_pb2.UploadRequest]:
        yield batch(5, [call(9, slot=1, hour=10), call(10, slot=0, hour=12)])

    acks = [a async for a in ingest.Stream(one(), metadata=token)]
    assert [(counts(a), a.dropped_by_policy, a.policy_version) for a in acks] == [
        ((1, 0, 1, 0), 1, policy.version)
    ]


async def test_employee_override_replaces_the_tenant_policy(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    asha = await new_employee(channel, tenant, "Asha", "9876500001")
    ravi = await new_employee(channel, tenant, "Ravi", "9876500002")
    await admin.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=[PERSONAL]), metadata=tenant.admin
    )
    await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=OFFICE), metadata=tenant.admin
    )
    done = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(
            employee_id=ravi, policy=ingest_pb2.DevicePolicy(sim_slots=[1])
        ),
        metadata=tenant.admin,
    )
    assert list(done.effective.sim_slots) == [1]
    assert not done.effective.HasField("office_hours")
    override = await excluded_policy(admin, tenant, ravi)
    assert override.overridden
    assert list(override.policy.never_upload) == [match_hash(override.policy, PERSONAL)]
    for employee_id in ("", asha):
        got = await admin.GetDevicePolicy(
            admin_pb2.GetDevicePolicyRequest(employee_id=employee_id), metadata=tenant.admin
        )
        assert (got.overridden, list(got.policy.sim_slots)) == (False, [0])
        assert got.policy.office_hours.end_minute == 18 * 60
        # One version per tenant: every policy of the tenant carries it.
        assert got.policy.version == override.policy.version

    device = await enroll(channel, tenant, ravi)
    token = auth(device.device_token)
    assert device.policy == override.policy
    assert (await ingest.GetPolicy(ingest_pb2.GetPolicyRequest(), metadata=token)).policy == (
        override.policy
    )
    # No office hours in the override: a call at 20:00 on slot 1 is kept.
    ack = await ingest.Upload(
        batch(1, [call(1, 1, 20), call(2, 0, 10), call(3, 1, 10, number=PERSONAL)]),
        metadata=token,
    )
    assert (counts(ack), ack.dropped_by_policy) == ((1, 0, 2, 0), 2)

    # Cleared: the tenant's policy applies again, at a newer version.
    cleared = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(employee_id=ravi), metadata=tenant.admin
    )
    assert list(cleared.effective.sim_slots) == [0]
    assert cleared.effective.version > override.policy.version
    got = await admin.GetDevicePolicy(
        admin_pb2.GetDevicePolicyRequest(employee_id=ravi), metadata=tenant.admin
    )
    assert not got.overridden
    ack = await ingest.Upload(batch(2, [call(4, 1, 10), call(5, 0, 10)]), metadata=token)
    assert (counts(ack), ack.dropped_by_policy) == ((1, 0, 1, 0), 1)
    assert ack.policy_version == cleared.effective.version

    # Cleared for the tenant too: devices upload everything, excluded numbers included.
    await admin.SetDevicePolicy(admin_pb2.SetDevicePolicyRequest(), metadata=tenant.admin)
    ack = await ingest.Upload(
        batch(3, [call(6, 1, 20), call(7, 0, 10, number=PERSONAL)]), metadata=token
    )
    assert (counts(ack), ack.dropped_by_policy) == ((2, 0, 0, 0), 0)
    got = await admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=tenant.admin)
    assert got.policy == ingest_pb2.DevicePolicy(version=ack.policy_version)


async def test_a_change_reaches_acks_here_and_on_another_server(
    channel: grpc.aio.Channel, other: grpc.aio.Channel
) -> None:
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    here = ingest_pb2_grpc.IngestServiceStub(channel)
    there = ingest_pb2_grpc.IngestServiceStub(other)
    asha = await new_employee(channel, tenant, "Asha", "9876500001")
    device = await enroll(channel, tenant, asha)
    token = auth(device.device_token)
    assert device.policy == ingest_pb2.DevicePolicy(version=0)
    ack = await here.Upload(batch(1, [call(1, 1, 10)]), metadata=token)
    assert (counts(ack), ack.policy_version) == ((1, 0, 0, 0), 0)

    first = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=ingest_pb2.DevicePolicy(sim_slots=[0])),
        metadata=tenant.admin,
    )
    version = first.effective.version
    # Here at once.
    ack = await here.Upload(batch(2, [call(2, 1, 10)]), metadata=token)
    assert (ack.dropped_by_policy, ack.policy_version) == (1, version)

    async def there_until(want: int, seq: int) -> ingest_pb2.UploadAck:
        deadline = time.monotonic() + 5.0
        while True:
            ack = await there.Upload(batch(seq, [call(seq, 1, 10)]), metadata=token)
            if ack.policy_version == want:
                return ack
            assert time.monotonic() < deadline, "the change did not reach the other server"
            await asyncio.sleep(0.05)

    # There within its refresh interval (0.2 s), dropping by the new policy.
    ack = await there_until(version, 3)
    assert ack.dropped_by_policy == 1
    got = await ingest_pb2_grpc.IngestServiceStub(other).GetPolicy(
        ingest_pb2.GetPolicyRequest(), metadata=token
    )
    assert (got.policy.version, list(got.policy.sim_slots)) == (version, [0])

    # Changing the excluded numbers changes the policy (never_upload): the version rises.
    await admin.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=[PERSONAL]), metadata=tenant.admin
    )
    newer = (await excluded_policy(admin, tenant)).policy.version
    assert newer > version
    ack = await there_until(newer, 4)
    ack = await here.Upload(batch(5, [call(5, 0, 10, number=PERSONAL)]), metadata=token)
    assert (counts(ack), ack.dropped_by_policy, ack.policy_version) == ((0, 0, 1, 0), 1, newer)


async def test_bad_input_and_auth(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    asha = await new_employee(channel, tenant, "Asha", "9876500001")
    start = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=OFFICE), metadata=tenant.admin
    )

    async def refused(policy: ingest_pb2.DevicePolicy, code: CODE = CODE.INVALID_ARGUMENT) -> str:
        error = await expect_status(
            admin.SetDevicePolicy(
                admin_pb2.SetDevicePolicyRequest(policy=policy), metadata=tenant.admin
            ),
            code,
        )
        return error.details() or ""

    assert await refused(ingest_pb2.DevicePolicy(sim_slots=[0, 8])) == (
        "policy.sim_slots[1] is 8; SIM slots are 0-7"
    )
    assert await refused(ingest_pb2.DevicePolicy(sync_interval_s=10)) == (
        "policy.sync_interval_s is 10; send 0 (the agent's default) or 60-86400 seconds"
    )
    message = await refused(
        ingest_pb2.DevicePolicy(
            office_hours=ingest_pb2.OfficeHours(
                start_minute=600, end_minute=540, weekdays=[8], timezone="Mars/Olympus"
            )
        )
    )
    assert message == (
        "policy.office_hours.end_minute (540) must be after start_minute (600); a window across"
        " midnight is not supported; policy.office_hours.weekdays[0] is 8; ISO weekdays are 1"
        " (Monday) to 7 (Sunday); policy.office_hours.timezone 'Mars/Olympus' is not an IANA"
        ' time zone: send an Area/Location name such as "Asia/Kolkata", or "UTC"'
    )
    error = await expect_status(
        admin.SetDevicePolicy(
            admin_pb2.SetDevicePolicyRequest(employee_id="nobody", policy=OFFICE),
            metadata=tenant.admin,
        ),
        CODE.NOT_FOUND,
    )
    assert error.details() == "employee nobody does not exist in this tenant"
    await expect_status(
        admin.GetDevicePolicy(
            admin_pb2.GetDevicePolicyRequest(employee_id="x" * 129), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    # Nothing changed.
    got = await admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=tenant.admin)
    assert got.policy.version == start.effective.version

    # Roles: a reports key cannot set or read policies; a device reads only its own.
    reports_key = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="dash", role=common_pb2.ROLE_REPORTS),
        metadata=tenant.admin,
    )
    reports = auth(reports_key.api_key)
    await expect_status(
        admin.SetDevicePolicy(admin_pb2.SetDevicePolicyRequest(policy=OFFICE), metadata=reports),
        CODE.PERMISSION_DENIED,
    )
    await expect_status(
        admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=reports),
        CODE.PERMISSION_DENIED,
    )
    device = await enroll(channel, tenant, asha)
    await expect_status(
        admin.GetDevicePolicy(
            admin_pb2.GetDevicePolicyRequest(), metadata=auth(device.device_token)
        ),
        CODE.PERMISSION_DENIED,
    )
    await expect_status(
        ingest.GetPolicy(ingest_pb2.GetPolicyRequest(), metadata=tenant.admin),
        CODE.PERMISSION_DENIED,
    )
    await expect_status(ingest.GetPolicy(ingest_pb2.GetPolicyRequest()), CODE.UNAUTHENTICATED)
    await admin.RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=device.device_id), metadata=tenant.admin
    )
    await expect_status(
        ingest.GetPolicy(ingest_pb2.GetPolicyRequest(), metadata=auth(device.device_token)),
        CODE.UNAUTHENTICATED,
    )


async def test_policies_are_per_tenant(channel: grpc.aio.Channel) -> None:
    one = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    two = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    asha = await new_employee(channel, one, "Asha", "9876500001")
    ravi = await new_employee(channel, two, "Ravi", "9876500001")
    set_one = await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=OFFICE), metadata=one.admin
    )

    # Tenant two sees none of tenant one's policy and cannot reach its employees.
    got = await admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=two.admin)
    assert got.policy == ingest_pb2.DevicePolicy(version=0)
    for rpc in (
        admin.GetDevicePolicy(
            admin_pb2.GetDevicePolicyRequest(employee_id=asha), metadata=two.admin
        ),
        admin.SetDevicePolicy(
            admin_pb2.SetDevicePolicyRequest(employee_id=asha), metadata=two.admin
        ),
    ):
        await expect_status(rpc, CODE.NOT_FOUND)
    device_two = await enroll(channel, two, ravi)
    assert device_two.policy == ingest_pb2.DevicePolicy(version=0)
    ack = await ingest.Upload(batch(1, [call(1, 1, 20)]), metadata=auth(device_two.device_token))
    assert (counts(ack), ack.dropped_by_policy, ack.policy_version) == ((1, 0, 0, 0), 0, 0)

    # Tenant two's change leaves tenant one's policy and version alone.
    await admin.SetDevicePolicy(
        admin_pb2.SetDevicePolicyRequest(policy=ingest_pb2.DevicePolicy(sim_slots=[1])),
        metadata=two.admin,
    )
    got = await admin.GetDevicePolicy(admin_pb2.GetDevicePolicyRequest(), metadata=one.admin)
    assert got.policy == set_one.effective
    device_one = await enroll(channel, one, asha)
    ack = await ingest.Upload(batch(1, [call(1, 1, 10)]), metadata=auth(device_one.device_token))
    assert (ack.dropped_by_policy, ack.policy_version) == (1, set_one.effective.version)


async def test_a_full_load_forgets_numbers_erased_from_the_list(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await admin.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=[PERSONAL, "+919811100002"]),
        metadata=tenant.admin,
    )
    policies = Policies(db)
    await policies.load()
    assert len(policies.excluded(tenant.tenant_id).client_keys) == 2
    await admin.EraseNumber(admin_pb2.EraseNumberRequest(number=PERSONAL), metadata=tenant.admin)
    await policies.load()
    assert len(policies.excluded(tenant.tenant_id).sealed) == 1
