"""ClickHouse errors are classified by code; a refusal reaches the client as a precise status."""

from __future__ import annotations

import grpc
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from callsight.core.errors import StorageError, StorageRefused
from callsight.server.errors import client_message, status_code, trailing_metadata
from callsight.storage.database import _storage_error

SECRET_VALUE = "value '+919876543210' cannot be parsed"


def test_a_code_that_can_never_succeed_is_a_refusal() -> None:
    error = _storage_error(DatabaseError(f"Code: 53. {SECRET_VALUE}", code=53))
    assert isinstance(error, StorageRefused)
    assert (error.code, error.name) == (53, "TYPE_MISMATCH")


def test_the_code_is_read_from_the_message_when_the_driver_has_none() -> None:
    error = _storage_error(DatabaseError("Code: 16. DB::Exception: No such column x"))
    assert isinstance(error, StorageRefused) and error.code == 16


def test_load_network_and_unknown_errors_stay_retryable() -> None:
    for exc in (
        DatabaseError("Code: 252. Too many parts", code=252, name="TOO_MANY_PARTS"),
        DatabaseError("Code: 241. Memory limit exceeded", code=241),
        OperationalError("connection reset"),
    ):
        error = _storage_error(exc)
        assert type(error) is StorageError


def test_a_refusal_is_internal_says_why_and_quotes_no_value() -> None:
    error = StorageRefused(f"ClickHouse error: {SECRET_VALUE}", 53, "TYPE_MISMATCH")
    assert status_code(error) == grpc.StatusCode.INTERNAL
    message = client_message(error)
    assert "refused" in message and "53 TYPE_MISMATCH" in message
    assert "9876543210" not in message
    assert trailing_metadata(error) == ()  # no RetryInfo: retrying cannot help


def test_a_transient_storage_error_still_asks_for_a_retry() -> None:
    error = StorageError("ClickHouse error: Too many parts", 252)
    assert status_code(error) == grpc.StatusCode.UNAVAILABLE
    assert trailing_metadata(error)
