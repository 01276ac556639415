"""A device with a long history that dedup memory had to let go is not reloaded whole when it
syncs again: its batch looks up only the records it names, and is still counted exactly."""

from __future__ import annotations

from pathlib import Path

import grpc

from callsight.pipeline.dedup import LARGE_DEVICE
from callsight.server.app import Service
from callsight.v1 import ingest_pb2_grpc
from tests.conftest import make_config
from tests.integration.calls import batch, call
from tests.integration.helpers import auth, enroll, new_employee, new_tenant


async def test_an_evicted_large_device_is_counted_exactly_from_a_lookup_by_keys(
    service: Service, data_dir: Path
) -> None:
    svc = Service(make_config(data_dir, service.config.database, dedup_max_entries=LARGE_DEVICE))
    await svc.start()
    try:
        assert svc.ingestor is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            tenant = await new_tenant(channel)
            phones = []
            for name, number in (("Large", "9876500011"), ("Other", "9876500012")):
                employee = await new_employee(channel, tenant, name, number)
                phones.append(await enroll(channel, tenant, employee))
            large, other = phones
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            history = [call(i) for i in range(LARGE_DEVICE)]
            for seq, start in enumerate(range(0, LARGE_DEVICE, 500), 1):
                ack = await ingest.Upload(
                    batch(seq, history[start : start + 500]), metadata=auth(large.device_token)
                )
                assert ack.accepted == 500
            # Another device's records push the large one out of memory.
            ack = await ingest.Upload(
                batch(1, [call(i) for i in range(10)]), metadata=auth(other.device_token)
            )
            assert ack.accepted == 10
            assert not svc.ingestor.dedup.loaded("calls", tenant.tenant_id, large.device_id)

            # The large device re-sends ten stored calls (one of them newer) beside five new ones.
            resend = [call(i) for i in range(9)] + [call(9, version=1)]
            resend += [call(i) for i in range(LARGE_DEVICE, LARGE_DEVICE + 5)]
            ack = await ingest.Upload(batch(3, resend), metadata=auth(large.device_token))
            assert (ack.accepted, ack.updated, ack.duplicates) == (5, 1, 9)
            # Only what the batch named came back into memory, not the device's 1,000 records.
            assert svc.ingestor.dedup.entries == 10 + 15
            again = await ingest.Upload(batch(4, resend), metadata=auth(large.device_token))
            assert (again.accepted, again.updated, again.duplicates) == (0, 0, 15)
    finally:
        await svc.stop()
