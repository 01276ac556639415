"""Checks ``callsight serve`` makes before it creates anything, so that the usual mistakes end in
one line and exit status 2 instead of a traceback (or a half-made data directory): the listen
or metrics address in use, a data directory that is not a usable directory, and, with the
embedded ClickHouse, a data directory another callsight process is serving from.

The data directory lock is an ``flock`` on ``<data dir>/callsight.lock`` held for the life of the
process (the kernel drops it when the process dies, also on SIGKILL); the file names the holder's
pid for the message. It is taken here, not in ``Service``, because tests run many services in one
process on one chDB path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from callsight.core.errors import CallsightError
from callsight.server.config import Config

LOCK_FILE = "callsight.lock"


class StartupError(CallsightError):
    """Serving cannot start as configured; the message says what to change."""


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a validated HOST:PORT; an IPv6 host loses its brackets, an empty host
    means every interface."""
    host, _, port_text = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def check_listen(listen: str) -> None:
    """StartupError if ``listen`` (HOST:PORT) cannot be bound now; port 0 always can."""
    _check_bind(listen, "listen on", "--listen HOST:PORT")


def check_metrics_listen(address: str | None) -> None:
    """StartupError if the metrics address (HOST:PORT; None: metrics off) cannot be bound now."""
    if address is not None:
        _check_bind(address, "serve metrics on", "--metrics-listen HOST:PORT (or off)")


def _check_bind(address: str, what: str, fix: str) -> None:
    host, port = split_address(address)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gRPC and the HTTP server bind: address reuse on, so a port in TIME_WAIT is not
        # "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"cannot {what} {address}: the address is in use (another callsight or "
                    f"another program serves there); stop it or pass {fix}"
                ) from None
            if exc.errno == errno.EACCES:
                raise StartupError(
                    f"cannot {what} {address}: permission denied (ports below 1024 need "
                    f"privileges); pass {fix} with a higher port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise StartupError(
                    f"cannot {what} {address}: {host} is not an address of this machine; pass {fix}"
                ) from None
            raise StartupError(f"cannot {what} {address}: {exc.strerror}") from None


def check_data_dir(data_dir: Path) -> None:
    """StartupError unless ``data_dir`` is (or can become) a directory this user can use."""
    if data_dir.exists():
        if not data_dir.is_dir():
            raise StartupError(f"data directory {data_dir} is not a directory; pass --data-dir DIR")
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise StartupError(
                f"data directory {data_dir} is not readable and writable by this user "
                f"(uid {os.getuid()}); fix its permissions or pass --data-dir DIR"
            )
        return
    parent = next((p for p in data_dir.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(
            f"data directory {data_dir} does not exist and cannot be created in {parent}; "
            "create it or pass --data-dir DIR"
        )


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Takes the data directory's lock for this process; keep the returned file open while
    serving. StartupError naming the holder if another process has it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StartupError(
            f"data directory {data_dir} is in use by another callsight process (pid {holder}); "
            "stop it, or give this one another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def preflight(config: Config) -> IO[str] | None:
    """Every check, in an order that creates nothing before the last one passes; returns the
    data directory lock (embedded ClickHouse) to hold while serving."""
    check_listen(config.listen)
    check_metrics_listen(config.metrics_address)
    check_data_dir(config.data_dir)
    return lock_data_dir(config.data_dir) if config.is_embedded else None
