"""Keys and tenants (issue 12, item 1): ListTenants, DeleteTenant, ListApiKeys, RevokeApiKey,
RotateTenantKey, and rotating the operator token without a restart."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.core.errors import ConfigError, NotFound
from callsight.pipeline.crypto import key_id_of
from callsight.pipeline.keys import TenantKeys
from callsight.server.app import Service
from callsight.storage import tenants as stored
from callsight.storage.activity import FLUSH_EVERY_S as ACTIVITY_FLUSH_S
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.conftest import MASTER_KEY, make_config
from tests.integration.calls import BASE_MS, DAY_MS, batch, call, counts
from tests.integration.helpers import (
    OPERATOR,
    Metadata,
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


def window() -> report_pb2.ReportFilter:
    return report_pb2.ReportFilter(from_ms=BASE_MS - DAY_MS, to_ms=int(time.time() * 1000) + DAY_MS)


@pytest.fixture(scope="module")
async def other(service: Service, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A second server on the session's database, refreshing its identities every 0.2 s."""
    svc = Service(make_config(data_dir, service.config.database, directory_refresh_s=0.2))
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


async def refused_within(attempt: object, seconds: float) -> grpc.aio.AioRpcError:
    """Repeats ``attempt()`` (an RPC) until it fails; returns the error."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await attempt()  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            return exc
        assert time.monotonic() < deadline, "the call was not refused in time"
        await asyncio.sleep(0.05)


# ListTenants


async def test_list_tenants_shows_every_tenant_with_counts_to_the_operator_only(
    channel: grpc.aio.Channel,
) -> None:
    first = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    second = await new_tenant(channel, region="US", timezone="America/New_York")
    employee = await new_employee(channel, first, "Asha", "9876500011")
    await new_employee(channel, first, "Ravi", "9876500012")
    await enroll(channel, first, employee)
    await enroll(channel, first, employee)

    listed = await admin(channel).ListTenants(admin_pb2.ListTenantsRequest(), metadata=OPERATOR)
    by_id = {t.tenant_id: t for t in listed.tenants}
    assert (by_id[first.tenant_id].employees, by_id[first.tenant_id].devices) == (2, 2)
    assert (by_id[second.tenant_id].employees, by_id[second.tenant_id].devices) == (0, 0)
    assert (by_id[second.tenant_id].default_region, by_id[second.tenant_id].timezone) == (
        "US",
        "America/New_York",
    )
    assert abs(by_id[first.tenant_id].created_at_ms - time.time() * 1000) < 60_000
    names = [t.name.lower() for t in listed.tenants]
    assert names == sorted(names)

    error = await expect_status(
        admin(channel).ListTenants(admin_pb2.ListTenantsRequest(), metadata=first.admin),
        CODE.PERMISSION_DENIED,
    )
    assert "operator token" in (error.details() or "")


# ListApiKeys and RevokeApiKey


async def new_key(
    channel: grpc.aio.Channel, tenant: Tenant, name: str, role: int
) -> tuple[str, str]:
    created = await admin(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name=name, role=role), metadata=tenant.admin
    )
    return created.api_key, created.key_id


async def test_api_keys_are_listed_newest_first_without_secrets_with_their_last_use(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel)
    report_key, report_id = await new_key(channel, tenant, "dashboard", common_pb2.ROLE_REPORTS)
    idle_key, idle_id = await new_key(channel, tenant, "unused", common_pb2.ROLE_ADMIN)
    before = int(time.time() * 1000)
    await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=window()), metadata=auth(report_key)
    )

    listed = await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)
    assert [(k.name, k.role) for k in listed.keys] == [
        ("unused", common_pb2.ROLE_ADMIN),
        ("dashboard", common_pb2.ROLE_REPORTS),
        ("admin", common_pb2.ROLE_ADMIN),
    ]
    keys = {k.name: k for k in listed.keys}
    assert keys["unused"].key_id == idle_id and keys["dashboard"].key_id == report_id
    assert keys["unused"].last_used_at_ms == 0
    assert keys["dashboard"].last_used_at_ms >= before
    assert keys["admin"].last_used_at_ms >= before  # this very call
    assert all(k.revoked_at_ms == 0 and k.created_at_ms > 0 for k in listed.keys)
    wire = listed.SerializeToString()
    for token in (tenant.admin_key, report_key, idle_key):
        assert token.split("_", 2)[2].encode() not in wire

    # Uses are gathered in memory, not written per call.
    rows = await db.query(
        "SELECT count() FROM api_key_uses WHERE tenant_id = {t:String}", {"t": tenant.tenant_id}
    )
    assert rows[0][0] == 0

    # Another tenant's admin sees none of these keys.
    neighbour = await new_tenant(channel)
    theirs = await admin(channel).ListApiKeys(
        admin_pb2.ListApiKeysRequest(), metadata=neighbour.admin
    )
    assert [k.name for k in theirs.keys] == ["admin"]
    await expect_status(
        admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=auth(report_key)),
        CODE.PERMISSION_DENIED,
    )


async def test_key_uses_are_written_in_one_insert_per_flush(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel)
    key_id = (await stored.api_keys(db, tenant.tenant_id))[0].key_id
    uses = stored.KeyUses(db)
    for _ in range(1000):
        uses.touch(tenant.tenant_id, key_id)
    assert uses.pending(key_id) > 0
    assert await uses.flush() == 1
    assert uses.pending(key_id) == 0 and await uses.flush() == 0
    found = await stored.api_keys(db, tenant.tenant_id, key_id)
    assert abs(found[0].last_used_at_ms - time.time() * 1000) < 60_000


class Shredded:
    """Identities that know one tenant is being deleted."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id

    def shredded(self, tenant_id: str) -> bool:
        return tenant_id == self.tenant_id


async def test_uses_of_a_tenant_being_deleted_are_not_written(
    channel: grpc.aio.Channel, db: Database
) -> None:
    doomed, kept = await new_tenant(channel), await new_tenant(channel)
    uses = stored.KeyUses(db, identities=Shredded(doomed.tenant_id))  # type: ignore[arg-type]
    uses.touch(doomed.tenant_id, "doomed-key")
    uses.touch(kept.tenant_id, "kept-key")
    assert await uses.flush() == 1
    rows = await db.query(
        "SELECT tenant_id FROM api_key_uses WHERE tenant_id IN ({a:String}, {b:String})",
        {"a": doomed.tenant_id, "b": kept.tenant_id},
    )
    assert rows == [(kept.tenant_id,)]


async def test_a_server_writes_its_key_uses_when_it_stops(
    channel: grpc.aio.Channel, service: Service, data_dir: Path
) -> None:
    tenant = await new_tenant(channel)
    report_key, _ = await new_key(channel, tenant, "elsewhere", common_pb2.ROLE_REPORTS)
    svc = Service(make_config(data_dir, service.config.database))
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as elsewhere:
            await reports(elsewhere).CallSummary(
                report_pb2.CallSummaryRequest(filter=window()), metadata=auth(report_key)
            )
    finally:
        await svc.stop()
    listed = await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)
    assert {k.name: k.last_used_at_ms > 0 for k in listed.keys}["elsewhere"]


async def test_a_revoked_key_is_refused_here_at_once_and_in_another_process_within_a_second(
    channel: grpc.aio.Channel, other: grpc.aio.Channel
) -> None:
    tenant = await new_tenant(channel)
    report_key, report_id = await new_key(channel, tenant, "leaked", common_pb2.ROLE_REPORTS)
    summary = report_pb2.CallSummaryRequest(filter=window())
    await reports(channel).CallSummary(summary, metadata=auth(report_key))
    await reports(other).CallSummary(summary, metadata=auth(report_key))

    started = time.monotonic()
    await admin(channel).RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(key_id=report_id), metadata=tenant.admin
    )
    error = await expect_status(
        reports(channel).CallSummary(summary, metadata=auth(report_key)), CODE.UNAUTHENTICATED
    )
    assert "revoked" in (error.details() or "")
    error = await refused_within(
        lambda: reports(other).CallSummary(summary, metadata=auth(report_key)), seconds=2.0
    )
    assert error.code() == CODE.UNAUTHENTICATED
    assert time.monotonic() - started < 2.0

    listed = await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)
    revoked = {k.key_id: k.revoked_at_ms for k in listed.keys}
    assert abs(revoked[report_id] - time.time() * 1000) < 60_000
    assert [k.revoked_at_ms for k in listed.keys if k.key_id != report_id] == [0]
    # Revoking again changes nothing.
    await admin(channel).RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(key_id=report_id), metadata=tenant.admin
    )
    again = await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)
    assert {k.key_id: k.revoked_at_ms for k in again.keys}[report_id] == revoked[report_id]


async def test_revoke_api_key_refuses_itself_unknown_and_foreign_keys(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    neighbour = await new_tenant(channel)
    own_id = (
        (await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin))
        .keys[0]
        .key_id
    )
    _, foreign_id = await new_key(channel, neighbour, "theirs", common_pb2.ROLE_REPORTS)
    report_key, report_id = await new_key(channel, tenant, "reports", common_pb2.ROLE_REPORTS)

    def revoke(key_id: str, metadata: Metadata = tenant.admin) -> object:
        return admin(channel).RevokeApiKey(
            admin_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=metadata
        )

    error = await expect_status(revoke(own_id), CODE.FAILED_PRECONDITION)
    assert error.details() == (
        "an API key cannot revoke itself; revoke it with another ADMIN key of the tenant"
    )
    error = await expect_status(revoke(foreign_id), CODE.NOT_FOUND)
    assert error.details() == f"API key {foreign_id} does not exist in this tenant"
    await expect_status(revoke("f" * 32), CODE.NOT_FOUND)
    error = await expect_status(revoke("  "), CODE.INVALID_ARGUMENT)
    assert error.details() == "key_id is required"
    await expect_status(revoke(own_id, auth(report_key)), CODE.PERMISSION_DENIED)
    await expect_status(revoke(report_id, OPERATOR), CODE.PERMISSION_DENIED)

    # The neighbour's key still works: nothing of theirs was touched.
    listed = await admin(channel).ListApiKeys(
        admin_pb2.ListApiKeysRequest(), metadata=neighbour.admin
    )
    assert all(k.revoked_at_ms == 0 for k in listed.keys)
    # The tenant's own admin key still works too.
    await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)


# RotateTenantKey


async def call_key_ids(db: Database, tenant_id: str) -> set[int]:
    """Key ids named by the ciphertexts of the numbers of the tenant's calls (every version)."""
    rows = await db.query(
        "SELECT number_enc FROM parties WHERE tenant_id = {t:String}",
        {"t": tenant_id},
        binary=["number_enc"],
    )
    return {key_id_of(r[0]) for r in rows if r[0]}


async def test_rotation_keeps_old_ciphertexts_readable_and_indexes_stable(
    channel: grpc.aio.Channel, other: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel, region="IN")
    before_rotation = await new_employee(channel, tenant, "Asha", "9876500021")
    device = await enroll(channel, tenant, before_rotation)
    token = auth(device.device_token)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    # Calls 0-9: ten numbers (0-9 of the pool of 50).
    assert counts(await ingest.Upload(batch(1, [call(i) for i in range(10)]), metadata=token)) == (
        10,
        0,
        0,
        0,
    )
    summary = report_pb2.CallSummaryRequest(filter=window())
    first = (await reports(channel).CallSummary(summary, metadata=tenant.admin)).summary

    rotated = await admin(channel).RotateTenantKey(
        admin_pb2.RotateTenantKeyRequest(), metadata=tenant.admin
    )
    assert rotated.key_version > 1
    after_rotation = await new_employee(channel, tenant, "Ravi", "9876500022")
    # Calls 50-54 repeat numbers 0-4 (the pool of 50); call 3 comes again as a newer version.
    more = [call(i) for i in range(50, 55)] + [call(3, version=5_000, duration_s=999)]
    assert counts(await ingest.Upload(batch(2, more), metadata=token)) == (5, 1, 0, 0)
    # Both keys are in use: ciphertexts name key 1 and the new key.
    assert await call_key_ids(db, tenant.tenant_id) == {1, rotated.key_version}

    history = await reports(channel).CallHistory(
        report_pb2.CallHistoryRequest(filter=window(), page_size=1000), metadata=tenant.admin
    )
    assert len(history.calls) == 15
    assert {c.number for c in history.calls} == {f"+91{9_800_000_000 + i}" for i in range(10)}
    assert {c.name for c in history.calls} == {f"Client {i}" for i in range(10)}
    now = (await reports(channel).CallSummary(summary, metadata=tenant.admin)).summary
    # Blind indexes did not change: the repeated numbers are the same clients.
    assert (first.total_calls, now.total_calls) == (10, 15)
    assert (first.unique_clients, now.unique_clients) == (10, 10)
    clients = await reports(channel).UniqueClients(
        report_pb2.UniqueClientsRequest(filter=window(), page_size=1000), metadata=tenant.admin
    )
    assert len(clients.clients) == 10
    employees = await admin(channel).ListEmployees(
        admin_pb2.ListEmployeesRequest(), metadata=tenant.admin
    )
    assert {(e.employee_id, e.number) for e in employees.employees} == {
        (before_rotation, "+919876500021"),
        (after_rotation, "+919876500022"),
    }
    # Dedup holds across the rotation: a re-send of both batches stores nothing.
    assert counts(await ingest.Upload(batch(3, more), metadata=token)) == (0, 0, 6, 0)

    # Another process reads the new key's ciphertexts once it has refreshed (0.2 s there).
    async def history_elsewhere() -> int:
        found = await reports(other).CallHistory(
            report_pb2.CallHistoryRequest(filter=window(), page_size=1000), metadata=tenant.admin
        )
        return len({c.number for c in found.calls})

    await asyncio.sleep(1.0)
    assert await history_elsewhere() == 10

    # Erasure matches old and new calls alike: the number's index is the same under both keys.
    erased = await admin(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=f"+91{9_800_000_000 + 1}"), metadata=tenant.admin
    )
    assert erased.erased_calls == 2  # call 1 (key 1) and call 51 (the new key)

    # A second rotation: three keys, all readable.
    again = await admin(channel).RotateTenantKey(
        admin_pb2.RotateTenantKeyRequest(), metadata=tenant.admin
    )
    assert again.key_version not in (1, rotated.key_version)
    # Numbers 3-5 (number 1 is erased now: its calls would be dropped).
    assert counts(
        await ingest.Upload(batch(4, [call(i) for i in range(103, 106)]), metadata=token)
    ) == (3, 0, 0, 0)
    assert await call_key_ids(db, tenant.tenant_id) == {1, rotated.key_version, again.key_version}
    history = await reports(channel).CallHistory(
        report_pb2.CallHistoryRequest(filter=window(), page_size=1000), metadata=tenant.admin
    )
    assert len(history.calls) == 16 and all(c.number.startswith("+91") for c in history.calls)

    # A fresh keyring (a restarted process) reads the keys back in order: the newest current.
    ring = await TenantKeys(Directory(db), MASTER_KEY).keyring(tenant.tenant_id)
    assert ring.current.key_id == again.key_version


async def test_rotation_needs_an_admin_key(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    report_key, _ = await new_key(channel, tenant, "reports", common_pb2.ROLE_REPORTS)
    await expect_status(
        admin(channel).RotateTenantKey(
            admin_pb2.RotateTenantKeyRequest(), metadata=auth(report_key)
        ),
        CODE.PERMISSION_DENIED,
    )
    await expect_status(
        admin(channel).RotateTenantKey(admin_pb2.RotateTenantKeyRequest(), metadata=OPERATOR),
        CODE.PERMISSION_DENIED,
    )


# DeleteTenant


async def fill(
    channel: grpc.aio.Channel, tenant: Tenant, number: str
) -> ingest_pb2.RegisterDeviceResponse:
    """A tenant with data in every kind of table: employees, devices, calls, contacts,
    telemetry, leads, excluded numbers, erasures, rollups, key uses."""
    employee = await new_employee(channel, tenant, "Asha", number)
    device = await enroll(channel, tenant, employee)
    await admin(channel).CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee), metadata=tenant.admin
    )
    token = auth(device.device_token)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    await ingest.Upload(batch(1, [call(i) for i in range(20)]), metadata=token)
    await ingest.Upload(
        ingest_pb2.UploadRequest(
            seq=2,
            batch_id="k1",
            contacts=ingest_pb2.ContactBatch(
                records=[
                    ingest_pb2.Contact(
                        contact_id="k1", name="Kiran", numbers=["+919812300009"], updated_at_ms=1
                    )
                ]
            ),
        ),
        metadata=token,
    )
    await ingest.Upload(
        ingest_pb2.UploadRequest(
            seq=3,
            batch_id="t1",
            telemetry=ingest_pb2.TelemetryBatch(
                records=[ingest_pb2.Telemetry(captured_at_ms=BASE_MS, battery_pct=50)]
            ),
        ),
        metadata=token,
    )
    await admin(channel).ImportLeads(
        admin_pb2.ImportLeadsRequest(leads=[admin_pb2.Lead(primary_number="+919812300008")]),
        metadata=tenant.admin,
    )
    await admin(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=["+919812300007"]), metadata=tenant.admin
    )
    await admin(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number="+919812300006"), metadata=tenant.admin
    )
    await admin(channel).RotateTenantKey(admin_pb2.RotateTenantKeyRequest(), metadata=tenant.admin)
    await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=window()), metadata=tenant.admin
    )
    await reports(channel).EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=window()), metadata=tenant.admin
    )
    return device


async def rows_per_table(db: Database, tenant_id: str) -> dict[str, int]:
    tables = [
        r[0]
        for r in await db.query(
            "SELECT table FROM system.columns WHERE database = currentDatabase()"
            " AND name = 'tenant_id' AND table IN (SELECT name FROM system.tables"
            " WHERE database = currentDatabase() AND engine LIKE '%MergeTree')"
        )
    ]
    found = {}
    for table in tables:
        rows = await db.query(
            f"SELECT count() FROM {table} WHERE tenant_id = {{t:String}}", {"t": tenant_id}
        )
        found[table] = int(rows[0][0])
    return found


async def test_delete_tenant_shreds_its_keys_refuses_its_tokens_and_drops_every_row(
    channel: grpc.aio.Channel, other: grpc.aio.Channel, db: Database
) -> None:
    doomed = await new_tenant(channel)
    kept = await new_tenant(channel)
    device = await fill(channel, doomed, "9876500031")
    kept_device = await fill(channel, kept, "9876500032")
    await db.insert_rows(
        "api_key_uses",
        [(doomed.tenant_id, "k", BASE_MS // 1000)],
        ["tenant_id", "key_id", "last_used_at"],
    )
    before = await rows_per_table(db, doomed.tenant_id)
    for table in (
        "calls",
        "call_versions",
        "parties",
        "contacts",
        "telemetry",
        "leads",
        "excluded_numbers",
        "erasures",
        "employees",
        "devices",
        "api_keys",
        "enrollments",
        "tenants",
        "tenant_keys",
        "api_key_uses",
        "call_rollups",
    ):
        assert before.get(table, 0) > 0, (table, before)
    kept_before = await rows_per_table(db, kept.tenant_id)
    kept_summary = await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=window()), metadata=kept.admin
    )
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    elsewhere = ingest_pb2_grpc.IngestServiceStub(other)
    await elsewhere.Upload(batch(9, [call(30)]), metadata=auth(device.device_token))

    started = time.monotonic()
    deleted = await admin(channel).DeleteTenant(
        admin_pb2.DeleteTenantRequest(
            tenant_id=doomed.tenant_id, confirm_tenant_id=doomed.tenant_id
        ),
        metadata=OPERATOR,
    )
    assert deleted.keys_destroyed == 2
    assert time.monotonic() - started < 30

    # Its keys and tokens are refused, here and in the other process.
    for ch in (channel, other):
        await expect_status(
            admin(ch).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=doomed.admin),
            CODE.UNAUTHENTICATED,
        )
        await expect_status(
            ingest_pb2_grpc.IngestServiceStub(ch).Upload(
                batch(10, [call(40)]), metadata=auth(device.device_token)
            ),
            CODE.UNAUTHENTICATED,
        )
    # No row of it is left in any table, and its ciphertexts have no key to open them.
    after = await rows_per_table(db, doomed.tenant_id)
    assert after and all(n == 0 for n in after.values()), {t: n for t, n in after.items() if n}
    with pytest.raises(NotFound):
        await TenantKeys(Directory(db), MASTER_KEY).keyring(doomed.tenant_id)
    # Nor does a background writer of either process (device activity every few seconds) write
    # one back afterwards.
    await asyncio.sleep(ACTIVITY_FLUSH_S + 1)
    after = await rows_per_table(db, doomed.tenant_id)
    assert all(n == 0 for n in after.values()), {t: n for t, n in after.items() if n}
    listed = await admin(channel).ListTenants(admin_pb2.ListTenantsRequest(), metadata=OPERATOR)
    assert doomed.tenant_id not in {t.tenant_id for t in listed.tenants}
    assert kept.tenant_id in {t.tenant_id for t in listed.tenants}

    # The other tenant is untouched: same rows, same report, its device still uploads.
    # (Its devices' and keys' last-heard logs take new rows as it keeps working.)
    logs = ("device_activity", "api_key_uses")
    kept_after = await rows_per_table(db, kept.tenant_id)
    assert {t: n for t, n in kept_after.items() if t not in logs} == {
        t: n for t, n in kept_before.items() if t not in logs
    }
    again = await reports(channel).CallSummary(
        report_pb2.CallSummaryRequest(filter=window()), metadata=kept.admin
    )
    assert again.summary == kept_summary.summary
    ack = await ingest.Upload(batch(5, [call(60)]), metadata=auth(kept_device.device_token))
    assert counts(ack) == (1, 0, 0, 0)

    # Deleting it again: it does not exist.
    await expect_status(
        admin(channel).DeleteTenant(
            admin_pb2.DeleteTenantRequest(
                tenant_id=doomed.tenant_id, confirm_tenant_id=doomed.tenant_id
            ),
            metadata=OPERATOR,
        ),
        CODE.NOT_FOUND,
    )


async def test_delete_tenant_needs_the_operator_and_a_matching_confirmation(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)

    def delete(tenant_id: str, confirm: str, metadata: Metadata = OPERATOR) -> object:
        return admin(channel).DeleteTenant(
            admin_pb2.DeleteTenantRequest(tenant_id=tenant_id, confirm_tenant_id=confirm),
            metadata=metadata,
        )

    error = await expect_status(delete(tenant.tenant_id, ""), CODE.INVALID_ARGUMENT)
    assert "confirm_tenant_id must equal tenant_id" in (error.details() or "")
    await expect_status(delete(tenant.tenant_id, tenant.tenant_id + "x"), CODE.INVALID_ARGUMENT)
    error = await expect_status(delete("", ""), CODE.INVALID_ARGUMENT)
    assert error.details() == "tenant_id is required"
    error = await expect_status(delete("no-such-tenant", "no-such-tenant"), CODE.NOT_FOUND)
    assert error.details() == "tenant no-such-tenant does not exist"
    await expect_status(
        delete(tenant.tenant_id, tenant.tenant_id, tenant.admin), CODE.PERMISSION_DENIED
    )
    # Still there, still working.
    await admin(channel).ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=tenant.admin)


# The operator token, rotated without a restart


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


async def test_operator_token_file_rotates_without_a_restart(
    service: Service, data_dir: Path, tmp_path: Path
) -> None:
    old, new = (f"op-{secrets.token_urlsafe(24)}" for _ in range(2))
    path = tmp_path / "operator.tokens"
    write_atomically(path, old + "\n")
    svc = Service(
        make_config(
            data_dir,
            service.config.database,
            operator_token=None,
            operator_token_file=path,
            directory_refresh_s=0.2,
        )
    )
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:

            def list_with(token: str) -> object:
                return admin(ch).ListTenants(admin_pb2.ListTenantsRequest(), metadata=auth(token))

            await list_with(old)
            await expect_status(list_with(new), CODE.UNAUTHENTICATED)

            # 1. Both tokens: each works within a second.
            write_atomically(path, f"# rotating\n{old}\n{new}\n")
            await asyncio.sleep(0.5)
            await list_with(new)
            await list_with(old)
            # A broken file (empty, or a bad line) keeps the tokens as they were.
            write_atomically(path, "")
            await asyncio.sleep(0.5)
            await list_with(new)
            await list_with(old)
            write_atomically(path, "short\n")
            await asyncio.sleep(0.5)
            await list_with(old)
            # 2. The new token alone: the old one is refused within a second.
            write_atomically(path, new + "\n")
            error = await refused_within(lambda: list_with(old), seconds=1.5)
            assert error.code() == CODE.UNAUTHENTICATED
            await list_with(new)
    finally:
        await svc.stop()


def test_operator_token_file_is_checked_at_start(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("short\n")
    with pytest.raises(ConfigError) as info:
        make_config(data_dir, "x", operator_token=None, operator_token_file=path)
    assert "line 1: too short" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_config(data_dir, "x", operator_token_file=path)
    assert "not both" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_config(data_dir, "x", operator_token=None, operator_token_file=tmp_path / "none")
    assert "cannot read" in str(info.value)
