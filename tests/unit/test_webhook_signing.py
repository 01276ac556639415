"""Webhook signatures, backoff and URL rules, without a server."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from callsight.core.errors import InvalidArgument
from callsight.server.webhooks import (
    Attempt,
    WebhookSettings,
    after_attempt,
    backoff_cap_s,
    backoff_s,
    check_url,
    derived_id,
    signature,
)
from callsight.storage.outbox import DEAD, DELIVERED, PENDING, Delivery


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"e1"}'
    header = signature("whsec_abc", 1_700_000_000, body)
    expected = hmac.new(b"whsec_abc", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signature("whsec_abd", 1_700_000_000, body) != header
    assert signature("whsec_abc", 1_700_000_001, body) != header


def test_backoff_doubles_to_its_cap_with_full_jitter() -> None:
    settings = WebhookSettings(retry_initial_s=1.0, retry_max_s=3600.0)
    assert [backoff_cap_s(n, settings) for n in (1, 2, 3, 4, 12, 13, 500)] == [
        1.0, 2.0, 4.0, 8.0, 2048.0, 3600.0, 3600.0,
    ]  # fmt: skip
    assert backoff_s(3, settings, lambda lo, hi: hi) == 4.0
    assert backoff_s(3, settings, lambda lo, hi: lo) == 0.0
    assert all(0.0 <= backoff_s(5, settings) <= 16.0 for _ in range(1000))


def _delivery(attempts: int = 0, retry_from_ms: int = 0, version: int = 0) -> Delivery:
    return Delivery(
        "t", "w", 0, "e", "call.missed", b"", 0, PENDING, attempts, 0, "", 0, retry_from_ms, version
    )


def test_after_an_attempt_delivered_pending_or_dead() -> None:
    settings = WebhookSettings(retry_initial_s=1.0, retry_max_s=8.0, retry_window_s=100.0)
    ok = after_attempt(_delivery(), Attempt(204, "", 5), 1_000, 7, settings)
    assert (ok.state, ok.attempts, ok.last_status, ok.version) == (DELIVERED, 1, 204, 7)
    failed = after_attempt(_delivery(2), Attempt(500, "HTTP 500", 5), 50_000, 9, settings)
    assert failed.state == PENDING and failed.attempts == 3
    assert 50_000 <= failed.next_attempt_at_ms <= 54_000
    dead = after_attempt(_delivery(9), Attempt(0, "timeout", 5), 100_000, 9, settings)
    assert (dead.state, dead.last_error) == (DEAD, "timeout")
    # A later row always outranks the one read, even from a process whose clock is behind.
    assert after_attempt(_delivery(version=50), Attempt(200, "", 1), 0, 3, settings).version == 51


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/hook",
        "http://127.0.0.1:8080/x",
        "http://[::1]/x",
        "http://localhost/",
    ],
)
def test_urls_allowed(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["http://crm.example.com/", "http://192.168.1.4/", "ftp://x.example.com/", "https://", ""],
)
def test_urls_refused(url: str) -> None:
    with pytest.raises(InvalidArgument):
        check_url(url)


def test_derived_ids_are_stable() -> None:
    assert derived_id("call.missed", "t", "d", "c1") == derived_id("call.missed", "t", "d", "c1")
    assert derived_id("call.missed", "t", "d", "c1") != derived_id("call.missed", "t", "d", "c2")
    assert derived_id("call.missed", "t", "d", "c1") != derived_id(
        "lead.first_call", "t", "d", "c1"
    )
