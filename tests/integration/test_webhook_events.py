"""Webhook events derived from what ingest stored, through a real server: client.never_attended
after its tenant-set delay (and not for a client called back), lead.first_call, device.silent;
and two dispatchers on one database, which never deliver an event twice and take over each
other's pending events when one stops."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from callsight.server import webhooks
from callsight.server.app import Service
from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc
from tests.conftest import make_config
from tests.integration.calls import batch, call
from tests.integration.helpers import auth, new_tenant
from tests.integration.receiver import (
    MISSED,
    SETTINGS,
    Received,
    Receiver,
    create,
    deliveries,
    device,
    missed,
    verify,
    wait_for,
)

NEVER_ATTENDED = admin_pb2.WEBHOOK_EVENT_CLIENT_NEVER_ATTENDED
FIRST_CALL = admin_pb2.WEBHOOK_EVENT_LEAD_FIRST_CALL
SILENT = admin_pb2.WEBHOOK_EVENT_DEVICE_SILENT


def now_ms() -> int:
    return int(time.time() * 1000)


def record(
    call_id: str, number: str, kind: int, started_ms: int, duration_s: int = 0
) -> ingest_pb2.CallRecord:
    return ingest_pb2.CallRecord(
        call_id=call_id,
        number=number,
        name=f"Client {call_id}",
        type=kind,  # type: ignore[arg-type]
        started_at_ms=started_ms,
        duration_s=duration_s,
    )


async def upload(
    channel: grpc.aio.Channel, token: str, seq: int, records: list[ingest_pb2.CallRecord]
) -> None:
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    ack = await ingest.Upload(batch(seq, records), metadata=auth(token))
    assert ack.accepted == len(records)


async def test_client_never_attended_after_its_delay_unless_the_client_was_called_back(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    tenant = await new_tenant(hooks_channel)
    created = await create(
        hooks_channel, tenant, receiver.url, MISSED, NEVER_ATTENDED, never_attended_after_s=3
    )
    employee, device_id, token = await device(hooks_channel, tenant)
    a, b, c, d = (f"+91 98000 5555{i}" for i in range(4))
    started = now_ms() - 500
    # Seen from here, the monotonic clock the receiver stamps its requests with.
    mono_at = time.monotonic() - (now_ms() - started) / 1000
    await upload(
        hooks_channel,
        token,
        1,
        [
            record("a1", a, common_pb2.CALL_TYPE_MISSED, started),
            record("b1", b, common_pb2.CALL_TYPE_MISSED, started),
            # Rejected, then an outgoing call nobody answered: still not attended.
            record("c1", c, common_pb2.CALL_TYPE_REJECTED, started),
            record("c2", c, common_pb2.CALL_TYPE_OUTGOING, started + 200),
            # A connected call before the missed one is no answer to it.
            record("d0", d, common_pb2.CALL_TYPE_INCOMING, started - 60_000, 30),
            record("d1", d, common_pb2.CALL_TYPE_MISSED, started),
        ],
    )
    # b is called back within the delay, in a later batch.
    await upload(
        hooks_channel,
        token,
        2,
        [record("b2", b, common_pb2.CALL_TYPE_OUTGOING, started + 300, 20)],
    )
    await wait_for(lambda: len(receiver.events("client.never_attended")) >= 3)
    await asyncio.sleep(2.0)  # nothing more comes, b's in particular
    for r in receiver.got:
        verify(created.secret, r)
    assert sorted(e["data"]["call_id"] for e in receiver.events("call.missed")) == [  # type: ignore[index]
        "a1",
        "b1",
        "c1",
        "d1",
    ]
    never = receiver.events("client.never_attended")
    assert sorted(e["data"]["call_id"] for e in never) == ["a1", "c1", "d1"]  # type: ignore[index]
    # Not before its delay ran out (3 s after the missed call started).
    for r in receiver.got:
        if json.loads(r.body)["type"] == "client.never_attended":
            assert r.at >= mono_at + 3.0 - 0.05
    event = next(e for e in never if e["data"]["call_id"] == "a1")  # type: ignore[index]
    missed_a = next(e for e in receiver.events("call.missed") if e["data"]["call_id"] == "a1")  # type: ignore[index]
    assert event["id"] != missed_a["id"]
    assert event["tenant_id"] == tenant.tenant_id
    assert event["created_at_ms"] == started + 3_000
    assert event["data"] == {
        "call_id": "a1",
        "device_id": device_id,
        "employee_id": employee,
        "call_type": "missed",
        "started_at_ms": started,
        "client_key": missed_a["data"]["client_key"],  # type: ignore[index]
        "not_returned_for_s": 3,
    }
    # The dropped event is gone from the outbox, not pending or dead.
    listed = await deliveries(hooks_channel, tenant, created.webhook.webhook_id)
    kinds = Counter(d.type for d in listed)
    assert kinds == {"call.missed": 4, "client.never_attended": 3}
    assert {d.state for d in listed} == {admin_pb2.DELIVERY_STATE_DELIVERED}


async def test_lead_first_call_is_the_first_outgoing_call_after_the_lead_was_created(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hooks_channel)
    tenant = await new_tenant(hooks_channel)
    created = await create(hooks_channel, tenant, receiver.url, FIRST_CALL, include_numbers=True)
    employee, device_id, token = await device(hooks_channel, tenant)
    x1, x2, x3 = "+91 98000 66661", "+91 98000 66662", "+91 98000 66663"

    async def new_lead(first_name: str, number: str) -> admin_pb2.ImportedLead:
        response = await admin.ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[admin_pb2.Lead(first_name=first_name, primary_number=number)]
            ),
            metadata=tenant.admin,
        )
        (lead,) = response.leads
        return lead

    outgoing = common_pb2.CALL_TYPE_OUTGOING
    # Calls to x1 before it was a lead do not count.
    await upload(hooks_channel, token, 1, [record("p1", x1, outgoing, now_ms() - 60_000, 30)])
    lead1 = await new_lead("Ravi", x1)
    await asyncio.sleep(0.05)
    # x2 is called after lead 1 was created but before it is a lead itself.
    await upload(hooks_channel, token, 2, [record("p2", x2, outgoing, now_ms(), 30)])
    await asyncio.sleep(0.05)
    lead2 = await new_lead("Meera", x2)
    await asyncio.sleep(0.05)
    at = now_ms()
    await upload(
        hooks_channel,
        token,
        3,
        [
            record("f1", x1, outgoing, at, 40),
            record("f2", x2, outgoing, at + 1, 0),  # unanswered still counts: it is a call
            record("u1", x3, outgoing, at, 10),  # not a lead
            record("m1", x1, common_pb2.CALL_TYPE_MISSED, at + 2),
        ],
    )
    await wait_for(lambda: len(receiver.got) >= 2)
    # Later calls to the leads raise nothing more.
    await upload(
        hooks_channel,
        token,
        4,
        [record("s1", x1, outgoing, now_ms(), 50), record("s2", x2, outgoing, now_ms(), 50)],
    )
    await asyncio.sleep(2.5)
    for r in receiver.got:
        verify(created.secret, r)
    events = {e["data"]["lead_id"]: e for e in receiver.events("lead.first_call")}  # type: ignore[index]
    assert len(receiver.got) == 2 and set(events) == {lead1.lead_id, lead2.lead_id}
    first = events[lead1.lead_id]
    assert first["tenant_id"] == tenant.tenant_id and first["created_at_ms"] == at
    assert first["data"] == {
        "lead_id": lead1.lead_id,
        "assigned_employee_id": lead1.employee_id,
        "employee_id": employee,
        "call_id": "f1",
        "device_id": device_id,
        "started_at_ms": at,
        "duration_s": 40,
        "client_key": first["data"]["client_key"],  # type: ignore[index]
        "number": "+919800066661",
        "first_name": "Ravi",
        "last_name": "",
    }
    assert events[lead2.lead_id]["data"]["call_id"] == "f2"  # type: ignore[index]
    assert events[lead2.lead_id]["data"]["first_name"] == "Meera"  # type: ignore[index]


async def test_device_silent_once_per_silence(
    hooks_channel: grpc.aio.Channel, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Devices are checked every second, not every ten.
    monkeypatch.setattr(webhooks, "SILENT_CHECK_S", 1.0)
    tenant = await new_tenant(hooks_channel)
    # The least allowed: twice the 5 s between writes of device activity, so a device that syncs
    # never looks silent.
    after_s = 10
    created = await create(
        hooks_channel, tenant, receiver.url, SILENT, device_silent_after_s=after_s
    )
    quiet_employee, quiet, quiet_token = await device(hooks_channel, tenant)
    _, busy, busy_token = await device(hooks_channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(hooks_channel)

    async def keep_syncing() -> None:
        for i in range(1000):
            await ingest.Upload(batch(i + 1, [call(i)]), metadata=auth(busy_token))
            await asyncio.sleep(1.0)

    syncing = asyncio.create_task(keep_syncing())
    try:
        before = now_ms()
        await ingest.Upload(batch(1, [call(1)]), metadata=auth(quiet_token))
        after = now_ms()
        await wait_for(lambda: len(receiver.got) >= 1, after_s + 15)
        (event,) = receiver.events("device.silent")
        synced = event["data"]["last_sync_ms"]  # type: ignore[index]
        assert isinstance(synced, int) and before <= synced <= after
        assert event["data"] == {
            "device_id": quiet,
            "employee_id": quiet_employee,
            "last_sync_ms": synced,
            "silent_for_s": after_s,
        }
        assert event["created_at_ms"] == synced + after_s * 1000
        assert receiver.got[0].at >= time.monotonic() - (now_ms() - synced) / 1000 + after_s - 0.05
        verify(created.secret, receiver.got[0])

        # A sync ends the silence; the next silence is a new event.
        await ingest.Upload(batch(2, [call(2)]), metadata=auth(quiet_token))
        await wait_for(lambda: len(receiver.got) >= 2, after_s + 15)
        await asyncio.sleep(2.0)
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
    events = receiver.events("device.silent")
    assert [e["data"]["device_id"] for e in events] == [quiet, quiet]  # type: ignore[index]
    assert events[1]["data"]["last_sync_ms"] > synced  # type: ignore[index]
    assert events[1]["id"] != event["id"]
    assert busy not in {e["data"]["device_id"] for e in events}  # type: ignore[index]


async def test_two_dispatchers_deliver_each_event_once_and_take_over_pending_events(
    data_dir: Path, log_file: Path, receiver: Receiver
) -> None:
    # Two servers on one database, like two processes on one ClickHouse.
    database = f"test_{secrets.token_hex(4)}"
    settings = {**SETTINGS, "webhook_retry_window_s": 600.0}
    servers = [Service(make_config(data_dir, database, **settings)) for _ in range(2)]
    for svc in servers:
        await svc.start()
    stopped: set[int] = set()
    answered: list[tuple[str, int]] = []
    status = 200

    def answer(r: Received) -> int:
        answered.append((r.headers["callsight-event-id"], status))
        return status

    receiver.answer = answer
    try:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") for svc in servers]
        tenant = await new_tenant(channels[0])
        created = await create(channels[0], tenant, receiver.url, MISSED)
        key = (tenant.tenant_id, created.webhook.webhook_id)
        _, _, token = await device(channels[0], tenant)

        def holders() -> list[int]:
            return [
                i
                for i, svc in enumerate(servers)
                if svc.webhooks is not None and key in svc.webhooks.dispatcher.held
            ]

        both: list[float] = []

        async def watch_holders() -> None:
            while True:
                if len(holders()) > 1:
                    both.append(time.monotonic())
                await asyncio.sleep(0.02)

        watching = asyncio.create_task(watch_holders())
        # Both run: each event goes to the endpoint once, from whichever holds the lease.
        for seq in range(1, 6):
            await upload(channels[0], token, seq, [missed(seq * 10 + i) for i in range(4)])
            await asyncio.sleep(0.3)
        await wait_for(lambda: len({i for i, _ in answered}) >= 20)
        await asyncio.sleep(1.5)
        assert len(answered) == 20 and len({i for i, _ in answered}) == 20
        (holder,) = holders()
        survivor = 1 - holder

        # The endpoint fails; the holder stops with events pending; the other takes them over.
        status = 500
        await upload(channels[0], token, 6, [missed(100 + i) for i in range(10)])
        await wait_for(lambda: sum(s == 500 for _, s in answered) >= 3)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        assert both == []
        await servers[holder].stop()
        stopped.add(holder)
        status = 200
        # Raised while nobody holds the lease (the survivor may still be learning the device).
        await wait_for(lambda: holders() == [survivor], 15)
        await upload(channels[survivor], token, 7, [missed(200 + i) for i in range(5)])
        await wait_for(lambda: len({i for i, s in answered if s == 200}) >= 35, 30)
        await asyncio.sleep(1.5)
        delivered = Counter(i for i, s in answered if s == 200)
        assert len(delivered) == 35 and set(delivered.values()) == {1}, delivered
        calls = {json.loads(r.body)["data"]["call_id"] for r in receiver.got}
        early = {f"c{seq * 10 + i}" for seq in range(1, 6) for i in range(4)}
        assert calls == early | {f"c{n}" for n in [*range(100, 110), *range(200, 205)]}
        listed = await deliveries(channels[survivor], tenant, key[1])
        assert len(listed) == 35
        assert {d.state for d in listed} == {admin_pb2.DELIVERY_STATE_DELIVERED}
        for ch in channels:
            await ch.close()
    finally:
        for i, svc in enumerate(servers):
            if i not in stopped:
                await svc.stop()
