"""What every part of the load tester shares: auth metadata, CPU time, result files, the commit.

Nothing here imports callsight: black-box and white-box modules alike may use it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
MAX_MESSAGE_BYTES = 16 * MiB  # what the load tester's channels accept (the server takes ~4 MiB)

Metadata = tuple[tuple[str, str], ...]
Say = Callable[[str], None]
T = TypeVar("T")


def auth(token: str) -> Metadata:
    """gRPC metadata carrying a bearer token (a device token or an API key)."""
    return (("authorization", f"Bearer {token}"),)


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """When to retry: the server's ``RetryInfo`` delay of an UNAVAILABLE error (1 s without
    one) or of a RESOURCE_EXHAUSTED one (a quota: without RetryInfo it is a limit, not a wait);
    None for an error that retrying does not fix."""
    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return None
    for detail in _status_details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    # UNAVAILABLE without advice: back off a second.
    return 1.0 if error.code() == grpc.StatusCode.UNAVAILABLE else None


# The ErrorInfo reason of a stream the server ended because it sent nothing: routine.
STREAM_IDLE = "STREAM_IDLE"


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ``google.rpc.ErrorInfo`` reason in the error's rich status, if it has one."""
    for detail in _status_details(error):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def _status_details(error: grpc.aio.AioRpcError) -> Iterator[any_pb2.Any]:
    """The details of the error's rich status (``grpc-status-details-bin``), if it has one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            yield from status_pb2.Status.FromString(value).details


async def patiently(call: Callable[[], Awaitable[T]], patience_s: float = 300.0) -> T:
    """``await call()``, again after the server's retry delay while it says to retry, for up to
    ``patience_s`` in all (a quota or a restart is waited out, not reported as a failure)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            delay = retry_delay_s(exc)
            if delay is None or time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(message: str) -> None:
    """A progress message on stderr (stdout is for the figures)."""
    print(message, file=sys.stderr, flush=True)


def commit() -> str | None:
    """The checkout's short commit id, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None, recursively."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` to ``path`` as strict, indented JSON (NaN becomes null), parents made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")
    say(f"wrote {path}")


def num(value: Any, digits: int = 0) -> str:
    """``value`` with thousands separators; "-" for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def aligned(lines: Sequence[tuple[str, str]]) -> str:
    """(name, value) pairs as a two-column table."""
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``header`` and ``rows`` as table lines: the first column left-aligned, the others
    right-aligned, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def add_flags(parser: argparse._ActionsContainer, *flags: tuple[Any, ...]) -> None:
    """Adds ``(name, default[, help[, extra keywords]])`` flags: a False default makes a switch,
    a list a repeatable flag, a type (a callable) a flag with no default; any other default gives
    the type."""
    for name, default, *rest in flags:
        kwargs: dict[str, Any] = {"help": rest[0] if rest else None, **(rest[1:] or [{}])[0]}
        if default is False:
            kwargs["action"] = "store_true"
        elif isinstance(default, list):
            kwargs.update(action="append", default=default)
        elif callable(default):
            kwargs["type"] = default
        else:
            kwargs.update(type=type(default), default=default)
        parser.add_argument(name, **kwargs)


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a spawned process (chDB opens one data path per process)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
