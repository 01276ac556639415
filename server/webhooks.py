"""Webhook events and their delivery: signed HTTPS POSTs from a durable outbox, at least once.

Events come from two kinds of places. What ingest already made durable is read back, never
touched on the ingest path: the process holding a webhook's lease polls ``calls`` for the rows
synced since its cursor every ``poll_s`` (call.missed, lead.first_call, and client.never_attended
scheduled for when its delay runs out) and ``device_activity`` every ``SILENT_CHECK_S``
(device.silent). Their ids are UUIDv5 of (type, tenant, source record), so a re-derivation after
a restart or a lease takeover writes the same outbox key and changes nothing. The RPC paths
append theirs as they happen: lead.assigned (ImportLeads) and batch.rejected (a batch refused
whole), each one grouped insert shared with concurrent callers, before the RPC answers.

Delivery: a webhook's events go out from one process at a time, the holder of its lease (terms
claimed and read back like enrollment codes, storage/outbox.py). The holder reads the due
events of the webhook oldest first, at most ``max_in_flight`` attempts at once, each a POST with
``Callsight-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` and a timeout.
A 2xx marks the delivery DELIVERED; anything else schedules the next attempt after an
exponential backoff with full jitter, until an attempt fails ``retry_window_s`` after the first
(or the replay): then DEAD, until ReplayWebhookDeliveries queues it again. Ordering promised:
per webhook, first attempts start in event-time order among the events due at the same time;
with ``max_in_flight`` 1 the endpoint also receives them in that order. A failing event does not
hold back newer ones (it waits for its backoff while they go).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from callsight.core.clock import Clock
from callsight.core.errors import InvalidArgument
from callsight.pipeline.crypto import Keyring
from callsight.pipeline.keys import TenantKeys
from callsight.storage import event_sources, outbox, parties
from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter
from callsight.storage.outbox import Delivery, Webhook, WebhookKey
from callsight.v1 import admin_pb2

log = structlog.get_logger(__name__)

# The event type names, by WebhookEvent number of the contract.
EVENT_TYPES: dict[int, str] = {
    admin_pb2.WEBHOOK_EVENT_CALL_MISSED: "call.missed",
    admin_pb2.WEBHOOK_EVENT_CLIENT_NEVER_ATTENDED: "client.never_attended",
    admin_pb2.WEBHOOK_EVENT_LEAD_ASSIGNED: "lead.assigned",
    admin_pb2.WEBHOOK_EVENT_LEAD_FIRST_CALL: "lead.first_call",
    admin_pb2.WEBHOOK_EVENT_DEVICE_SILENT: "device.silent",
    admin_pb2.WEBHOOK_EVENT_BATCH_REJECTED: "batch.rejected",
}
TEST_EVENT = "webhook.test"
DEFAULT_NEVER_ATTENDED_S = 3600
DEFAULT_DEVICE_SILENT_S = 86_400
SECRET_PREFIX = "whsec_"
# Derived ids are UUIDv5 in this namespace, of "type|tenant|source record".
_NAMESPACE = uuid.UUID("6f1d3c52-9a55-4d0e-8a43-3f4be1c0b7a2")
# Each poll re-reads the calls synced this long before its cursor: a flush retried for up to a
# minute commits rows whose synced_at is older than the rows the last poll saw.
CALLS_OVERLAP_MS = 90_000
# Calls that reach the server this long after they started raise no event (stale by then).
CALLS_LOOKBACK_MS = 7 * 86_400_000
# How often a webhook's devices are checked for silence.
SILENT_CHECK_S = 10.0
# Due deliveries read at once per webhook, per in-flight slot: memory stays bounded.
_DUE_PER_SLOT = 8
_MAX_ERROR_CHARS = 500
_CALL_TYPE_NAMES = {event_sources.MISSED: "missed", event_sources.REJECTED: "rejected"}


@dataclass(frozen=True)
class WebhookSettings:
    """Delivery tuning; the server's defaults come from its Config."""

    timeout_s: float = 10.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 3600.0
    retry_window_s: float = 86_400.0
    lease_s: float = 30.0
    max_in_flight: int = 4
    poll_s: float = 1.0

    @property
    def renew_every_s(self) -> float:
        """How often the holder renews its leases (a sixth of their length)."""
        return self.lease_s / 6

    @property
    def margin_s(self) -> float:
        """Clock skew allowed between processes: a lease is taken over only this long after it
        expired, and its holder starts no attempt later than this plus a timeout before."""
        return self.lease_s / 6


# --- signing, backoff, URLs -----------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret."""
    return SECRET_PREFIX + uuid.uuid4().hex + uuid.uuid4().hex


def signature(secret: str, timestamp_s: int, body: bytes) -> str:
    """The Callsight-Signature header: ``t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
    keyed by the secret's UTF-8 bytes (``whsec_`` included)."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={mac.hexdigest()}"


def backoff_cap_s(attempts: int, settings: WebhookSettings) -> float:
    """The longest wait after the ``attempts``-th failed attempt: doubling from the initial."""
    return float(min(settings.retry_max_s, settings.retry_initial_s * 2 ** min(attempts - 1, 60)))


def backoff_s(
    attempts: int, settings: WebhookSettings, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """The wait before the next attempt: full jitter, uniform in [0, cap]."""
    return rng(0.0, backoff_cap_s(attempts, settings))


def check_url(url: str) -> str:
    """The URL if deliveries may go there: https://, or http:// to a loopback address only."""
    url = url.strip()
    if not url:
        raise InvalidArgument("webhook.url is required, e.g. https://example.com/callsight")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise InvalidArgument(f"webhook.url is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidArgument(
            "webhook.url must be an https:// URL with a host, e.g. https://example.com/callsight"
        )
    if parts.username or parts.password:
        raise InvalidArgument("webhook.url must not carry a user or password; the body is signed")
    if parts.scheme == "http" and not _loopback(host):
        raise InvalidArgument(
            "webhook.url must use https://; plain http:// is allowed only to a loopback address"
            " (127.0.0.0/8, ::1, localhost), for tests"
        )
    if len(url) > 2048:
        raise InvalidArgument(f"webhook.url is {len(url)} characters; at most 2048")
    return url


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- events -----------------------------------------------------------------------------------


def derived_id(kind: str, tenant_id: str, *source: object) -> str:
    """The stable id of an event derived from a source record: the same every derivation."""
    return str(uuid.uuid5(_NAMESPACE, "|".join([kind, tenant_id, *map(str, source)])))


def event_body(
    event_id: str, kind: str, tenant_id: str, occurred_ms: int, data: dict[str, Any]
) -> bytes:
    """The JSON an endpoint receives (and the outbox keeps, sealed)."""
    return json.dumps(
        {
            "id": event_id,
            "type": kind,
            "tenant_id": tenant_id,
            "created_at_ms": occurred_ms,
            "data": data,
        },
        separators=(",", ":"),
    ).encode()


def new_delivery(
    webhook: Webhook,
    keyring: Keyring,
    kind: str,
    event_id: str,
    occurred_ms: int,
    data: dict[str, Any],
    *,
    created_ms: int,
    due_ms: int | None = None,
    client_key: int = 0,
) -> Delivery:
    """The outbox row of a new event for ``webhook`` (version 0: any state change wins), due at
    ``due_ms`` (default: at once); its retry window starts when it is created or due."""
    first_ms = max(created_ms, due_ms or 0)
    body = event_body(event_id, kind, webhook.tenant_id, occurred_ms, data)
    return Delivery(
        tenant_id=webhook.tenant_id,
        webhook_id=webhook.webhook_id,
        occurred_at_ms=occurred_ms,
        event_id=event_id,
        type=kind,
        body_enc=keyring.encrypt(body.decode()),
        client_key=client_key,
        state=outbox.PENDING,
        attempts=0,
        last_status=0,
        last_error="",
        next_attempt_at_ms=first_ms,
        retry_from_ms=first_ms,
        version=0,
    )


def _client(client_key: int) -> str:
    # A decimal string: JSON numbers lose precision above 2**53.
    return str(client_key)


class WebhookRegistry:
    """Every live webhook, in memory: refreshed by the dispatcher every poll, and at once by
    this process's own CreateWebhook and DeleteWebhook."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_key: dict[WebhookKey, Webhook] = {}
        self._by_tenant: dict[str, list[Webhook]] = {}

    async def refresh(self) -> None:
        """Reads every live webhook again."""
        self._set(await outbox.webhooks(self._db))

    def _set(self, hooks: Iterable[Webhook]) -> None:
        self._by_key = {w.key: w for w in hooks}
        by_tenant: dict[str, list[Webhook]] = {}
        for w in self._by_key.values():
            by_tenant.setdefault(w.tenant_id, []).append(w)
        self._by_tenant = by_tenant

    def added(self, webhook: Webhook) -> None:
        """A webhook this process just stored."""
        self._set([*self._by_key.values(), webhook])

    def removed(self, key: WebhookKey) -> None:
        """A webhook this process just deleted."""
        self._set(w for k, w in self._by_key.items() if k != key)

    def all(self) -> list[Webhook]:
        """Every live webhook."""
        return list(self._by_key.values())

    def get(self, key: WebhookKey) -> Webhook | None:
        """The webhook, if it is live."""
        return self._by_key.get(key)

    def subscribed(self, tenant_id: str, event: int) -> list[Webhook]:
        """The tenant's webhooks told about ``event``."""
        return [w for w in self._by_tenant.get(tenant_id, ()) if event in w.events]


class WebhookEvents:
    """Appends the events that RPCs raise (lead.assigned, batch.rejected) to the outbox."""

    def __init__(
        self, registry: WebhookRegistry, keys: TenantKeys, writer: GroupWriter, clock: Clock
    ) -> None:
        self._registry = registry
        self._keys = keys
        self._writer = writer
        self._clock = clock

    async def emit(
        self,
        tenant_id: str,
        event: int,
        items: Iterable[tuple[str, dict[str, Any], dict[str, Any]]],
        client_key: Callable[[int], int] | None = None,
    ) -> None:
        """Appends one event per (id, data, private data) to each subscribed webhook; the private
        part (numbers, names) only for webhooks with include_numbers. Never raises: a failure
        is logged (the RPC that raised the event has succeeded)."""
        hooks = self._registry.subscribed(tenant_id, event)
        if not hooks:
            return
        try:
            keyring = await self._keys.keyring(tenant_id)
            now = self._clock.now_ms()
            kind = EVENT_TYPES[event]
            rows = [
                new_delivery(
                    w,
                    keyring,
                    kind,
                    event_id,
                    now,
                    {**data, **private} if w.include_numbers else data,
                    created_ms=now,
                )
                for event_id, data, private in items
                for w in hooks
            ]
            await outbox.append_grouped(self._writer, rows)
        except Exception:
            log.exception("webhook events lost", tenant_id=tenant_id, type=EVENT_TYPES[event])

    async def batch_rejected(
        self, tenant_id: str, device_id: str, employee_id: str, batch_id: str, seq: int, reason: str
    ) -> None:
        """A device's batch was refused whole."""
        data = {
            "device_id": device_id,
            "employee_id": employee_id,
            "batch_id": batch_id,
            "seq": seq,
            "reason": reason,
        }
        await self.emit(
            tenant_id, admin_pb2.WEBHOOK_EVENT_BATCH_REJECTED, [(str(uuid.uuid4()), data, {})]
        )


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """How one POST went."""

    status: int
    error: str
    latency_ms: int

    @property
    def ok(self) -> bool:
        """The endpoint answered 2xx."""
        return 200 <= self.status < 300


async def post(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    event_id: str,
    kind: str,
    body: bytes,
    timeout_s: float,
    now_s: int,
) -> Attempt:
    """POSTs a signed event once; the response body is never read (memory stays bounded)."""
    headers = {
        "content-type": "application/json",
        "user-agent": "callsight-webhooks/1",
        "callsight-event-id": event_id,
        "callsight-event-type": kind,
        "callsight-signature": signature(secret, now_s, body),
    }
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout_s
        ) as response:
            status = response.status_code
        error = "" if 200 <= status < 300 else f"the endpoint answered HTTP {status}"
    except httpx.TimeoutException:
        status, error = 0, f"no answer within {timeout_s:g} s (timeout)"
    except httpx.HTTPError as exc:
        status, error = 0, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
    latency_ms = round((time.perf_counter() - started) * 1000)
    return Attempt(status, error, latency_ms)


def after_attempt(
    d: Delivery, attempt: Attempt, now_ms: int, now_ns: int, settings: WebhookSettings
) -> Delivery:
    """The delivery's next state: DELIVERED, PENDING after a backoff, or DEAD once an attempt
    fails at the end of the retry window."""
    attempts = d.attempts + 1
    if attempt.ok:
        state, next_ms = outbox.DELIVERED, now_ms
    elif now_ms >= d.retry_from_ms + settings.retry_window_s * 1000:
        state, next_ms = outbox.DEAD, now_ms
    else:
        state = outbox.PENDING
        next_ms = now_ms + round(backoff_s(attempts, settings) * 1000)
    return _changed(
        d,
        now_ns,
        state=state,
        attempts=attempts,
        last_status=attempt.status,
        last_error=attempt.error,
        next_attempt_at_ms=next_ms,
    )


def _changed(d: Delivery, now_ns: int, **changes: Any) -> Delivery:
    # A later row of a delivery must outrank the one read, whatever another process's clock said.
    return replace(d, **changes, version=max(now_ns, d.version + 1))


def replayed(d: Delivery, now_ms: int, now_ns: int) -> Delivery:
    """The delivery queued again now, with a fresh retry window."""
    return _changed(
        d, now_ns, state=outbox.PENDING, next_attempt_at_ms=now_ms, retry_from_ms=now_ms
    )


@dataclass
class _Lease:
    term: int
    expires_ms: int
    calls_cursor_ms: int
    silent_next_s: float = 0.0
    # Calls and silences derived within the overlap, so a poll does not append them again.
    seen: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """Derives and delivers the events of the webhooks whose leases this process holds."""

    def __init__(
        self,
        db: Database,
        registry: WebhookRegistry,
        keys: TenantKeys,
        clock: Clock,
        settings: WebhookSettings,
    ) -> None:
        self._db = db
        self._registry = registry
        self._keys = keys
        self._clock = clock
        self.settings = settings
        self.holder = f"{uuid.uuid4()}"
        self._held: dict[WebhookKey, _Lease] = {}
        self._workers: dict[WebhookKey, asyncio.Task[None]] = {}
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=settings.timeout_s)

    @property
    def held(self) -> list[WebhookKey]:
        """The webhooks this process delivers now."""
        return list(self._held)

    async def run(self) -> None:
        """Refreshes webhooks, renews leases and runs one worker per held webhook until
        cancelled; failures are logged and retried next poll."""
        loop = asyncio.get_running_loop()
        next_renew = 0.0
        try:
            while True:
                try:
                    await self._registry.refresh()
                    if loop.time() >= next_renew:
                        next_renew = loop.time() + self.settings.renew_every_s
                        await self._renew()
                    self._sync_workers()
                except Exception:
                    log.exception("webhook dispatch failed; retrying")
                await asyncio.sleep(self.settings.poll_s)
        finally:
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
            self._workers.clear()

    async def close(self) -> None:
        """Closes the HTTP client (after ``run`` was cancelled)."""
        await self.client.aclose()

    async def _renew(self) -> None:
        hooks = {w.key: w for w in self._registry.all()}
        for key in [k for k in self._held if k not in hooks]:
            del self._held[key]
        if not hooks:
            return
        now = self._clock.now_ms()
        lease_ms = round(self.settings.lease_s * 1000)
        margin_ms = round(self.settings.margin_s * 1000)
        latest = await outbox.latest_terms(self._db, hooks)
        claims: list[tuple[WebhookKey, outbox.Term]] = []
        for key, w in hooks.items():
            t = latest.get(key)
            if t is None:
                claims.append((key, outbox.Term(1, self.holder, now + lease_ms, w.created_at_ms)))
            elif t.holder == self.holder or t.expires_ms + margin_ms < now:
                held = self._held.get(key)
                cursor = max(t.calls_cursor_ms, held.calls_cursor_ms if held else 0)
                claims.append((key, outbox.Term(t.term + 1, self.holder, now + lease_ms, cursor)))
            else:
                self._held.pop(key, None)
        await outbox.claim_terms(self._db, claims)
        won = await outbox.latest_terms(self._db, [k for k, _ in claims])
        for key, claimed in claims:
            winner = won.get(key)
            if winner is None or winner.holder != self.holder or winner.term != claimed.term:
                if self._held.pop(key, None) is not None:
                    log.info("webhook lease lost", webhook_id=key[1])
                continue
            held = self._held.get(key)
            if held is None:
                self._held[key] = _Lease(winner.term, claimed.expires_ms, winner.calls_cursor_ms)
                log.info("webhook lease taken", webhook_id=key[1], term=winner.term)
            else:
                held.term, held.expires_ms = winner.term, claimed.expires_ms

    def _sync_workers(self) -> None:
        for key in [k for k in self._workers if k not in self._held]:
            self._workers.pop(key).cancel()
        for key in self._held:
            task = self._workers.get(key)
            if task is None or task.done():
                self._workers[key] = asyncio.create_task(self._work(key), name=f"webhook-{key[1]}")

    def _may_attempt(self, lease: _Lease) -> bool:
        # No attempt may still run when the lease expires (another process may take it over).
        reserve_ms = (self.settings.timeout_s + self.settings.margin_s) * 1000
        return self._clock.now_ms() < lease.expires_ms - reserve_ms

    async def _work(self, key: WebhookKey) -> None:
        while True:
            lease, webhook = self._held.get(key), self._registry.get(key)
            if lease is None or webhook is None:
                return
            full = False
            if self._may_attempt(lease):
                try:
                    keyring = await self._keys.keyring(key[0])
                    await self._derive(webhook, lease, keyring)
                    full = await self._deliver_due(webhook, lease, keyring)
                except Exception:
                    log.exception("webhook worker failed; retrying", webhook_id=key[1])
            if not full:
                await asyncio.sleep(self.settings.poll_s)

    # --- derivation ---

    async def _derive(self, webhook: Webhook, lease: _Lease, keyring: Keyring) -> None:
        subs = set(webhook.events)
        types = set()
        if subs & {
            admin_pb2.WEBHOOK_EVENT_CALL_MISSED,
            admin_pb2.WEBHOOK_EVENT_CLIENT_NEVER_ATTENDED,
        }:
            types |= {event_sources.MISSED, event_sources.REJECTED}
        if admin_pb2.WEBHOOK_EVENT_LEAD_FIRST_CALL in subs:
            types.add(event_sources.OUTGOING)
        if types:
            await self._derive_calls(webhook, lease, keyring, types)
        if (
            admin_pb2.WEBHOOK_EVENT_DEVICE_SILENT in subs
            and time.monotonic() >= lease.silent_next_s
        ):
            lease.silent_next_s = time.monotonic() + SILENT_CHECK_S
            await self._derive_silent(webhook, lease, keyring)

    async def _derive_calls(
        self, webhook: Webhook, lease: _Lease, keyring: Keyring, types: set[int]
    ) -> None:
        now = self._clock.now_ms()
        tenant = webhook.tenant_id
        calls = await event_sources.synced_calls(
            self._db,
            tenant,
            types,
            lease.calls_cursor_ms - CALLS_OVERLAP_MS,
            now - CALLS_LOOKBACK_MS,
        )
        fresh = []
        for c in calls:
            seen_key = f"{c.device_id}|{c.call_id}"
            if seen_key not in lease.seen:
                lease.seen[seen_key] = c.synced_at_ms
                fresh.append(c)
        rows: list[Delivery] = []
        missed = [c for c in fresh if c.type in _CALL_TYPE_NAMES]
        outgoing = [c for c in fresh if c.type == event_sources.OUTGOING]
        private = await self._parties(webhook, keyring, missed + outgoing)
        subs = set(webhook.events)
        for c in missed:
            data = {
                "call_id": c.call_id,
                "device_id": c.device_id,
                "employee_id": c.employee_id,
                "call_type": _CALL_TYPE_NAMES[c.type],
                "started_at_ms": c.started_at_ms,
                "client_key": _client(c.client_key),
                **private.get((c.client_key, c.name_key), {}),
            }
            if admin_pb2.WEBHOOK_EVENT_CALL_MISSED in subs:
                kind = "call.missed"
                event_id = derived_id(kind, tenant, c.device_id, c.call_id)
                rows.append(
                    new_delivery(
                        webhook, keyring, kind, event_id, c.started_at_ms, data, created_ms=now
                    )
                )
            if admin_pb2.WEBHOOK_EVENT_CLIENT_NEVER_ATTENDED in subs:
                kind = "client.never_attended"
                after_s = webhook.never_attended_after_s or DEFAULT_NEVER_ATTENDED_S
                due = c.started_at_ms + after_s * 1000
                event_id = derived_id(kind, tenant, c.device_id, c.call_id)
                rows.append(
                    new_delivery(
                        webhook,
                        keyring,
                        kind,
                        event_id,
                        due,
                        {**data, "not_returned_for_s": after_s},
                        created_ms=now,
                        due_ms=due,
                        client_key=c.client_key,
                    )
                )
        if outgoing:
            rows += await self._first_calls(webhook, keyring, outgoing, private)
        await outbox.append(self._db, rows)
        # The cursor moves only once the events are durable; a full read stops at its last row.
        full = len(calls) >= event_sources.MAX_CALLS_PER_POLL
        lease.calls_cursor_ms = calls[-1].synced_at_ms if full else now
        floor = lease.calls_cursor_ms - CALLS_OVERLAP_MS
        lease.seen = {k: v for k, v in lease.seen.items() if v > floor}

    async def _parties(
        self, webhook: Webhook, keyring: Keyring, calls: list[event_sources.SyncedCall]
    ) -> dict[tuple[int, int], dict[str, str]]:
        """The decrypted number and name of each call's (client key, name key), for webhooks
        with include_numbers."""
        if not webhook.include_numbers or not calls:
            return {}
        found = await parties.lookup(self._db, webhook.tenant_id, [c.client_key for c in calls])
        out: dict[tuple[int, int], dict[str, str]] = {}
        for c in calls:
            party = found.get(c.client_key, parties.NO_PARTY)
            out[(c.client_key, c.name_key)] = {
                "number": keyring.decrypt(party.number_enc),
                "name": keyring.decrypt(party.name_enc(c.name_key)),
            }
        return out

    async def _first_calls(
        self,
        webhook: Webhook,
        keyring: Keyring,
        outgoing: list[event_sources.SyncedCall],
        private: dict[tuple[int, int], dict[str, str]],
    ) -> list[Delivery]:
        tenant = webhook.tenant_id
        now = self._clock.now_ms()
        leads = await event_sources.leads_of_clients(
            self._db, tenant, [c.client_key for c in outgoing]
        )
        if not leads:
            return []
        since: dict[int, int] = {}
        for lead in leads:
            since[lead.client_key] = min(
                lead.created_at_ms, since.get(lead.client_key, lead.created_at_ms)
            )
        first = await event_sources.first_outgoing(self._db, tenant, since)
        rows = []
        kind = "lead.first_call"
        for c in outgoing:
            for lead in leads:
                earliest = first.get(lead.client_key)
                # The first outgoing call to the lead's number since the lead was created.
                if (
                    lead.client_key != c.client_key
                    or c.started_at_ms < lead.created_at_ms
                    or earliest is None
                    or earliest[1:] != (c.device_id, c.call_id)
                ):
                    continue
                data: dict[str, Any] = {
                    "lead_id": lead.lead_id,
                    "assigned_employee_id": lead.employee_id,
                    "employee_id": c.employee_id,
                    "call_id": c.call_id,
                    "device_id": c.device_id,
                    "started_at_ms": c.started_at_ms,
                    "duration_s": c.duration_s,
                    "client_key": _client(c.client_key),
                }
                if webhook.include_numbers:
                    data |= {
                        "number": keyring.decrypt(lead.primary_enc),
                        "first_name": keyring.decrypt(lead.first_name_enc),
                        "last_name": keyring.decrypt(lead.last_name_enc),
                    }
                event_id = derived_id(kind, tenant, lead.lead_id)
                rows.append(
                    new_delivery(
                        webhook, keyring, kind, event_id, c.started_at_ms, data, created_ms=now
                    )
                )
        return rows

    async def _derive_silent(self, webhook: Webhook, lease: _Lease, keyring: Keyring) -> None:
        after_s = webhook.device_silent_after_s or DEFAULT_DEVICE_SILENT_S
        now = self._clock.now_ms()
        silent = await event_sources.silent_devices(
            self._db,
            webhook.tenant_id,
            now - after_s * 1000,
            webhook.created_at_ms - after_s * 1000,
        )
        kind = "device.silent"
        rows = []
        for s in silent:
            event_id = derived_id(kind, webhook.tenant_id, s.device_id, s.last_sync_ms)
            if event_id in lease.seen:
                continue
            lease.seen[event_id] = now + after_s * 1000  # kept while the device stays silent
            data = {
                "device_id": s.device_id,
                "employee_id": s.employee_id,
                "last_sync_ms": s.last_sync_ms,
                "silent_for_s": after_s,
            }
            occurred = s.last_sync_ms + after_s * 1000
            rows.append(
                new_delivery(webhook, keyring, kind, event_id, occurred, data, created_ms=now)
            )
        await outbox.append(self._db, rows)

    # --- delivery ---

    async def _deliver_due(self, webhook: Webhook, lease: _Lease, keyring: Keyring) -> bool:
        """Attempts the due deliveries (a bounded read); True when the read was full."""
        limit = self.settings.max_in_flight * _DUE_PER_SLOT
        due = await outbox.due(self._db, webhook.key, self._clock.now_ms(), limit)
        if not due:
            return False
        due = await self._drop_returned(webhook, due)
        secret = keyring.decrypt(webhook.secret_enc)
        slots = asyncio.Semaphore(self.settings.max_in_flight)
        changed: list[Delivery] = []

        async def attempt(d: Delivery) -> None:
            try:
                body = keyring.decrypt(d.body_enc).encode()
                result = await post(
                    self.client,
                    webhook.url,
                    secret,
                    d.event_id,
                    d.type,
                    body,
                    self.settings.timeout_s,
                    self._clock.now_ms() // 1000,
                )
                changed.append(
                    after_attempt(
                        d, result, self._clock.now_ms(), self._clock.now_ns(), self.settings
                    )
                )
            finally:
                slots.release()

        tasks = []
        for d in due:
            await slots.acquire()
            if not self._may_attempt(lease) or self._held.get(webhook.key) is not lease:
                slots.release()
                break
            tasks.append(asyncio.create_task(attempt(d)))
        try:
            await asyncio.gather(*tasks)
        finally:
            await outbox.append(self._db, changed)
        return len(due) >= limit

    async def _drop_returned(self, webhook: Webhook, due: list[Delivery]) -> list[Delivery]:
        """Drops the client.never_attended events whose client got a connected call since the
        missed call; returns the deliveries left to attempt."""
        waiting = [d for d in due if d.type == "client.never_attended" and d.attempts == 0]
        if not waiting:
            return due
        after_ms = (webhook.never_attended_after_s or DEFAULT_NEVER_ATTENDED_S) * 1000
        connected = await event_sources.last_connected(
            self._db,
            webhook.tenant_id,
            {d.client_key for d in waiting},
            min(d.occurred_at_ms for d in waiting) - after_ms,
        )
        now_ns = self._clock.now_ns()
        returned = {
            d.event_id
            for d in waiting
            if connected.get(d.client_key, 0) > d.occurred_at_ms - after_ms
        }
        await outbox.append(
            self._db,
            [_changed(d, now_ns, is_deleted=True) for d in waiting if d.event_id in returned],
        )
        return [d for d in due if d.event_id not in returned]


@dataclass(frozen=True)
class Webhooks:
    """What the RPCs need of webhooks: the registry, the event appender and the dispatcher."""

    registry: WebhookRegistry
    events: WebhookEvents
    dispatcher: Dispatcher
