"""Stream and Upload end to end: acks, dedup, rejections, contacts and telemetry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from callsight.pipeline.limits import MAX_BATCH_BYTES
from callsight.server.app import MAX_MESSAGE_BYTES, Service
from callsight.storage.database import Database
from callsight.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests.integration.calls import (
    BASE_MS,
    DAY_MS,
    batch,
    call,
    counts,
    raw_call_rows,
    stored_calls,
)
from tests.integration.helpers import Tenant, auth, enroll, expect_status, new_employee, new_tenant

CODE = grpc.StatusCode


async def _device(
    channel: grpc.aio.Channel, tenant: Tenant | None = None
) -> tuple[Tenant, ingest_pb2.RegisterDeviceResponse]:
    tenant = tenant or await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Asha", "9876543210")
    return tenant, await enroll(channel, tenant, employee)


async def _stream(
    channel: grpc.aio.Channel, token: str, requests: list[ingest_pb2.UploadRequest]
) -> list[ingest_pb2.UploadAck]:
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)

    async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
        for request in requests:
            yield request

    return [ack async for ack in ingest.Stream(send(), metadata=auth(token))]


async def test_ack_counts_follow_the_version_semantics(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant, device = await _device(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    token = auth(device.device_token)
    records = [call(i) for i in range(100)]

    fresh = await ingest.Upload(batch(1, records), metadata=token)
    assert (fresh.seq, fresh.batch_id, fresh.result) == (1, "b1", ingest_pb2.UPLOAD_RESULT_ACCEPTED)
    assert counts(fresh) == (100, 0, 0, 0)
    assert fresh.server_time_ms > BASE_MS

    resent = await ingest.Upload(batch(1, records), metadata=token)
    assert counts(resent) == (0, 0, 100, 0)

    rebatched = await ingest.Upload(
        batch(2, records[:40] + [call(i) for i in range(100, 110)]), metadata=token
    )
    assert counts(rebatched) == (10, 0, 40, 0)

    newer = [call(i, version=5_000, note="called back") for i in range(20)]
    older = [call(i, version=1) for i in range(20, 30)]  # version 1 ms after start: newer than 0
    same = [call(i) for i in range(30, 35)]
    mixed = await ingest.Upload(batch(3, newer + older + same), metadata=token)
    assert counts(mixed) == (0, 30, 5, 0)
    # Re-sending a superseded version is a duplicate.
    stale = await ingest.Upload(batch(4, [call(i) for i in range(20)]), metadata=token)
    assert counts(stale) == (0, 0, 20, 0)

    stored = await stored_calls(db, tenant.tenant_id)
    assert len(stored) == 110
    assert stored[(device.device_id, "c0")] == BASE_MS + 5_000
    assert stored[(device.device_id, "c50")] == BASE_MS + 50 * 1_000
    # Duplicates never reached the table: at most one physical row per accepted or updated
    # record (a background merge may already have collapsed the updated versions).
    assert 110 <= await raw_call_rows(db, tenant.tenant_id) <= 110 + 30


async def test_invalid_records_are_rejected_by_index_and_the_rest_is_taken(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant, device = await _device(channel)
    records = [
        call(0),
        call(1, call_id=""),
        call(2, number="12"),
        call(3, duration_s=90_000),
        call(4, started_at_ms=BASE_MS + 10 * DAY_MS),
        call(5, started_at_ms=900_000_000_000),
        call(6, type=0),
        call(7),
    ]
    (ack,) = await _stream(channel, device.device_token, [batch(1, records)])
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED
    assert counts(ack) == (2, 0, 0, 6)
    reasons = {e.index: e.reason for e in ack.errors}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "call_id" in reasons[1]
    assert "duration_s" in reasons[3]
    assert "future" in reasons[4]
    assert "2000" in reasons[5]
    stored = await stored_calls(db, tenant.tenant_id)
    assert sorted(c for _, c in stored) == ["c0", "c7"]


async def test_whole_batch_rejections(channel: grpc.aio.Channel) -> None:
    _, device = await _device(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    token = auth(device.device_token)
    empty = ingest_pb2.UploadRequest(seq=1, batch_id="empty")
    too_many = batch(2, [call(i) for i in range(10_001)])
    # Just over 4 MiB, under grpc's message limit (server.app.MAX_MESSAGE_BYTES): refused by
    # us, precisely; a longer message is refused by grpc (tests/integration/test_stream_bounds.py).
    too_big = batch(3, [call(i, note="x" * 467_000) for i in range(9)])
    assert MAX_BATCH_BYTES < too_big.ByteSize() < MAX_MESSAGE_BYTES
    for request in (empty, too_many, too_big):
        await expect_status(ingest.Upload(request, metadata=token), CODE.INVALID_ARGUMENT)
    # On a stream each gets a REJECTED ack and the stream stays open for the next batch.
    acks = await _stream(
        channel, device.device_token, [empty, too_many, too_big, batch(4, [call(1)])]
    )
    assert [a.result for a in acks] == [ingest_pb2.UPLOAD_RESULT_REJECTED] * 3 + [
        ingest_pb2.UPLOAD_RESULT_ACCEPTED
    ]
    assert [a.seq for a in acks] == [1, 2, 3, 4]
    assert "payload" in acks[0].errors[0].reason
    assert "10000" in acks[1].errors[0].reason
    assert counts(acks[3]) == (1, 0, 0, 0)


async def test_undecodable_message_on_a_stream_is_rejected_in_stream(
    channel: grpc.aio.Channel,
) -> None:
    _, device = await _device(channel)
    stream = channel.stream_stream(
        "/callsight.v1.IngestService/Stream",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.UploadAck.FromString,
    )

    async def send() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff"
        yield batch(2, [call(0)]).SerializeToString()

    acks = [a async for a in stream(send(), metadata=auth(device.device_token))]
    assert [a.result for a in acks] == [
        ingest_pb2.UPLOAD_RESULT_REJECTED,
        ingest_pb2.UPLOAD_RESULT_ACCEPTED,
    ]
    assert "decode" in acks[0].errors[0].reason


async def test_two_connections_of_one_device_store_each_call_once(
    service: Service, channel: grpc.aio.Channel, db: Database
) -> None:
    tenant, device = await _device(channel)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as other:
        first = [batch(s, [call(i) for i in range(s * 100, s * 100 + 150)]) for s in range(10)]
        second = [
            batch(s, [call(i) for i in range(s * 100 + 50, s * 100 + 200)]) for s in range(10)
        ]
        a, b = await asyncio.gather(
            _stream(channel, device.device_token, first),
            _stream(other, device.device_token, second),
        )
    unique = {f"c{i}" for s in range(10) for i in range(s * 100, s * 100 + 200)}
    stored = await stored_calls(db, tenant.tenant_id)
    assert {c for _, c in stored} == unique
    assert await raw_call_rows(db, tenant.tenant_id) == len(unique)
    assert sum(x.accepted for x in a + b) == len(unique)
    assert sum(x.accepted + x.duplicates for x in a + b) == 20 * 150


async def test_contacts_and_telemetry_go_through_the_same_path(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant, device = await _device(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    token = auth(device.device_token)
    contacts = [
        ingest_pb2.Contact(
            contact_id=f"k{i}",
            name=f"Client {i}",
            numbers=[f"98000000{i:02d}"],
            updated_at_ms=BASE_MS,
        )
        for i in range(10)
    ]
    request = ingest_pb2.UploadRequest(
        seq=1, batch_id="k1", contacts=ingest_pb2.ContactBatch(records=contacts)
    )
    assert counts(await ingest.Upload(request, metadata=token)) == (10, 0, 0, 0)
    assert counts(await ingest.Upload(request, metadata=token)) == (0, 0, 10, 0)
    deleted = ingest_pb2.Contact(contact_id="k3", updated_at_ms=BASE_MS + 1, deleted=True)
    update = ingest_pb2.UploadRequest(
        seq=2, batch_id="k2", contacts=ingest_pb2.ContactBatch(records=[deleted])
    )
    assert counts(await ingest.Upload(update, metadata=token)) == (0, 1, 0, 0)
    rows = await db.query(
        "SELECT contact_id, deleted FROM contacts FINAL WHERE tenant_id = {t:String}",
        {"t": tenant.tenant_id},
    )
    assert len(rows) == 10 and dict(rows)["k3"] is True and dict(rows)["k2"] is False

    samples = [
        ingest_pb2.Telemetry(
            captured_at_ms=BASE_MS + i * 900_000, battery_pct=80 - i, latitude=12.9, longitude=77.6
        )
        for i in range(5)
    ]
    telemetry = ingest_pb2.UploadRequest(
        seq=3, batch_id="t1", telemetry=ingest_pb2.TelemetryBatch(records=samples)
    )
    assert counts(await ingest.Upload(telemetry, metadata=token)) == (5, 0, 0, 0)
    assert counts(await ingest.Upload(telemetry, metadata=token)) == (0, 0, 5, 0)
    rows = await db.query(
        "SELECT count() FROM telemetry FINAL WHERE tenant_id = {t:String}", {"t": tenant.tenant_id}
    )
    assert rows[0][0] == 5


async def test_revoked_device_stream_is_cut_off(channel: grpc.aio.Channel) -> None:
    tenant, device = await _device(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    queue: asyncio.Queue[ingest_pb2.UploadRequest | None] = asyncio.Queue()

    async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
        while (item := await queue.get()) is not None:
            yield item

    call_ = ingest.Stream(send(), metadata=auth(device.device_token))
    await queue.put(batch(1, [call(0)]))
    first = await call_.read()
    assert first.accepted == 1
    await admin.RevokeDevice(
        admin_pb2.RevokeDeviceRequest(device_id=device.device_id), metadata=tenant.admin
    )
    await queue.put(batch(2, [call(1)]))
    await expect_status(call_.read(), CODE.UNAUTHENTICATED)
    await queue.put(None)
