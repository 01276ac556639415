"""Durable erasure: after EraseNumber, calls and contacts with the number that devices send again
(the same versions or newer ones, to this server or another on the same database) are dropped
unstored and counted in the ack, until LiftErasure; after the lift a re-send is stored again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.pipeline.keys import TenantKeys
from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.conftest import MASTER_KEY, make_config
from tests.integration.calls import BASE_MS, DAY_MS, batch, call, counts
from tests.integration.helpers import (
    Metadata,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
GONE = "+919812300001"
KEPT = "+919812300002"


@pytest.fixture(scope="module")
async def other(service: Service, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A second server on the session's database, refreshing its identities every 0.2 s."""
    svc = Service(make_config(data_dir, service.config.database, directory_refresh_s=0.2))
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


def calls(version: int = 0) -> list[ingest_pb2.CallRecord]:
    """Two calls with the number to erase (spelled two ways) and one with another number."""
    return [
        call(1, version, number="098123 00001"),
        call(2, version, number=GONE),
        call(3, version, number=KEPT, recording_uri="content://rec/3.m4a"),
    ]


def contacts(version: int) -> ingest_pb2.UploadRequest:
    return ingest_pb2.UploadRequest(
        seq=100 + version,
        batch_id=f"k{version}",
        contacts=ingest_pb2.ContactBatch(
            records=[
                ingest_pb2.Contact(
                    contact_id="k1", name="Both", numbers=[KEPT, GONE], updated_at_ms=version
                ),
                ingest_pb2.Contact(
                    contact_id="k2", name="Kept", numbers=[KEPT], updated_at_ms=version
                ),
            ]
        ),
    )


async def reported_numbers(channel: grpc.aio.Channel, admin: Metadata) -> tuple[list[str], ...]:
    """(CallHistory numbers, UniqueClients numbers, CallHistory recording URIs)."""
    reports = report_pb2_grpc.ReportServiceStub(channel)
    window = report_pb2.ReportFilter(
        from_ms=BASE_MS - DAY_MS, to_ms=int(time.time() * 1000) + DAY_MS
    )
    history = await reports.CallHistory(
        report_pb2.CallHistoryRequest(filter=window, page_size=1000), metadata=admin
    )
    clients = await reports.UniqueClients(
        report_pb2.UniqueClientsRequest(filter=window, page_size=1000), metadata=admin
    )
    return (
        sorted(c.number for c in history.calls),
        sorted(c.number for c in clients.clients),
        sorted(c.recording_uri for c in history.calls),
    )


async def held(db: Database, tenant_id: str, bidx: bytes) -> tuple[int, int, int]:
    """Records holding the number in calls, parties and contacts (newest versions)."""
    params = {"t": tenant_id, "b": bidx}
    found = []
    for table, holds in (
        ("calls", "client_key = reinterpretAsUInt64(substring({b:FixedString(32)}, 1, 8))"),
        ("parties", "number_bidx = {b:FixedString(32)}"),
        ("contacts", "has(numbers_bidx, {b:FixedString(32)})"),
    ):
        rows = await db.query(
            f"SELECT count() FROM {table} FINAL WHERE tenant_id = {{t:String}} AND ({holds})",
            params,
        )
        found.append(int(rows[0][0]))
    return found[0], found[1], found[2]


async def test_erased_number_stays_erased_until_lifted(
    channel: grpc.aio.Channel, other: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel, region="IN")
    employee = await new_employee(channel, tenant, "Asha", "9876500099")
    device = await enroll(channel, tenant, employee)
    token = auth(device.device_token)
    here = ingest_pb2_grpc.IngestServiceStub(channel)
    there = ingest_pb2_grpc.IngestServiceStub(other)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    bidx = (await TenantKeys(Directory(db), MASTER_KEY).keyring(tenant.tenant_id)).blind_index(GONE)

    ack = await here.Upload(batch(1, calls()), metadata=token)
    assert (counts(ack), ack.erased) == ((3, 0, 0, 0), 0)
    ack = await here.Upload(contacts(1), metadata=token)
    assert (counts(ack), ack.erased) == ((2, 0, 0, 0), 0)
    assert await reported_numbers(channel, tenant.admin) == (
        [GONE, GONE, KEPT],
        [GONE, KEPT],
        ["", "", "content://rec/3.m4a"],
    )

    erased = await admin.EraseNumber(
        admin_pb2.EraseNumberRequest(number="98123 00001"), metadata=tenant.admin
    )
    assert (erased.erased_calls, erased.erased_contacts, erased.erased_leads) == (2, 1, 0)

    # The same batch again, here: the erased calls are dropped, the other is a duplicate.
    ack = await here.Upload(batch(2, calls()), metadata=token)
    assert (counts(ack), ack.erased) == ((0, 0, 3, 0), 2)
    # Newer versions, and a new call with the number, through the other server.
    newer = [*calls(version=5), call(4, number=GONE)]
    ack = await there.Upload(batch(3, newer), metadata=token)
    assert (counts(ack), ack.erased) == ((0, 1, 3, 0), 3)
    # A contact holding the number goes whole; the other contact is stored.
    ack = await there.Upload(contacts(2), metadata=token)
    assert (counts(ack), ack.erased) == ((0, 1, 1, 0), 1)

    assert await held(db, tenant.tenant_id, bidx) == (0, 0, 0)
    assert await reported_numbers(channel, tenant.admin) == (
        [KEPT],
        [KEPT],
        ["content://rec/3.m4a"],
    )

    # Lifted: nothing comes back by itself, but a re-send is stored again.
    lifted = await admin.LiftErasure(
        admin_pb2.LiftErasureRequest(number=GONE), metadata=tenant.admin
    )
    assert lifted.lifted
    again = await admin.LiftErasure(
        admin_pb2.LiftErasureRequest(number=GONE), metadata=tenant.admin
    )
    assert not again.lifted
    assert await held(db, tenant.tenant_id, bidx) == (0, 0, 0)
    ack = await here.Upload(batch(4, calls()), metadata=token)
    # c3 is stored at version 5 already (sent through the other server).
    assert (counts(ack), ack.erased) == ((2, 0, 1, 0), 0)
    # The other server learns of the lift at its next refresh (0.2 s).
    deadline = time.monotonic() + 5.0
    while True:
        ack = await there.Upload(batch(5, [call(4, number=GONE)]), metadata=token)
        if ack.erased == 0:
            break
        assert time.monotonic() < deadline, "the lift did not reach the other server"
        await asyncio.sleep(0.05)
    assert counts(ack) == (1, 0, 0, 0)
    # k1 was erased whole, so it is new again; k2 is a newer version.
    ack = await there.Upload(contacts(3), metadata=token)
    assert (counts(ack), ack.erased) == ((1, 1, 0, 0), 0)
    # Three calls; a party per name the calls gave the number; the contact.
    assert await held(db, tenant.tenant_id, bidx) == (3, 3, 1)
    assert await reported_numbers(channel, tenant.admin) == (
        [GONE, GONE, GONE, KEPT],
        [GONE, KEPT],
        ["", "", "", "content://rec/3.m4a"],
    )

    for bad in ("", "12"):
        await expect_status(
            admin.LiftErasure(admin_pb2.LiftErasureRequest(number=bad), metadata=tenant.admin),
            CODE.INVALID_ARGUMENT,
        )


async def test_erasure_is_per_tenant(channel: grpc.aio.Channel) -> None:
    first, second = await new_tenant(channel), await new_tenant(channel)
    devices = []
    for tenant in (first, second):
        employee = await new_employee(channel, tenant, "Ravi", "9876500098")
        devices.append(await enroll(channel, tenant, employee))
    await admin_pb2_grpc.AdminServiceStub(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=GONE), metadata=first.admin
    )
    here = ingest_pb2_grpc.IngestServiceStub(channel)
    acks = [await here.Upload(batch(1, calls()), metadata=auth(d.device_token)) for d in devices]
    assert [(counts(a), a.erased) for a in acks] == [((1, 0, 2, 0), 2), ((3, 0, 0, 0), 0)]
