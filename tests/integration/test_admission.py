"""Bounds a misbehaving caller or a refusing database cannot push past, on a real server.

A stream whose client never reads its acks stops being read once ``stream_max_unacked`` acks
are outstanding; a batch ClickHouse refuses for good fails its own ack with a precise reason
while other tables and devices keep flowing, and its versions are forgotten by deduplication.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.writer import Sink
from callsight.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import make_config
from tests.faults import FaultInjectingWriter
from tests.integration.calls import batch, call, counts
from tests.integration.helpers import auth, enroll, expect_status, new_employee, new_tenant

MAX_UNACKED = 4
TYPE_MISMATCH = 53


@pytest.fixture(scope="module")
async def faulty(data_dir: Path) -> AsyncIterator[tuple[Service, FaultInjectingWriter]]:
    faults: list[FaultInjectingWriter] = []

    def wrap(sink: Sink) -> Sink:
        faults.append(FaultInjectingWriter(sink))
        return faults[0]

    svc = Service(
        make_config(data_dir, f"admission_{secrets.token_hex(4)}", stream_max_unacked=MAX_UNACKED),
        wrap_sink=wrap,
    )
    await svc.start()
    try:
        yield svc, faults[0]
    finally:
        await svc.stop()


async def _device_token(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        tenant = await new_tenant(channel)
        employee = await new_employee(channel, tenant, "Asha", "9876543210")
        return (await enroll(channel, tenant, employee)).device_token


async def test_a_stream_whose_acks_are_not_read_stops_being_read(
    faulty: tuple[Service, FaultInjectingWriter],
) -> None:
    svc, _ = faulty
    assert svc.ingestor is not None
    token = await _device_token(svc.port)
    # Every record is invalid: each ack carries 2,000 errors (tens of KB) and is ready at once.
    requests = [batch(s, [call(i, call_id="") for i in range(2_000)]) for s in range(1, 301)]
    sent = 0

    async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
        nonlocal sent
        for request in requests:
            sent += 1
            yield request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        stream = ingest_pb2_grpc.IngestServiceStub(channel).Stream(send(), metadata=auth(token))
        before = svc.ingestor.admitted
        # The client reads nothing: admission stops once the bound and what the HTTP/2
        # flow-control windows hold (sent acks, a few MB) are used up, far short of them all.
        admitted, previous = 0, -1
        for _ in range(20):
            await asyncio.sleep(0.5)
            previous, admitted = admitted, svc.ingestor.admitted - before
            if admitted == previous and admitted >= MAX_UNACKED:
                break
        assert admitted == previous, "the server kept reading a client that reads no acks"
        assert MAX_UNACKED <= admitted < len(requests) // 2
        assert sent > admitted  # the client had more to send: the server stopped reading
        read = [await stream.read() for _ in requests]
        acks = [a for a in read if isinstance(a, ingest_pb2.UploadAck)]
        assert [a.seq for a in acks] == [r.seq for r in requests]
        assert all(a.rejected == 2_000 for a in acks)
        assert await stream.read() == grpc.aio.EOF
    assert sent == len(requests)


async def test_a_refused_batch_fails_its_own_ack_and_everything_else_flows(
    faulty: tuple[Service, FaultInjectingWriter],
) -> None:
    svc, faults = faulty
    token = await _device_token(svc.port)
    other_token = await _device_token(svc.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        faults.fail_until_cleared(code=TYPE_MISMATCH, tables=["calls"])
        try:
            refused = batch(1, [call(i) for i in range(10)])
            error = await expect_status(
                ingest.Upload(refused, metadata=auth(token)), grpc.StatusCode.INTERNAL
            )
            assert "refused" in (error.details() or "")
            assert "53 TYPE_MISMATCH" in (error.details() or "")

            # On a stream the batch gets a REJECTED ack saying why; the stream goes on.
            async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
                yield batch(2, [call(i) for i in range(10, 20)])

            (ack,) = [a async for a in ingest.Stream(send(), metadata=auth(other_token))]
            assert ack.result == ingest_pb2.UPLOAD_RESULT_REJECTED
            assert "TYPE_MISMATCH" in ack.errors[0].reason

            # Another table is written meanwhile.
            contacts = ingest_pb2.UploadRequest(
                seq=3,
                batch_id="k1",
                contacts=ingest_pb2.ContactBatch(
                    records=[ingest_pb2.Contact(contact_id="k1", name="Client", updated_at_ms=1)]
                ),
            )
            assert counts(await ingest.Upload(contacts, metadata=auth(token))) == (1, 0, 0, 0)
        finally:
            faults.clear()
        # Nothing of the refused batch was remembered as stored: re-sent, it is all new.
        assert counts(await ingest.Upload(refused, metadata=auth(token))) == (10, 0, 0, 0)
