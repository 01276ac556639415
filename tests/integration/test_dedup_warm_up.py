"""A server starting on a database that devices synced to loads their dedup state before their
first batch arrives: a fleet reconnecting after a restart does not wait for it batch by batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from callsight.server.app import Service
from callsight.v1 import ingest_pb2_grpc
from tests.conftest import make_config
from tests.integration.calls import batch, call
from tests.integration.helpers import auth, enroll, new_employee, new_tenant


async def test_a_starting_server_loads_the_recent_devices_and_counts_a_resend_once(
    service: Service, channel: grpc.aio.Channel, data_dir: Path
) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Warm", "9876500001")
    device = await enroll(channel, tenant, employee)
    upload = batch(1, [call(i) for i in range(5)])
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    first = await ingest.Upload(upload, metadata=auth(device.device_token))
    assert first.accepted == 5
    assert service._activity is not None
    await service._activity.flush()  # as every 5 s; the device is now recently active

    # A second server on the same database, as after a restart.
    svc = Service(make_config(data_dir, service.config.database))
    await svc.start()
    try:
        assert svc._dedup_warm_up is not None and svc.ingestor is not None
        await asyncio.wait_for(svc._dedup_warm_up, 10)
        assert svc.ingestor.dedup.loaded("calls", tenant.tenant_id, device.device_id)
        assert svc.ingestor.dedup.loaded("telemetry", tenant.tenant_id, device.device_id)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as restarted:
            again = await ingest_pb2_grpc.IngestServiceStub(restarted).Upload(
                upload, metadata=auth(device.device_token)
            )
        assert (again.accepted, again.duplicates) == (0, 5)
        assert "dedup_load" not in svc.ingestor.stages.summary()
    finally:
        await svc.stop()
