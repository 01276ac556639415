"""Webhooks through a real server: CRUD, signed deliveries to a local receiver that fails on
purpose (5xx, timeouts, refused connections), retries, dead letters, replay, and a SIGKILL in
the middle that loses no pending event."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc

from callsight.loadtest.harness import ServerProcess
from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc
from tests.integration.calls import BASE_MS, batch, call
from tests.integration.helpers import Tenant, auth, expect_status, new_tenant
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


async def test_crud_validation_and_tenant_isolation(hooks_channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hooks_channel)
    tenant, other = await new_tenant(hooks_channel), await new_tenant(hooks_channel)
    created = await create(hooks_channel, tenant, "https://crm.example.com/hook", MISSED, MISSED)
    assert created.secret.startswith("whsec_") and len(created.secret) > 40
    hook = created.webhook
    assert list(hook.events) == [MISSED]
    assert hook.never_attended_after_s == 3600 and hook.device_silent_after_s == 86400
    listed = await admin.ListWebhooks(admin_pb2.ListWebhooksRequest(), metadata=tenant.admin)
    assert [w.webhook_id for w in listed.webhooks] == [hook.webhook_id]
    assert "whsec_" not in str(listed)

    for url, words in (
        ("http://crm.example.com/hook", "only to a loopback"),
        ("http://10.0.0.1/hook", "only to a loopback"),
        ("ftp://crm.example.com/hook", "https://"),
        ("", "required"),
        ("https://user:pw@crm.example.com/", "user or password"),
    ):
        error = await expect_status(
            create(hooks_channel, tenant, url, MISSED), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert words in (error.details() or ""), (url, error.details())
    for loopback in ("http://127.0.0.2:9/x", "http://[::1]:9/x", "http://localhost:9/x"):
        await create(hooks_channel, other, loopback, MISSED)
    error = await expect_status(
        create(hooks_channel, tenant, "https://a.example.com"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "at least one" in (error.details() or "")
    error = await expect_status(
        create(hooks_channel, tenant, "https://a.example.com", 99), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "[99]" in (error.details() or "") and "WEBHOOK_EVENT_CALL_MISSED" in (
        error.details() or ""
    )
    error = await expect_status(
        create(hooks_channel, tenant, "https://a.example.com", MISSED, device_silent_after_s=9),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "device_silent_after_s must be at least 10 s" in (error.details() or "")

    # Another tenant neither sees nor changes it.
    theirs = await admin.ListWebhooks(admin_pb2.ListWebhooksRequest(), metadata=other.admin)
    assert hook.webhook_id not in {w.webhook_id for w in theirs.webhooks}
    for rpc, req in (
        (admin.DeleteWebhook, admin_pb2.DeleteWebhookRequest(webhook_id=hook.webhook_id)),
        (admin.TestWebhook, admin_pb2.TestWebhookRequest(webhook_id=hook.webhook_id)),
        (
            admin.ListWebhookDeliveries,
            admin_pb2.ListWebhookDeliveriesRequest(webhook_id=hook.webhook_id),
        ),
        (
            admin.ReplayWebhookDeliveries,
            admin_pb2.ReplayWebhookDeliveriesRequest(webhook_id=hook.webhook_id),
        ),
    ):
        error = await expect_status(rpc(req, metadata=other.admin), grpc.StatusCode.NOT_FOUND)
        assert hook.webhook_id in (error.details() or "")

    await admin.DeleteWebhook(
        admin_pb2.DeleteWebhookRequest(webhook_id=hook.webhook_id), metadata=tenant.admin
    )
    listed = await admin.ListWebhooks(admin_pb2.ListWebhooksRequest(), metadata=tenant.admin)
    assert list(listed.webhooks) == []
    await expect_status(
        admin.DeleteWebhook(
            admin_pb2.DeleteWebhookRequest(webhook_id=hook.webhook_id), metadata=tenant.admin
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_test_webhook_reports_how_the_endpoint_answered(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hooks_channel)
    tenant = await new_tenant(hooks_channel)
    created = await create(hooks_channel, tenant, receiver.url, MISSED)
    request = admin_pb2.TestWebhookRequest(webhook_id=created.webhook.webhook_id)
    answer = await admin.TestWebhook(request, metadata=tenant.admin)
    assert (answer.http_status, answer.error) == (200, "")
    (got,) = receiver.got
    verify(created.secret, got)
    event = json.loads(got.body)
    assert event["type"] == got.headers["callsight-event-type"] == "webhook.test"
    assert event["id"] == got.headers["callsight-event-id"]
    assert event["tenant_id"] == tenant.tenant_id

    receiver.answer = lambda _: 503
    answer = await admin.TestWebhook(request, metadata=tenant.admin)
    assert (answer.http_status, answer.error) == (503, "the endpoint answered HTTP 503")
    receiver.answer = lambda _: "hang"
    answer = await admin.TestWebhook(request, metadata=tenant.admin)
    assert answer.http_status == 0 and "timeout" in answer.error
    assert answer.latency_ms >= 900

    refused = await create(hooks_channel, tenant, "http://127.0.0.1:9/none", MISSED)
    answer = await admin.TestWebhook(
        admin_pb2.TestWebhookRequest(webhook_id=refused.webhook.webhook_id), metadata=tenant.admin
    )
    assert answer.http_status == 0 and "ConnectError" in answer.error


async def test_a_missed_call_is_delivered_signed_and_in_order(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    tenant = await new_tenant(hooks_channel)
    plain = await create(hooks_channel, tenant, receiver.url, MISSED)
    full = await create(hooks_channel, tenant, receiver.url + "?full", MISSED, include_numbers=True)
    employee, device_id, token = await device(hooks_channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(hooks_channel)
    # Out of order in the batch; one answered call, which raises nothing.
    records = [missed(3), missed(1), call(2, type=common_pb2.CALL_TYPE_INCOMING, duration_s=40)]
    records.append(call(4, number="+91 98000 22222", type=common_pb2.CALL_TYPE_REJECTED))
    ack = await ingest.Upload(batch(1, records), metadata=auth(token))
    assert ack.accepted == 4
    await wait_for(lambda: len(receiver.got) >= 6)
    await asyncio.sleep(1.5)  # nothing more comes
    assert len(receiver.got) == 6
    plain_got = [r for r in receiver.got if b'"number"' not in r.body]
    full_got = [r for r in receiver.got if b'"number"' in r.body]
    assert len(plain_got) == len(full_got) == 3
    for r in plain_got:
        verify(plain.secret, r)
    for r in full_got:
        verify(full.secret, r)
    events = [json.loads(r.body) for r in plain_got]
    # Event-time order (max_in_flight 1): calls 1, 3 and the rejected 4.
    assert [e["data"]["call_id"] for e in events] == ["c1", "c3", "c4"]
    first = events[0]
    assert first["type"] == "call.missed" and first["tenant_id"] == tenant.tenant_id
    assert plain_got[0].headers["callsight-event-id"] == first["id"]
    assert plain_got[0].headers["callsight-event-type"] == "call.missed"
    assert first["created_at_ms"] == BASE_MS + 1_000
    assert first["data"] == {
        "call_id": "c1",
        "device_id": device_id,
        "employee_id": employee,
        "call_type": "missed",
        "started_at_ms": BASE_MS + 1_000,
        "client_key": first["data"]["client_key"],
    }
    assert events[2]["data"]["call_type"] == "rejected"
    full_events = [json.loads(r.body) for r in full_got]
    assert full_events[0]["data"]["number"] == "+919800011111"
    assert full_events[0]["data"]["name"] == "Client 1"
    assert full_events[0]["data"]["client_key"] == first["data"]["client_key"]
    # The same event has the same id for both webhooks (derived from the call).
    assert full_events[0]["id"] == first["id"]
    listed = await deliveries(hooks_channel, tenant, plain.webhook.webhook_id)
    assert [d.state for d in listed] == [admin_pb2.DELIVERY_STATE_DELIVERED] * 3
    assert [json.loads(d.body)["data"]["call_id"] for d in listed] == ["c4", "c3", "c1"]
    assert all(d.attempts == 1 and d.last_status == 200 for d in listed)

    # A re-sent batch (a new version of the call) raises no second delivery.
    again = [missed(1)]
    again[0].updated_at_ms = BASE_MS + 99_999
    await ingest.Upload(batch(2, again), metadata=auth(token))
    await asyncio.sleep(2.5)
    assert len(receiver.got) == 6


async def test_retries_back_off_then_dead_letter_then_replay(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hooks_channel)
    tenant = await new_tenant(hooks_channel)
    created = await create(hooks_channel, tenant, receiver.url, MISSED)
    webhook_id = created.webhook.webhook_id
    # Fails twice (a 500, then a timeout), then takes it.
    fates: list[int | str] = [500, "hang"]
    receiver.answer = lambda _: fates.pop(0) if fates else 200
    _, _, token = await device(hooks_channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(hooks_channel)
    await ingest.Upload(batch(1, [missed(1)]), metadata=auth(token))
    await wait_for(lambda: len(receiver.got) >= 3)
    ids = {r.headers["callsight-event-id"] for r in receiver.got}
    assert len(ids) == 1  # one event, attempted three times: the idempotency key is stable
    for r in receiver.got:
        verify(created.secret, r)
    # Gaps: the backoff after the first failure is at most 0.2 s (plus a poll), after the
    # timeout at most 0.4 s plus the 1 s timeout and a poll.
    first_gap = receiver.got[1].at - receiver.got[0].at
    assert first_gap < 0.2 + 1.5
    await asyncio.sleep(0.5)
    (d,) = await deliveries(hooks_channel, tenant, webhook_id)
    assert (d.state, d.attempts, d.last_status, d.last_error) == (
        admin_pb2.DELIVERY_STATE_DELIVERED,
        3,
        200,
        "",
    )

    # Always 500: after the 4 s window it is dead, with its last status and error.
    receiver.got.clear()
    receiver.answer = lambda _: 500
    await ingest.Upload(batch(2, [missed(7)]), metadata=auth(token))

    async def dead() -> list[admin_pb2.WebhookDelivery]:
        return await deliveries(hooks_channel, tenant, webhook_id, admin_pb2.DELIVERY_STATE_DEAD)

    deadline = time.monotonic() + 20
    while not await dead():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
    (gone,) = await dead()
    assert gone.last_status == 500 and gone.last_error == "the endpoint answered HTTP 500"
    # At least 3: 0.8 s gaps give 6 in the window, a loaded machine's polls (1 s when idle)
    # stretch gaps towards 2 s.
    assert gone.attempts == len(receiver.got) >= 3
    span = receiver.got[-1].at - receiver.got[0].at
    # Dead once an attempt fails 4 s after the first; the gaps stay near the 0.8 s cap (a loaded
    # machine adds polls and lease renewals: the exact schedule is tests/unit's).
    assert 4.0 <= span < 4.0 + 0.8 + 5.0
    gaps = [b.at - a.at for a, b in zip(receiver.got, receiver.got[1:], strict=False)]
    assert all(g < 0.8 + 4.0 for g in gaps), gaps
    attempts = len(receiver.got)
    await asyncio.sleep(1.5)
    assert len(receiver.got) == attempts  # dead: no more attempts

    # Replay queues it again; the endpoint is back.
    receiver.answer = lambda _: 200
    replay = await admin.ReplayWebhookDeliveries(
        admin_pb2.ReplayWebhookDeliveriesRequest(webhook_id=webhook_id), metadata=tenant.admin
    )
    assert replay.replayed == 1
    await wait_for(lambda: len(receiver.got) == attempts + 1)
    await asyncio.sleep(0.5)
    assert await dead() == []
    states = {d.event_id: d.state for d in await deliveries(hooks_channel, tenant, webhook_id)}
    assert states[gone.event_id] == admin_pb2.DELIVERY_STATE_DELIVERED
    # A named replay resends even a delivered event; an unknown id is refused whole.
    error = await expect_status(
        admin.ReplayWebhookDeliveries(
            admin_pb2.ReplayWebhookDeliveriesRequest(
                webhook_id=webhook_id, event_ids=[gone.event_id, "nope"]
            ),
            metadata=tenant.admin,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "'nope'" in (error.details() or "") and "nothing was replayed" in (error.details() or "")
    replay = await admin.ReplayWebhookDeliveries(
        admin_pb2.ReplayWebhookDeliveriesRequest(webhook_id=webhook_id, event_ids=[gone.event_id]),
        metadata=tenant.admin,
    )
    assert replay.replayed == 1
    await wait_for(lambda: len(receiver.got) == attempts + 2)


async def test_batch_rejected_and_lead_assigned(
    hooks_channel: grpc.aio.Channel, receiver: Receiver
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hooks_channel)
    tenant = await new_tenant(hooks_channel)
    created = await create(
        hooks_channel,
        tenant,
        receiver.url,
        admin_pb2.WEBHOOK_EVENT_BATCH_REJECTED,
        admin_pb2.WEBHOOK_EVENT_LEAD_ASSIGNED,
    )
    employee, device_id, token = await device(hooks_channel, tenant)
    ingest = ingest_pb2_grpc.IngestServiceStub(hooks_channel)
    await expect_status(
        ingest.Upload(ingest_pb2.UploadRequest(seq=5, batch_id="empty"), metadata=auth(token)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await admin.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[admin_pb2.Lead(first_name="Ravi", primary_number="+91 98000 33333")]
        ),
        metadata=tenant.admin,
    )
    await wait_for(lambda: len(receiver.got) >= 2)
    for r in receiver.got:
        verify(created.secret, r)
    (rejected,) = receiver.events("batch.rejected")
    assert rejected["data"]["device_id"] == device_id  # type: ignore[index]
    assert rejected["data"]["batch_id"] == "empty"  # type: ignore[index]
    assert rejected["data"]["reason"]  # type: ignore[index]
    (assigned,) = receiver.events("lead.assigned")
    assert assigned["data"]["employee_id"] == employee  # type: ignore[index]
    assert "number" not in assigned["data"]  # type: ignore[operator]


async def _bootstrap(address: str, operator_token: str, url: str) -> tuple[Tenant, str, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        response = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="k", default_region="IN", timezone="Asia/Kolkata"),
            metadata=auth(operator_token),
        )
        tenant = Tenant(response.tenant_id, response.admin_api_key)
        created = await create(channel, tenant, url, MISSED)
        _, _, token = await device(channel, tenant)
        return tenant, created.webhook.webhook_id, token


async def test_a_sigkill_in_the_middle_loses_no_pending_event(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = {f"CALLSIGHT_{k.upper()}": str(v) for k, v in SETTINGS.items()}
    env["CALLSIGHT_WEBHOOK_RETRY_WINDOW_S"] = "600"
    server = ServerProcess(tmp_path / "server", env=env)
    server.start()
    try:
        receiver.answer = lambda _: 500  # nothing gets through before the kill
        tenant, webhook_id, token = await _bootstrap(
            server.address, server.operator_token, receiver.url
        )
        async with grpc.aio.insecure_channel(server.address) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            await ingest.Upload(batch(1, [missed(i) for i in range(20)]), metadata=auth(token))
        await wait_for(lambda: len(receiver.got) >= 3)
        server.kill()
        tried = {r.headers["callsight-event-id"] for r in receiver.got}
        # Answered 200 after the restart: the dispatcher may have tried all 20 before the kill
        # (each answered 500), so having seen every id proves nothing yet.
        delivered: set[str] = set()

        def accept(r: Received) -> int:
            delivered.add(r.headers["callsight-event-id"])
            return 200

        receiver.answer = accept
        server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            await wait_for(lambda: len(delivered) >= 20, 40)
            ids = {r.headers["callsight-event-id"] for r in receiver.got}
            # Every event, including those tried before the kill, once each by id.
            assert len(ids) == 20 and tried <= ids
            calls = sorted(json.loads(r.body)["data"]["call_id"] for r in receiver.got)
            assert set(calls) == {f"c{i}" for i in range(20)}
            await asyncio.sleep(2)
            listed = await deliveries(channel, tenant, webhook_id)
            assert len(listed) == 20
            assert {d.state for d in listed} == {admin_pb2.DELIVERY_STATE_DELIVERED}
            # Nothing delivered is delivered again once it is marked.
            count = len(receiver.got)
            await asyncio.sleep(2)
            assert len(receiver.got) == count
    finally:
        server.stop()
