"""A local webhook receiver that fails on purpose, and the admin calls the webhook tests share
(tests/integration/test_webhooks.py, tests/integration/test_webhook_events.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2
from tests.integration.calls import call
from tests.integration.helpers import Tenant, enroll, new_employee

# Short delivery settings: the retry window is seconds, not a day.
SETTINGS = {
    "webhook_timeout_s": 1.0,
    "webhook_retry_initial_s": 0.2,
    "webhook_retry_max_s": 0.8,
    "webhook_retry_window_s": 4.0,
    "webhook_lease_s": 3.0,
    "webhook_max_in_flight": 1,
}
MISSED = admin_pb2.WEBHOOK_EVENT_CALL_MISSED


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP endpoint; ``answer`` decides each request's fate: a status, or "hang"."""

    answer: Callable[[Received], int | str] = lambda _: 200
    got: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                received = Received(time.monotonic(), headers, body)
                self.got.append(received)
                fate = self.answer(received)
                if fate == "hang":
                    await asyncio.sleep(5)
                    return
                writer.write(f"HTTP/1.1 {fate} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def events(self, kind: str | None = None) -> list[dict[str, object]]:
        out = [json.loads(r.body) for r in self.got]
        return [e for e in out if kind is None or e["type"] == kind]


@asynccontextmanager
async def serve() -> AsyncIterator[Receiver]:
    """A receiver listening on a free loopback port."""
    r = Receiver()
    server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()


def verify(secret: str, r: Received) -> None:
    """The receiver's check, as the README shows it."""
    parts = dict(p.split("=", 1) for p in r.headers["callsight-signature"].split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + r.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"])
    assert abs(time.time() - int(parts["t"])) < 300


async def wait_for(check: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def create(
    channel: grpc.aio.Channel, tenant: Tenant, url: str, *events: int, **fields: object
) -> admin_pb2.CreateWebhookResponse:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    return await admin.CreateWebhook(
        admin_pb2.CreateWebhookRequest(
            webhook=admin_pb2.Webhook(url=url, events=list(events), **fields)  # type: ignore[arg-type]
        ),
        metadata=tenant.admin,
    )


async def device(channel: grpc.aio.Channel, tenant: Tenant) -> tuple[str, str, str]:
    """(employee id, device id, device token) of a new enrolled device."""
    employee = await new_employee(channel, tenant, "Asha", f"+9198{secrets.randbelow(10**8):08d}")
    reg = await enroll(channel, tenant, employee)
    return employee, reg.device_id, reg.device_token


def missed(i: int, number: str = "+91 98000 11111") -> ingest_pb2.CallRecord:
    return call(i, number=number, type=common_pb2.CALL_TYPE_MISSED, duration_s=0)


async def deliveries(
    channel: grpc.aio.Channel, tenant: Tenant, webhook_id: str, state: int = 0
) -> list[admin_pb2.WebhookDelivery]:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    response = await admin.ListWebhookDeliveries(
        admin_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id, state=state),  # type: ignore[arg-type]
        metadata=tenant.admin,
    )
    return list(response.deliveries)
