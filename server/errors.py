"""The one place where exceptions become gRPC statuses.

A client always gets a precise status and a message that says what to fix, never a stack trace.
``Unavailable`` and a ``ResourceExhausted`` that a retry can pass carry a ``google.rpc.RetryInfo``
in the rich status details so clients know how long to back off.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from callsight.core.errors import (
    AlreadyExists,
    CallsightError,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StorageError,
    StorageRefused,
    StreamIdle,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

_CODES: tuple[tuple[type[CallsightError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    # Before StorageError: a refusal is a bug on our side that a retry cannot fix.
    (StorageRefused, grpc.StatusCode.INTERNAL),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)

_DIGITS = re.compile(r"\+?\d[\d\s().-]{2,}\d")
# A run with fewer digits is a code, a count or a standard's number ("ISO 3166-1"), not a phone
# number: the shortest numbers dialled with their country code have 6 or more.
_MIN_NUMBER_DIGITS = 6


def status_code(exc: CallsightError) -> grpc.StatusCode:
    """The gRPC status code for one of our errors."""
    if isinstance(exc, Unimplemented):
        return grpc.StatusCode.UNIMPLEMENTED
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def client_message(exc: CallsightError) -> str:
    """What the client is told."""
    if isinstance(exc, StorageRefused):
        # Code and name only: the database's text may quote stored values.
        return (
            f"the database refused this batch (ClickHouse error {exc.code} {exc.name}); it was "
            "not stored and sending it again will fail the same way until the server is fixed"
        )
    if isinstance(exc, StorageError):
        # The database's own text may name internals; the client only needs to retry.
        return "the database is unavailable; retry with backoff"
    return str(exc)


def trailing_metadata(exc: CallsightError) -> tuple[tuple[str, bytes | str], ...]:
    """Rich status details: a RetryInfo for errors the client should retry, and an ErrorInfo
    (domain "callsight", reason ``STREAM_IDLE``) for a stream the server ended as idle."""
    if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
        return _retry_details(code_pb2.RESOURCE_EXHAUSTED, exc, exc.retry_after_s)
    if isinstance(exc, Unavailable | StorageError) and not isinstance(exc, StorageRefused):
        delay = exc.retry_after_s if isinstance(exc, Unavailable) else 1.0
        reason = STREAM_IDLE if isinstance(exc, StreamIdle) else None
        return _retry_details(code_pb2.UNAVAILABLE, exc, delay, reason)
    return ()


# ErrorInfo of a stream the server ended because it sent nothing (StreamIdle).
ERROR_DOMAIN = "callsight"
STREAM_IDLE = "STREAM_IDLE"


def _retry_details(
    code: int, exc: CallsightError, delay: float, reason: str | None = None
) -> tuple[tuple[str, bytes | str], ...]:
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay), nanos=int((delay - int(delay)) * 1e9))
    )
    status = status_pb2.Status(code=code, message=client_message(exc))
    status.details.add().Pack(retry)
    if reason is not None:
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return (("grpc-status-details-bin", status.SerializeToString()),)


def redact(text: str) -> str:
    """Masks anything that looks like a phone number so that it can be logged."""

    def mask(match: re.Match[str]) -> str:
        digits = sum(char.isdigit() for char in match.group())
        return "<number>" if digits >= _MIN_NUMBER_DIGITS else match.group()

    return _DIGITS.sub(mask, text)
