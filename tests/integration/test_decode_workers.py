"""Large batches decoded by the decode workers: a real server with one worker process, a real
gRPC stream, real chDB; the acks and the stored rows are what the loop's own decode gives."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import make_config
from tests.integration.calls import BASE_MS, batch, call, counts, stored_calls
from tests.integration.helpers import auth, enroll, new_employee, new_tenant, scrape, value


async def test_large_batches_go_to_the_workers_and_are_stored_exactly_once(
    data_dir: Path, log_file: Path
) -> None:
    svc = Service(make_config(data_dir, f"test_{secrets.token_hex(4)}", decode_workers=1))
    await svc.start()
    db = Database(svc.config.dsn.reveal(), svc.config.database)
    try:
        pool = svc.ingestor.pool if svc.ingestor is not None else None
        assert pool is not None
        await asyncio.wait_for(pool.start(), 60)  # started with the server; wait for it
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            tenant = await new_tenant(channel)
            employee = await new_employee(channel, tenant, "Asha", "9876543210")
            device = await enroll(channel, tenant, employee)
            # Four batches of 500 calls, one with two unusable numbers, then the first re-sent
            # and 100 of the second in a newer version.
            bad = {10, 20}
            third = [call(i, number="12" if i % 1000 in bad else None) for i in range(1000, 1500)]
            requests = [
                batch(1, [call(i) for i in range(500)]),
                batch(2, [call(i) for i in range(500, 1000)]),
                batch(3, third),
                batch(4, [call(i) for i in range(1500, 2000)]),
                batch(5, [call(i) for i in range(500)]),
                batch(6, [call(i, version=60_000) for i in range(500, 600)]),
            ]
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)

            async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
                for request in requests:
                    yield request

            acks = [a async for a in ingest.Stream(send(), metadata=auth(device.device_token))]
        assert [ack.seq for ack in acks] == [1, 2, 3, 4, 5, 6]
        assert [counts(ack) for ack in acks] == [
            (500, 0, 0, 0),
            (500, 0, 0, 0),
            (498, 0, 0, 2),
            (500, 0, 0, 0),
            (0, 0, 500, 0),
            (0, 100, 0, 0),
        ]
        assert [e.index for e in acks[2].errors] == sorted(bad)
        assert acks[2].errors[0].reason.startswith("number: '12' is not a possible phone number")
        stored = await stored_calls(db, tenant.tenant_id)
        assert len(stored) == 1998
        assert (device.device_id, "c1010") not in stored
        assert stored[(device.device_id, "c550")] == BASE_MS + 550_000 + 60_000
        assert stored[(device.device_id, "c650")] == BASE_MS + 650_000
        assert svc.ingestor is not None and svc.ingestor.decoder.decoded_by_workers >= 1
        stats = svc.ingestor.codec_stats()
        assert stats.number_misses > 0  # the workers' caches are counted
    finally:
        db.close()
        await svc.stop()


async def test_a_killed_worker_costs_no_batch_and_is_counted_as_a_restart(
    data_dir: Path, log_file: Path
) -> None:
    svc = Service(make_config(data_dir, f"test_{secrets.token_hex(4)}", decode_workers=1))
    await svc.start()
    try:
        pool = svc.ingestor.pool if svc.ingestor is not None else None
        assert pool is not None and svc.metrics_port is not None
        await asyncio.wait_for(pool.start(), 60)
        (pid,) = pool._stats  # the worker that answered
        os.kill(pid, signal.SIGKILL)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            tenant = await new_tenant(channel)
            employee = await new_employee(channel, tenant, "Asha", "9876543210")
            device = await enroll(channel, tenant, employee)
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            acks = []
            # Large batches until the server has noticed the death (the executor takes a moment).
            for seq in range(1, 40):
                first = seq * 500
                request = batch(seq, [call(i) for i in range(first, first + 500)])
                acks += [
                    a
                    async for a in ingest.Stream(_one(request), metadata=auth(device.device_token))
                ]
                if pool.restarts:
                    break
                await asyncio.sleep(0.1)
        assert pool.restarts == 1
        assert all(counts(ack) == (500, 0, 0, 0) for ack in acks)
        samples = await scrape(svc.metrics_port)
        assert value(samples, "callsight_decode_worker_restarts_total") == 1
    finally:
        await svc.stop()


async def _one(request: ingest_pb2.UploadRequest) -> AsyncIterator[ingest_pb2.UploadRequest]:
    yield request
