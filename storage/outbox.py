"""Webhooks and their durable outbox in ClickHouse (migration 0016).

``webhooks`` holds the subscriptions (the secret sealed under the tenant's key). The outbox,
``webhook_deliveries``, holds one row per (webhook, event) from before the first attempt until
it expires; every change of state appends a row with a higher version and readers take the
newest with FINAL. A creation row has version 0, so an event derived again after a restart
never undoes a delivery. Leases (``webhook_leases``) say which process delivers a webhook.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter
from callsight.storage.sql import Sql

WEBHOOKS = "webhooks"
DELIVERIES = "webhook_deliveries"
LEASES = "webhook_leases"

PENDING, DELIVERED, DEAD = "PENDING", "DELIVERED", "DEAD"
_WEBHOOK_COLUMNS = (
    "tenant_id",
    "webhook_id",
    "url",
    "events",
    "include_numbers",
    "never_attended_after_s",
    "device_silent_after_s",
    "secret_enc",
    "created_at",
    "version",
    "is_deleted",
)
_DELIVERY_COLUMNS = (
    "tenant_id",
    "webhook_id",
    "occurred_at",
    "event_id",
    "type",
    "body_enc",
    "client_key",
    "state",
    "attempts",
    "last_status",
    "last_error",
    "next_attempt_at",
    "retry_from",
    "version",
    "is_deleted",
)
_LEASE_COLUMNS = ("tenant_id", "webhook_id", "term", "holder", "expires_at", "calls_cursor_ms")

WebhookKey = tuple[str, str]  # (tenant_id, webhook_id)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Webhook:
    """A subscription; ``events`` are WebhookEvent numbers, ``secret_enc`` the sealed secret."""

    tenant_id: str
    webhook_id: str
    url: str
    events: tuple[int, ...]
    include_numbers: bool
    never_attended_after_s: int
    device_silent_after_s: int
    secret_enc: bytes
    created_at_ms: int

    @property
    def key(self) -> WebhookKey:
        """(tenant_id, webhook_id)."""
        return self.tenant_id, self.webhook_id


def _webhook_row(w: Webhook, version: int, deleted: bool) -> tuple[Any, ...]:
    return (
        w.tenant_id,
        w.webhook_id,
        w.url,
        list(w.events),
        w.include_numbers,
        w.never_attended_after_s,
        w.device_silent_after_s,
        w.secret_enc,
        _time(w.created_at_ms),
        version,
        int(deleted),
    )


async def put_webhook(db: Database, webhook: Webhook, version: int) -> None:
    """Stores a new webhook."""
    await db.insert_rows(WEBHOOKS, [_webhook_row(webhook, version, False)], _WEBHOOK_COLUMNS)


async def delete_webhook(db: Database, webhook: Webhook, version: int) -> None:
    """Deletes a webhook; its outbox rows are no longer read by anyone and expire."""
    await db.insert_rows(WEBHOOKS, [_webhook_row(webhook, version, True)], _WEBHOOK_COLUMNS)


async def webhooks(db: Database, tenant_id: str | None = None) -> list[Webhook]:
    """The live webhooks of a tenant (every tenant when None), newest first."""
    where = "" if tenant_id is None else " WHERE tenant_id = {t:String}"
    rows = await db.named_rows(
        Sql(
            "SELECT tenant_id, webhook_id, url, events, include_numbers, never_attended_after_s,"
            " device_silent_after_s, secret_enc, created_at"
            f" FROM {WEBHOOKS} FINAL{where} ORDER BY created_at DESC, webhook_id",
            {} if tenant_id is None else {"t": tenant_id},
        ),
        binary=["secret_enc"],
    )
    return [
        Webhook(
            tenant_id=r["tenant_id"],
            webhook_id=r["webhook_id"],
            url=r["url"],
            events=tuple(int(e) for e in r["events"]),
            include_numbers=bool(r["include_numbers"]),
            never_attended_after_s=int(r["never_attended_after_s"]),
            device_silent_after_s=int(r["device_silent_after_s"]),
            secret_enc=bytes(r["secret_enc"]),
            created_at_ms=_ms(r["created_at"]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, as the outbox holds it."""

    tenant_id: str
    webhook_id: str
    occurred_at_ms: int
    event_id: str
    type: str
    body_enc: bytes
    client_key: int
    state: str
    attempts: int
    last_status: int
    last_error: str
    next_attempt_at_ms: int
    retry_from_ms: int
    version: int
    is_deleted: bool = False


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    return (
        d.tenant_id,
        d.webhook_id,
        _time(d.occurred_at_ms),
        d.event_id,
        d.type,
        d.body_enc,
        d.client_key,
        d.state,
        d.attempts,
        d.last_status,
        d.last_error,
        _time(d.next_attempt_at_ms),
        _time(d.retry_from_ms),
        d.version,
        int(d.is_deleted),
    )


def _delivery(r: dict[str, Any]) -> Delivery:
    return Delivery(
        tenant_id=r["tenant_id"],
        webhook_id=r["webhook_id"],
        occurred_at_ms=_ms(r["occurred_at"]),
        event_id=r["event_id"],
        type=r["type"],
        body_enc=bytes(r["body_enc"]),
        client_key=int(r["client_key"]),
        state=r["state"],
        attempts=int(r["attempts"]),
        last_status=int(r["last_status"]),
        last_error=r["last_error"],
        next_attempt_at_ms=_ms(r["next_attempt_at"]),
        retry_from_ms=_ms(r["retry_from"]),
        version=int(r["version"]),
    )


async def append(db: Database, deliveries: Sequence[Delivery]) -> None:
    """Writes new events or new states of deliveries in one insert."""
    if deliveries:
        await db.insert_rows(DELIVERIES, [_delivery_row(d) for d in deliveries], _DELIVERY_COLUMNS)


async def append_grouped(writer: GroupWriter, deliveries: Sequence[Delivery]) -> None:
    """Like ``append``, sharing one insert with concurrent callers (the RPC paths)."""
    await writer.insert(DELIVERIES, _DELIVERY_COLUMNS, [_delivery_row(d) for d in deliveries])


_SELECT = (
    "SELECT tenant_id, webhook_id, occurred_at, event_id, type, body_enc, client_key, state,"
    " attempts, last_status, last_error, next_attempt_at, retry_from, version"
    f" FROM {DELIVERIES} FINAL"
)


async def due(db: Database, key: WebhookKey, now_ms: int, limit: int) -> list[Delivery]:
    """The webhook's pending deliveries due by ``now_ms``, oldest event first, at most ``limit``.

    FINAL applies before the state filter, so a delivery a later row marked done never shows.
    """
    rows = await db.named_rows(
        Sql(
            _SELECT + " WHERE tenant_id = {t:String} AND webhook_id = {w:String}"
            " AND state = 'PENDING' AND next_attempt_at <= {now:DateTime64(3, 'UTC')}"
            " ORDER BY occurred_at, event_id LIMIT {limit:UInt32}",
            {"t": key[0], "w": key[1], "now": _time(now_ms), "limit": limit},
        ),
        binary=["body_enc"],
    )
    return [_delivery(r) for r in rows]


async def page(
    db: Database,
    key: WebhookKey,
    state: str | None,
    after: tuple[int, str] | None,
    limit: int,
) -> list[Delivery]:
    """Deliveries newest first, strictly older than ``after`` (occurred ms, event id)."""
    query = Sql(
        _SELECT + " WHERE tenant_id = {t:String} AND webhook_id = {w:String}",
        {"t": key[0], "w": key[1]},
    )
    if state is not None:
        query += Sql(" AND state = {state:String}", {"state": state})
    if after is not None:
        query += Sql(
            " AND (occurred_at, event_id) < ({at:DateTime64(3, 'UTC')}, {id:String})",
            {"at": _time(after[0]), "id": after[1]},
        )
    query += Sql(" ORDER BY occurred_at DESC, event_id DESC LIMIT {limit:UInt32}", {"limit": limit})
    return [_delivery(r) for r in await db.named_rows(query, binary=["body_enc"])]


async def by_ids(db: Database, key: WebhookKey, event_ids: Iterable[str]) -> list[Delivery]:
    """The deliveries of ``event_ids`` (those that exist)."""
    ids = sorted(set(event_ids))
    if not ids:
        return []
    rows = await db.named_rows(
        Sql(
            _SELECT + " WHERE tenant_id = {t:String} AND webhook_id = {w:String}"
            " AND event_id IN {ids:Array(String)}",
            {"t": key[0], "w": key[1], "ids": ids},
        ),
        binary=["body_enc"],
    )
    return [_delivery(r) for r in rows]


async def dead(db: Database, key: WebhookKey, limit: int) -> list[Delivery]:
    """Up to ``limit`` dead deliveries of the webhook, oldest first."""
    rows = await db.named_rows(
        Sql(
            _SELECT + " WHERE tenant_id = {t:String} AND webhook_id = {w:String}"
            " AND state = 'DEAD' ORDER BY occurred_at, event_id LIMIT {limit:UInt32}",
            {"t": key[0], "w": key[1], "limit": limit},
        ),
        binary=["body_enc"],
    )
    return [_delivery(r) for r in rows]


# --- leases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """The winner of a lease term: who holds it, until when, and its derivation cursor."""

    term: int
    holder: str
    expires_ms: int
    calls_cursor_ms: int


async def claim_terms(db: Database, claims: Sequence[tuple[WebhookKey, Term]]) -> None:
    """Appends one claim per (webhook, term) in one insert; read the winners back after."""
    if claims:
        await db.insert_rows(
            LEASES,
            [
                (k[0], k[1], t.term, t.holder, _time(t.expires_ms), t.calls_cursor_ms)
                for k, t in claims
            ],
            _LEASE_COLUMNS,
        )


async def latest_terms(db: Database, keys: Iterable[WebhookKey]) -> dict[WebhookKey, Term]:
    """Each webhook's latest term and its winner: the claim with the lowest (_block_number,
    holder), which every reader that starts after its own claim names alike."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = await db.named_rows(
        Sql(
            "SELECT tenant_id, webhook_id, term,"
            " argMin(holder, (_block_number, holder)) AS winner,"
            " argMin(expires_at, (_block_number, holder)) AS expires,"
            " argMin(calls_cursor_ms, (_block_number, holder)) AS cursor"
            f" FROM {LEASES}"
            " WHERE tenant_id IN {t:Array(String)} AND webhook_id IN {w:Array(String)}"
            " GROUP BY tenant_id, webhook_id, term"
            " ORDER BY term DESC LIMIT 1 BY tenant_id, webhook_id",
            {"t": sorted({t for t, _ in wanted}), "w": sorted({w for _, w in wanted})},
        )
    )
    return {
        (r["tenant_id"], r["webhook_id"]): Term(
            int(r["term"]), r["winner"], _ms(r["expires"]), int(r["cursor"])
        )
        for r in rows
        if (r["tenant_id"], r["webhook_id"]) in wanted
    }
