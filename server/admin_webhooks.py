"""AdminService for webhooks (issue 13, item 1): CreateWebhook, ListWebhooks, DeleteWebhook,
TestWebhook, ListWebhookDeliveries, ReplayWebhookDeliveries. Delivery is server/webhooks.py's.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import grpc

from callsight.core.clock import Clock
from callsight.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.encode import client_keys
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_ID_BYTES, check_text, quote
from callsight.pipeline.paging import PageTokens, fingerprint, page_size
from callsight.server import webhooks
from callsight.server.auth import current_caller as caller
from callsight.storage import leads, outbox
from callsight.storage.activity import FLUSH_EVERY_S
from callsight.storage.database import Database
from callsight.storage.outbox import Delivery, Webhook
from callsight.v1 import admin_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

MAX_WEBHOOKS_PER_TENANT = 20
MAX_DELAY_S = 30 * 86_400
# Twice the time device activity may wait in memory before it is written.
MIN_SILENT_S = int(2 * FLUSH_EVERY_S)
MAX_REPLAY_IDS = 1000
_REPLAY_CHUNK = 1000
_STATES = {
    admin_pb2.DELIVERY_STATE_PENDING: outbox.PENDING,
    admin_pb2.DELIVERY_STATE_DELIVERED: outbox.DELIVERED,
    admin_pb2.DELIVERY_STATE_DEAD: outbox.DEAD,
}
_STATE_OF = {name: number for number, name in _STATES.items()}
_EVENT_NAMES = ", ".join(
    admin_pb2.WebhookEvent.Name(v) for v in admin_pb2.WebhookEvent.values() if v != 0
)


def _webhook_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("webhook_id is required")
    return check_text(value, "webhook_id", MAX_ID_BYTES)


def _delay(value: int, field: str, default: int, least: int = 1) -> int:
    if value > MAX_DELAY_S:
        raise InvalidArgument(f"webhook.{field} must be at most {MAX_DELAY_S} (30 days)")
    if value and value < least:
        raise InvalidArgument(f"webhook.{field} must be at least {least} s (0 for the default)")
    return value or default


def _message(w: Webhook) -> admin_pb2.Webhook:
    return admin_pb2.Webhook(
        webhook_id=w.webhook_id,
        url=w.url,
        events=[admin_pb2.WebhookEvent.ValueType(e) for e in w.events],
        include_numbers=w.include_numbers,
        never_attended_after_s=w.never_attended_after_s,
        device_silent_after_s=w.device_silent_after_s,
        created_at_ms=w.created_at_ms,
    )


class WebhookAdmin:
    """Mixed into the service's servicer: the tenant's webhooks and their deliveries."""

    _db: Database
    _clock: Clock
    _keys: TenantKeys
    _tokens: PageTokens
    _webhooks: webhooks.Webhooks | None

    def _hooks(self) -> webhooks.Webhooks:
        if self._webhooks is None:
            raise Unavailable("webhooks are not running in this server process")
        return self._webhooks

    async def _find_webhook(self, webhook_id: str) -> Webhook:
        tenant_id = caller().tenant_id
        webhook_id = _webhook_id(webhook_id)
        for w in await outbox.webhooks(self._db, tenant_id):
            if w.webhook_id == webhook_id:
                return w
        raise NotFound(f"webhook {quote(webhook_id)} does not exist in this tenant")

    async def CreateWebhook(
        self, request: admin_pb2.CreateWebhookRequest, context: Context
    ) -> admin_pb2.CreateWebhookResponse:
        hooks = self._hooks()
        tenant_id = caller().tenant_id
        if not request.HasField("webhook"):
            raise InvalidArgument("webhook is required")
        given = request.webhook
        url = webhooks.check_url(given.url)
        if not given.events:
            raise InvalidArgument("webhook.events must name at least one WebhookEvent")
        unknown = [int(e) for e in given.events if e not in webhooks.EVENT_TYPES]
        if unknown:
            raise InvalidArgument(
                f"webhook.events {unknown} are not WebhookEvent values; use {_EVENT_NAMES}"
            )
        never_attended = _delay(
            given.never_attended_after_s,
            "never_attended_after_s",
            webhooks.DEFAULT_NEVER_ATTENDED_S,
        )
        silent = _delay(
            given.device_silent_after_s,
            "device_silent_after_s",
            webhooks.DEFAULT_DEVICE_SILENT_S,
            # Device activity reaches the database every FLUSH_EVERY_S: a shorter silence would
            # flag devices that keep syncing.
            least=MIN_SILENT_S,
        )
        existing = await outbox.webhooks(self._db, tenant_id)
        if len(existing) >= MAX_WEBHOOKS_PER_TENANT:
            raise FailedPrecondition(
                f"the tenant has {len(existing)} webhooks, the most allowed; delete one first"
            )
        secret = webhooks.new_secret()
        keyring = await self._keys.keyring(tenant_id)
        webhook = Webhook(
            tenant_id=tenant_id,
            webhook_id=str(uuid.uuid4()),
            url=url,
            events=tuple(sorted(set(given.events))),
            include_numbers=given.include_numbers,
            never_attended_after_s=never_attended,
            device_silent_after_s=silent,
            secret_enc=keyring.encrypt(secret),
            created_at_ms=self._clock.now_ms(),
        )
        await outbox.put_webhook(self._db, webhook, self._clock.now_ns())
        hooks.registry.added(webhook)
        return admin_pb2.CreateWebhookResponse(webhook=_message(webhook), secret=secret)

    async def ListWebhooks(
        self, request: admin_pb2.ListWebhooksRequest, context: Context
    ) -> admin_pb2.ListWebhooksResponse:
        found = await outbox.webhooks(self._db, caller().tenant_id)
        return admin_pb2.ListWebhooksResponse(webhooks=[_message(w) for w in found])

    async def DeleteWebhook(
        self, request: admin_pb2.DeleteWebhookRequest, context: Context
    ) -> admin_pb2.DeleteWebhookResponse:
        webhook = await self._find_webhook(request.webhook_id)
        await outbox.delete_webhook(self._db, webhook, self._clock.now_ns())
        self._hooks().registry.removed(webhook.key)
        return admin_pb2.DeleteWebhookResponse()

    async def TestWebhook(
        self, request: admin_pb2.TestWebhookRequest, context: Context
    ) -> admin_pb2.TestWebhookResponse:
        hooks = self._hooks()
        webhook = await self._find_webhook(request.webhook_id)
        keyring = await self._keys.keyring(webhook.tenant_id)
        event_id = str(uuid.uuid4())
        now = self._clock.now_ms()
        body = webhooks.event_body(
            event_id,
            webhooks.TEST_EVENT,
            webhook.tenant_id,
            now,
            {"webhook_id": webhook.webhook_id},
        )
        attempt = await webhooks.post(
            hooks.dispatcher.client,
            webhook.url,
            keyring.decrypt(webhook.secret_enc),
            event_id,
            webhooks.TEST_EVENT,
            body,
            hooks.dispatcher.settings.timeout_s,
            now // 1000,
        )
        return admin_pb2.TestWebhookResponse(
            http_status=attempt.status, error=attempt.error, latency_ms=attempt.latency_ms
        )

    async def ListWebhookDeliveries(
        self, request: admin_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> admin_pb2.ListWebhookDeliveriesResponse:
        webhook = await self._find_webhook(request.webhook_id)
        state = None
        if request.state != admin_pb2.DELIVERY_STATE_UNSPECIFIED:
            state = _STATES.get(request.state)
            if state is None:
                raise InvalidArgument(f"state {request.state} is not a DeliveryState value")
        size = page_size(request.page_size)
        bound_to = fingerprint("webhook-deliveries", webhook.tenant_id, webhook.webhook_id, state)
        page = self._tokens.open(request.page_token, bound_to, size, self._clock.now_ms())
        after = None if page.cursor is None else (int(page.cursor[0]), str(page.cursor[1]))
        rows = await outbox.page(self._db, webhook.key, state, after, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = self._tokens.issue(
                bound_to, [last.occurred_at_ms, last.event_id], page.snapshot_ms
            )
        keyring = await self._keys.keyring(webhook.tenant_id)
        return admin_pb2.ListWebhookDeliveriesResponse(
            deliveries=[_delivery(d, keyring) for d in rows], next_page_token=token
        )

    async def ReplayWebhookDeliveries(
        self, request: admin_pb2.ReplayWebhookDeliveriesRequest, context: Context
    ) -> admin_pb2.ReplayWebhookDeliveriesResponse:
        webhook = await self._find_webhook(request.webhook_id)
        if len(request.event_ids) > MAX_REPLAY_IDS:
            raise InvalidArgument(
                f"{len(request.event_ids)} event_ids; at most {MAX_REPLAY_IDS} per request"
            )
        if request.event_ids:
            found = await outbox.by_ids(self._db, webhook.key, request.event_ids)
            missing = sorted(set(request.event_ids) - {d.event_id for d in found})
            if missing:
                shown = ", ".join(quote(e) for e in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise NotFound(
                    f"event_ids [{shown}]{more} are not deliveries of webhook {webhook.webhook_id};"
                    " nothing was replayed"
                )
            await outbox.append(self._db, self._replayed(found))
            return admin_pb2.ReplayWebhookDeliveriesResponse(replayed=len(found))
        replayed = 0
        while True:
            # Each chunk leaves the dead state, so the next read finds the next ones.
            chunk = await outbox.dead(self._db, webhook.key, _REPLAY_CHUNK)
            await outbox.append(self._db, self._replayed(chunk))
            replayed += len(chunk)
            if len(chunk) < _REPLAY_CHUNK:
                return admin_pb2.ReplayWebhookDeliveriesResponse(replayed=replayed)

    def _replayed(self, deliveries: list[Delivery]) -> list[Delivery]:
        now_ms, now_ns = self._clock.now_ms(), self._clock.now_ns()
        return [webhooks.replayed(d, now_ms, now_ns) for d in deliveries]

    async def _leads_assigned(
        self, tenant_id: str, keyring: Keyring, assigned: list[leads.Lead]
    ) -> None:
        """Raises lead.assigned for leads given to an employee (new, or reassigned)."""
        if self._webhooks is None or not assigned:
            return
        keys = client_keys([lead.primary_bidx for lead in assigned])
        items = []
        for lead, key in zip(assigned, keys, strict=True):
            data = {
                "lead_id": lead.lead_id,
                "employee_id": lead.employee_id,
                "client_key": str(int(key)),
            }
            private = {
                "number": keyring.decrypt(lead.primary_enc),
                "first_name": keyring.decrypt(lead.first_name_enc),
                "last_name": keyring.decrypt(lead.last_name_enc),
            }
            items.append((str(uuid.uuid4()), data, private))
        await self._webhooks.events.emit(tenant_id, admin_pb2.WEBHOOK_EVENT_LEAD_ASSIGNED, items)


def _delivery(d: Delivery, keyring: Keyring) -> admin_pb2.WebhookDelivery:
    return admin_pb2.WebhookDelivery(
        event_id=d.event_id,
        type=d.type,
        state=_STATE_OF.get(d.state, admin_pb2.DELIVERY_STATE_UNSPECIFIED),
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at_ms=d.occurred_at_ms,
        next_attempt_at_ms=d.next_attempt_at_ms if d.state == outbox.PENDING else 0,
        body=keyring.decrypt(d.body_enc),
    )
