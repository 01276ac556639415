"""A report stopped by its database bounds, or refused by its quota, gets a precise status."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from callsight.core.errors import DeadlineExceeded, ResourceExhausted, StorageError
from callsight.server.errors import client_message, status_code, trailing_metadata
from callsight.server.report_call import bounded_error

SETTINGS = {"max_memory_usage": 1 << 30, "max_threads": 1, "max_execution_time": 60}


def test_a_report_over_the_memory_bound_is_resource_exhausted_and_told_to_ask_less() -> None:
    error = bounded_error(StorageError("ClickHouse error: memory", 241), SETTINGS)
    assert isinstance(error, ResourceExhausted)
    assert status_code(error) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1,024 MiB" in client_message(error) and "shorter range" in client_message(error)
    assert trailing_metadata(error) == ()  # the same report would fail again


def test_a_report_over_the_time_bound_is_deadline_exceeded_and_told_to_ask_less() -> None:
    for code in (159, 160):
        error = bounded_error(StorageError("ClickHouse error: timeout", code), SETTINGS)
        assert isinstance(error, DeadlineExceeded)
        assert status_code(error) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "(60 s)" in client_message(error) and "shorter range" in client_message(error)


def test_other_storage_errors_pass_through() -> None:
    error = StorageError("ClickHouse error: Too many parts", 252)
    assert bounded_error(error, SETTINGS) is error
    assert status_code(error) == grpc.StatusCode.UNAVAILABLE


def test_a_quota_refusal_carries_its_retry_delay() -> None:
    error = ResourceExhausted("retry after 2.5 s", retry_after_s=2.5)
    ((key, value),) = trailing_metadata(error)
    assert key == "grpc-status-details-bin" and isinstance(value, bytes)
    status = status_pb2.Status.FromString(value)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500
