"""The project's exception hierarchy.

It lives in the core, below every layer, so that storage, pipeline and server all raise the same
types; ``callsight.server.errors`` maps each class to a gRPC status in one place.
"""

from __future__ import annotations


class CallsightError(Exception):
    """Root of every error callsight raises on purpose. The message tells the caller what to fix."""


class InvalidArgument(CallsightError):
    """The request is malformed or violates a documented limit."""


class NotFound(CallsightError):
    """A referenced entity does not exist for the caller's tenant."""


class AlreadyExists(CallsightError):
    """The entity to create exists already."""


class FailedPrecondition(CallsightError):
    """The request is valid but the system is not in a state to serve it."""


class Unauthenticated(CallsightError):
    """The caller presented no token, or one that is unknown, expired or revoked."""


class PermissionDenied(CallsightError):
    """The caller is known but may not do this."""


class Unavailable(CallsightError):
    """Temporarily unable to serve; the caller should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamIdle(Unavailable):
    """The server ended a stream that was sending nothing, to free its slot: routine, not a
    failure. The client opens a new stream when it has something to send. Its status carries a
    ``google.rpc.ErrorInfo`` with reason ``STREAM_IDLE``."""


class ResourceExhausted(CallsightError):
    """The caller used up a quota, or a request needs more than one may use.

    ``retry_after_s`` says when a retry may pass (a quota refills); None when the same request
    can never pass (it needs more memory than a report may use) and must be made smaller.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(CallsightError):
    """The work ran past the longest the server allows for it; a smaller request may finish."""


class Unimplemented(CallsightError):
    """The RPC belongs to a capability not built yet."""


class StorageError(CallsightError):
    """ClickHouse failed; ``code`` keeps ClickHouse's numeric error code when it gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StorageRefused(StorageError):
    """ClickHouse refused the request for good (a type error, an unknown column: a bug).

    Sending the same request again cannot succeed, so it is never retried; ``name`` is
    ClickHouse's symbolic name for ``code`` (e.g. ``TYPE_MISMATCH``) when known.
    """

    def __init__(self, message: str, code: int, name: str) -> None:
        super().__init__(message, code)
        self.name = name


class ConfigError(CallsightError):
    """The configuration is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems
