"""Settings for ``callsight serve``: one frozen dataclass, loaded from flags, env and defaults.

Precedence is flags > ``CALLSIGHT_*`` environment variables > the defaults on ``Config``.
Secrets (operator token, master key) are read from the environment only, because flags show
up in ``ps``. Validation collects every problem and raises one ``ConfigError`` listing them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import importlib.metadata
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote_plus, urlsplit

from callsight.core.errors import ConfigError
from callsight.pipeline.settings import PipelineSettings
from callsight.server.operator import read_tokens
from callsight.server.report_quota import ReportLimits

__all__ = ["Config", "Secret", "build_arg_parser", "describe", "load"]


class Secret:
    """A string that never shows itself in ``repr``/``str``; ``reveal()`` returns it."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """Return the wrapped value; call it only where the value is used, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing tokens does not leak how much of them matched.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # The default slot-state protocol would go through the blocked __setattr__.
        return (Secret, (self._value,))


# An empty DSN means "derive it from data_dir"; Config.__post_init__ replaces it.
_DERIVED_DSN = Secret("")

LOG_LEVELS = ("debug", "info", "warning", "error")


def default_decode_workers() -> int:
    """One decode worker per CPU this process may use, at most 4; none on a single CPU.

    Not one fewer for the server itself: its event loop's share of a large batch is a fraction
    of the worker's, and inserts run in ClickHouse's threads without the interpreter lock (a
    500-phone backfill on 2 CPUs: 99k records/s with 2 workers, 86k with 1, means of 4 runs).
    """
    cpus = len(os.sched_getaffinity(0))
    return min(4, cpus) if cpus > 1 else 0


@dataclass(frozen=True)
class Config:
    """Every setting of a callsight server process, with its default; always valid once built.

    Building one validates it and raises ``ConfigError`` with every problem found. An empty
    ``dsn`` is replaced by the embedded default ``chdb://<absolute data_dir>/clickhouse``.
    """

    listen: str = "127.0.0.1:50051"
    # Prometheus GET /metrics (server/metrics.py); "off" (or "" when built directly): none.
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: Path = Path("./data")
    dsn: Secret = _DERIVED_DSN
    # Database inside ClickHouse; tests isolate themselves by name within one chDB path.
    database: str = "callsight"
    # A ClickHouse cluster (remote_servers name): tables are made ON CLUSTER as replicated local
    # tables behind Distributed ones (storage/cluster.py). None: one ClickHouse.
    cluster: str | None = None
    operator_token: Secret | None = None
    # A file of operator tokens, one per line, read again when it changes (server/operator.py):
    # the token can be rotated without a restart. Exclusive with operator_token.
    operator_token_file: Path | None = None
    # Raw key bytes: kept out of repr; describe() shows only whether it is set.
    master_key: bytes | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    grace_period_s: float = 10.0
    batch_max_rows: int = 50_000
    batch_max_bytes: int = 32 * 1024 * 1024
    batch_max_age_ms: int = 200
    buffer_max_bytes: int = 256 * 1024 * 1024
    max_inserts_in_flight: int = 2
    # Processes that decode, normalise and encrypt large chunks of batches beside the event loop
    # (0: all of it on the loop): one per core beyond the server's own, at most 4.
    decode_workers: int = field(default_factory=default_decode_workers)
    dedup_max_entries: int = 1_000_000
    write_retry_initial_s: float = 0.05
    write_retry_max_s: float = 5.0
    # A flush still failing this long after its first try fails its batches' acks (UNAVAILABLE).
    write_retry_max_elapsed_s: float = 60.0
    # Admission by time: a batch waits (Stream) or is refused (Upload) while the work queued
    # ahead of it would take longer than this to write at the measured drain rate.
    # Queued work includes the batcher's own wait (up to batch_max_age_ms): 500 ms throttled
    # 1,000 phones syncing every second below saturation (ack p99 2.0 s vs 0.85 s at 1,000 ms).
    admission_max_queue_ms: int = 1000
    # Acks a stream may have computed but not yet sent before the server stops reading it.
    stream_max_unacked: int = 32
    # Fair admission: while other devices hold or wait for ingest budget, one device may hold at
    # most max(the queue admission allows / active devices, this); 1 MiB is a few ordinary
    # batches, so the cap only bites a device flooding while others wait.
    device_min_share_bytes: int = 1024 * 1024
    # Open IngestService.Stream calls: server-wide and per device, beyond which a new one gets
    # RESOURCE_EXHAUSTED (each may hold a message of up to 4 MiB being read). 4 per device
    # leaves room for a phone reconnecting while its dead streams are not yet detected.
    max_streams: int = 20_000
    max_streams_per_device: int = 4
    # HTTP/2 streams (calls) one connection may have open (grpc.max_concurrent_streams); the
    # load-test fleet multiplexes 2,500 devices' streams on one connection.
    max_streams_per_connection: int = 4096
    # A stream that sends no message for this long is ended with UNAVAILABLE (reconnect when
    # there is something to send), so idle phones do not hold stream slots for ever.
    stream_idle_timeout_s: float = 300.0
    # At max_streams, a new stream is admitted by ending the stream that has waited longest for
    # its next message, if that is at least this long: a phone between syncs gives its slot to
    # one with something to send (it opens a new stream when it has).
    stream_yield_idle_s: float = 10.0
    # The server pings a connection quiet for keepalive_time_s and closes it when the ping is
    # not answered within keepalive_timeout_s: a phone gone without a FIN frees its streams.
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    # Clients may ping at most this often (more: GOAWAY too_many_pings), with or without calls.
    min_client_ping_interval_s: float = 10.0
    # A connection without any call for this long is closed (GOAWAY; clients reconnect).
    max_connection_idle_s: float = 300.0
    # How often the identity directory in memory reads the rows changed by other processes: a
    # revocation made elsewhere reaches this process within about this long.
    directory_refresh_s: float = 1.0
    # Reports, so that no number of report callers can stall ingest (issue 11): at most this
    # many run at once in the process (each on a thread and ClickHouse client of the reports'
    # own, apart from ingest's) and per tenant; a report waits at most report_max_queue_ms for
    # a slot, then gets RESOURCE_EXHAUSTED with a retry delay. 4 keeps 2 cores responsive and
    # leaves a tenant's neighbours 2 slots; a dashboard opening (8 reports at once) queues
    # behind its 2 running ones instead of being refused.
    report_max_concurrent: int = 4
    report_max_concurrent_per_tenant: int = 2
    report_max_queue_ms: int = 5000
    # Per tenant token bucket: sustained reports per second and the burst (a dashboard opening).
    report_rate_per_tenant: float = 10.0
    report_burst_per_tenant: int = 40
    # ClickHouse bounds on every report query (max_memory_usage, max_threads,
    # max_execution_time): a year of 20M calls needs about 13 s the first time (rollups), and
    # 4 reports at 1 GiB stay well inside a small server; threads: half the cores, at least 1.
    report_max_memory_bytes: int = 1024 * 1024 * 1024
    report_max_threads: int = max(1, (os.cpu_count() or 2) // 2)
    report_max_execution_s: float = 60.0
    # Webhook deliveries (server/webhooks.py): each attempt waits this long for an answer; a
    # failed one is retried after a full-jitter backoff doubling from the initial delay up to the
    # maximum, until an attempt fails retry_window_s after the first (then DEAD, replayable).
    webhook_timeout_s: float = 10.0
    webhook_retry_initial_s: float = 1.0
    webhook_retry_max_s: float = 3600.0
    webhook_retry_window_s: float = 86_400.0
    # One process delivers a webhook at a time, under a lease of this length it renews; another
    # takes it over this long (and a sixth more, for clock skew) after its holder stops.
    webhook_lease_s: float = 30.0
    # Attempts of one webhook in flight at once; 1 delivers in event-time order.
    webhook_max_in_flight: int = 4

    def __post_init__(self) -> None:
        if not self.dsn.reveal():
            derived = f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
            object.__setattr__(self, "dsn", Secret(derived))
        if isinstance(self.log_level, str):
            object.__setattr__(self, "log_level", self.log_level.strip().lower())
        problems = _validate(self)
        if problems:
            raise ConfigError(problems)

    def pipeline_settings(self) -> PipelineSettings:
        """The ingest pipeline's tuning; the pipeline has no defaults of its own."""
        return PipelineSettings(
            max_rows=self.batch_max_rows,
            max_bytes=self.batch_max_bytes,
            max_age_ms=self.batch_max_age_ms,
            buffer_max_bytes=self.buffer_max_bytes,
            max_in_flight=self.max_inserts_in_flight,
            dedup_max_entries=self.dedup_max_entries,
            retry_initial_s=self.write_retry_initial_s,
            retry_max_s=self.write_retry_max_s,
            retry_max_elapsed_s=self.write_retry_max_elapsed_s,
            admission_max_queue_ms=self.admission_max_queue_ms,
            stream_max_unacked=self.stream_max_unacked,
            device_min_share_bytes=self.device_min_share_bytes,
            decode_workers=self.decode_workers,
        )

    def report_limits(self) -> ReportLimits:
        """How many reports run at once and how often a tenant may start one."""
        return ReportLimits(
            max_concurrent=self.report_max_concurrent,
            max_concurrent_per_tenant=self.report_max_concurrent_per_tenant,
            max_queue_ms=self.report_max_queue_ms,
            rate_per_s=self.report_rate_per_tenant,
            burst=self.report_burst_per_tenant,
        )

    def report_query_settings(self) -> dict[str, int]:
        """ClickHouse settings that bound every report query in memory, threads and time."""
        return {
            "max_memory_usage": self.report_max_memory_bytes,
            "max_threads": self.report_max_threads,
            # ClickHouse takes whole seconds here; a fraction rounds up.
            "max_execution_time": math.ceil(self.report_max_execution_s),
        }

    @property
    def metrics_address(self) -> str | None:
        """HOST:PORT to serve metrics on, or None when they are off."""
        address = self.metrics_listen.strip()
        return None if address.lower() in _METRICS_OFF else address

    @property
    def is_embedded(self) -> bool:
        """True when ClickHouse runs in-process (chDB) rather than as a server."""
        return urlsplit(self.dsn.reveal()).scheme.lower() == "chdb"

    @property
    def dsn_display(self) -> str:
        """The DSN with its password (and any secret query parameter) replaced by ``****``."""
        return _mask_dsn(self.dsn.reveal())


def package_version() -> str:
    """The installed callsight's version (pyproject.toml's ``version``)."""
    try:
        return importlib.metadata.version("callsight")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def describe(config: Config) -> dict[str, object]:
    """A log-safe view of ``config`` for the start-up log line: DSN masked, secrets set/unset."""
    out: dict[str, object] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "dsn":
            out["dsn"] = config.dsn_display
        elif f.name in _SECRET_FIELDS or isinstance(value, Secret | bytes) or not f.repr:
            # Any field kept out of repr is treated as a secret here too.
            out[f.name] = "unset" if value is None else "set"
        elif isinstance(value, Path):
            out[f.name] = str(value)
        else:
            out[f.name] = value
    out["embedded"] = config.is_embedded
    return out


# --- settings table: one row per Config field, naming its flag and env var ---------------


@dataclass(frozen=True)
class _Setting:
    field: str
    flag: str | None  # None: env-only, because flags are visible to every user via `ps`
    parse: Callable[[str], object]
    help: str
    metavar: str = ""

    @property
    def env(self) -> str:
        return "CALLSIGHT_" + self.field.upper()

    @property
    def label(self) -> str:
        return self.env if self.flag is None else f"{self.env} / {self.flag}"


_MASTER_KEY_HINT = (
    "generate one with: python -c "
    "'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"
)
_TOKEN_HINT = "generate one with: python -c 'import secrets;print(secrets.token_urlsafe(32))'"
_DSN_HINT = "use chdb:///path, http://host:8123/db or https://..."
_LISTEN_HINT = (
    "use HOST:PORT, e.g. 127.0.0.1:50051, 0.0.0.0:50051 or [::]:50051 (port 0: any free port)"
)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _parse_path(text: str) -> Path:
    return Path(text).expanduser()


_URLSAFE_TO_STD = str.maketrans("-_", "+/")


def _parse_master_key(text: str) -> bytes:
    # Accept the URL-safe alphabet too; never echo the value, it is the key.
    try:
        return base64.b64decode(text.strip().translate(_URLSAFE_TO_STD), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not valid base64 of 32 bytes (not base64); {_MASTER_KEY_HINT}") from None


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("listen", "--listen", str, "address to serve gRPC on", "HOST:PORT"),
    _Setting(
        "metrics_listen",
        "--metrics-listen",
        str,
        "address to serve Prometheus metrics on (HTTP GET /metrics); off: none",
        "HOST:PORT",
    ),
    _Setting(
        "dsn",
        "--dsn",
        Secret,
        "ClickHouse to use: chdb:///abs/path (embedded) or http(s)://user:pass@host:8123/db",
        "DSN",
    ),
    _Setting("database", "--database", str, "ClickHouse database to use", "NAME"),
    _Setting(
        "cluster",
        "--cluster",
        str,
        "ClickHouse cluster (a remote_servers name) to create the tables on, replicated and "
        "sharded by tenant and device; unset: one ClickHouse",
        "NAME",
    ),
    _Setting("data_dir", "--data-dir", _parse_path, "directory for local state", "DIR"),
    _Setting("operator_token", None, Secret, "token that may call CreateTenant"),
    _Setting(
        "operator_token_file",
        None,
        _parse_path,
        "file of operator tokens, one per line, read again when it changes (rotation)",
        "FILE",
    ),
    _Setting("master_key", None, _parse_master_key, "base64 of 32 random bytes"),
    _Setting("tls_cert", "--tls-cert", _parse_path, "PEM certificate chain for TLS", "FILE"),
    _Setting("tls_key", "--tls-key", _parse_path, "PEM private key for TLS", "FILE"),
    _Setting("log_level", "--log-level", str, "one of " + ", ".join(LOG_LEVELS), "LEVEL"),
    _Setting(
        "grace_period_s",
        "--grace-period-s",
        _parse_float,
        "seconds to drain on shutdown before cancelling RPCs",
        "SECONDS",
    ),
    _Setting(
        "batch_max_rows", "--batch-max-rows", _parse_int, "flush a batch at this many rows", "N"
    ),
    _Setting(
        "batch_max_bytes", "--batch-max-bytes", _parse_int, "flush a batch at this size", "BYTES"
    ),
    _Setting(
        "batch_max_age_ms", "--batch-max-age-ms", _parse_int, "flush a batch at this age", "MS"
    ),
    _Setting(
        "buffer_max_bytes",
        "--buffer-max-bytes",
        _parse_int,
        "bytes buffered before ingest pushes back",
        "BYTES",
    ),
    _Setting(
        "max_inserts_in_flight",
        "--max-inserts-in-flight",
        _parse_int,
        "concurrent inserts into ClickHouse",
        "N",
    ),
    _Setting(
        "decode_workers",
        "--decode-workers",
        _parse_int,
        "processes that decode, normalise and encrypt chunks of 256+ records beside the event "
        "loop (0: all on the loop; default: CPUs - 1, at most 4)",
        "N",
    ),
    _Setting(
        "dedup_max_entries",
        "--dedup-max-entries",
        _parse_int,
        "record versions kept in memory for deduplication",
        "N",
    ),
    _Setting(
        "write_retry_initial_s",
        "--write-retry-initial-s",
        _parse_float,
        "first delay before a failed insert is retried (doubles per try)",
        "SECONDS",
    ),
    _Setting(
        "write_retry_max_s",
        "--write-retry-max-s",
        _parse_float,
        "longest delay between retries of a failed insert",
        "SECONDS",
    ),
    _Setting(
        "write_retry_max_elapsed_s",
        "--write-retry-max-elapsed-s",
        _parse_float,
        "stop retrying an insert that transient errors keep failing after this long; its "
        "batches are answered UNAVAILABLE (refusals such as type errors are never retried)",
        "SECONDS",
    ),
    _Setting(
        "admission_max_queue_ms",
        "--admission-max-queue-ms",
        _parse_int,
        "admit a batch while the work queued ahead of it drains within this at the measured "
        "write rate; beyond it streams wait, and Upload waits its turn this long at most, then "
        "answers UNAVAILABLE with a retry delay",
        "MS",
    ),
    _Setting(
        "stream_max_unacked",
        "--stream-max-unacked",
        _parse_int,
        "acks a stream may have outstanding (computed, not yet sent) before it stops being read",
        "N",
    ),
    _Setting(
        "device_min_share_bytes",
        "--device-min-share-bytes",
        _parse_int,
        "while other devices use the ingest queue, one device may hold at most the larger of "
        "its even share and this",
        "BYTES",
    ),
    _Setting(
        "max_streams",
        "--max-streams",
        _parse_int,
        "IngestService.Stream calls open at once in this process; more get RESOURCE_EXHAUSTED",
        "N",
    ),
    _Setting(
        "max_streams_per_device",
        "--max-streams-per-device",
        _parse_int,
        "IngestService.Stream calls one device may have open; more get RESOURCE_EXHAUSTED",
        "N",
    ),
    _Setting(
        "max_streams_per_connection",
        "--max-streams-per-connection",
        _parse_int,
        "calls one HTTP/2 connection may have open at once (grpc.max_concurrent_streams)",
        "N",
    ),
    _Setting(
        "stream_idle_timeout_s",
        "--stream-idle-timeout-s",
        _parse_float,
        "end a stream that sent no message for this long (UNAVAILABLE)",
        "SECONDS",
    ),
    _Setting(
        "stream_yield_idle_s",
        "--stream-yield-idle-s",
        _parse_float,
        "at --max-streams, end the longest-idle stream if idle this long to admit a new one",
        "SECONDS",
    ),
    _Setting(
        "keepalive_time_s",
        "--keepalive-time-s",
        _parse_float,
        "ping a connection that was quiet this long, to find dead peers",
        "SECONDS",
    ),
    _Setting(
        "keepalive_timeout_s",
        "--keepalive-timeout-s",
        _parse_float,
        "close a connection whose ping is not answered within this",
        "SECONDS",
    ),
    _Setting(
        "min_client_ping_interval_s",
        "--min-client-ping-interval-s",
        _parse_float,
        "the shortest interval between a client's pings before it is sent away (too_many_pings)",
        "SECONDS",
    ),
    _Setting(
        "max_connection_idle_s",
        "--max-connection-idle-s",
        _parse_float,
        "close a connection that had no call for this long",
        "SECONDS",
    ),
    _Setting(
        "directory_refresh_s",
        "--directory-refresh-s",
        _parse_float,
        "seconds between reads of the identities (tenants, keys, devices) other processes "
        "changed; a revocation elsewhere applies here within about this long",
        "SECONDS",
    ),
    _Setting(
        "report_max_concurrent",
        "--report-max-concurrent",
        _parse_int,
        "reports running at once in this process, on database threads of their own (ingest "
        "keeps its own)",
        "N",
    ),
    _Setting(
        "report_max_concurrent_per_tenant",
        "--report-max-concurrent-per-tenant",
        _parse_int,
        "reports of one tenant running at once",
        "N",
    ),
    _Setting(
        "report_max_queue_ms",
        "--report-max-queue-ms",
        _parse_int,
        "how long a report waits for a running slot before RESOURCE_EXHAUSTED with a retry "
        "delay (0: refuse at once)",
        "MS",
    ),
    _Setting(
        "report_rate_per_tenant",
        "--report-rate-per-tenant",
        _parse_float,
        "reports a tenant may start per second, sustained (token bucket)",
        "PER_SECOND",
    ),
    _Setting(
        "report_burst_per_tenant",
        "--report-burst-per-tenant",
        _parse_int,
        "reports a tenant may start at once before its rate applies (token bucket depth)",
        "N",
    ),
    _Setting(
        "report_max_memory_bytes",
        "--report-max-memory-bytes",
        _parse_int,
        "memory one report query may use (ClickHouse max_memory_usage); beyond it the report "
        "gets RESOURCE_EXHAUSTED",
        "BYTES",
    ),
    _Setting(
        "report_max_threads",
        "--report-max-threads",
        _parse_int,
        "threads one report query may use (ClickHouse max_threads)",
        "N",
    ),
    _Setting(
        "report_max_execution_s",
        "--report-max-execution-s",
        _parse_float,
        "seconds one report query may run (ClickHouse max_execution_time, whole seconds); "
        "beyond it the report gets DEADLINE_EXCEEDED",
        "SECONDS",
    ),
    _Setting(
        "webhook_timeout_s",
        "--webhook-timeout-s",
        _parse_float,
        "how long one webhook delivery attempt waits for the endpoint's answer",
        "SECONDS",
    ),
    _Setting(
        "webhook_retry_initial_s",
        "--webhook-retry-initial-s",
        _parse_float,
        "longest wait before the second attempt of a failed webhook delivery (doubles per try,"
        " full jitter)",
        "SECONDS",
    ),
    _Setting(
        "webhook_retry_max_s",
        "--webhook-retry-max-s",
        _parse_float,
        "longest wait between attempts of a failed webhook delivery",
        "SECONDS",
    ),
    _Setting(
        "webhook_retry_window_s",
        "--webhook-retry-window-s",
        _parse_float,
        "how long a failing webhook delivery is retried before it is dead-lettered (replayable)",
        "SECONDS",
    ),
    _Setting(
        "webhook_lease_s",
        "--webhook-lease-s",
        _parse_float,
        "length of the lease under which one process delivers a webhook; must exceed three"
        " times the webhook timeout",
        "SECONDS",
    ),
    _Setting(
        "webhook_max_in_flight",
        "--webhook-max-in-flight",
        _parse_int,
        "delivery attempts of one webhook in flight at once (1: in event-time order)",
        "N",
    ),
)
_BY_FIELD = {s.field: s for s in _SETTINGS}
_SECRET_FIELDS = frozenset(s.field for s in _SETTINGS if s.flag is None)


def _default_text(name: str) -> str:
    if name == "dsn":
        return "chdb://<absolute data-dir>/clickhouse"
    default = next(f.default for f in fields(Config) if f.name == name)
    return "unset" if default is None else str(default)


def build_arg_parser() -> argparse.ArgumentParser:
    """The flags of ``callsight serve``, for use as ``parents=[build_arg_parser()]``.

    Every flag defaults to None so that env vars and ``Config`` defaults apply; values stay
    strings and are checked by ``load`` so that every problem is reported at once.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for s in _SETTINGS:
        if s.flag is None:
            continue
        parser.add_argument(
            s.flag,
            dest=s.field,
            metavar=s.metavar or None,
            default=None,
            help=f"{s.help} (env {s.env}; default {_default_text(s.field)})",
        )
    return parser


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build a ``Config`` from flags, then ``CALLSIGHT_*`` env vars, then defaults.

    ``argv`` holds the ``serve`` subcommand's arguments only (None: no flags); ``env`` None
    means ``os.environ``. An empty value counts as unset. Raises ``ConfigError`` listing every
    problem found.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    problems: list[str] = []
    flags = _parse_flags(argv or (), problems)
    values: dict[str, Any] = {}
    for s in _SETTINGS:
        raw = flags.get(s.field) or environ.get(s.env)
        if not raw:
            continue
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            problems.append(f"{s.label}: {exc}")
    try:
        config = Config(**values)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _parse_flags(argv: Sequence[str], problems: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="callsight serve",
        parents=[build_arg_parser()],
        allow_abbrev=False,
        exit_on_error=False,
    )
    try:
        namespace, extras = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        problems.append(f"{exc}; see 'callsight serve --help'")
        return {}
    if extras:
        # Name only long flags: any other stray word may be a secret typed on the command line.
        names = sorted({arg.partition("=")[0] for arg in extras if arg.startswith("--")})
        others = sum(1 for arg in extras if not arg.startswith("--"))
        parts = [f"unknown flag(s) {', '.join(names)}"] if names else []
        parts += [f"{others} unexpected argument(s)"] if others else []
        what = " and ".join(parts)
        problems.append(
            f"{what}; see 'callsight serve --help' (the operator token and master key are "
            "read only from CALLSIGHT_OPERATOR_TOKEN and CALLSIGHT_MASTER_KEY)"
        )
    return {k: v for k, v in vars(namespace).items() if isinstance(v, str)}


# --- validation ---------------------------------------------------------------------------


def _validate(c: Config) -> list[str]:
    problems: list[str] = []

    def bad(name: str, what: str) -> None:
        problems.append(f"{_BY_FIELD[name].label}: {what}")

    listen_problem = _listen_problem(c.listen)
    if listen_problem:
        bad("listen", listen_problem)
    metrics_problem = _metrics_listen_problem(c.metrics_listen, c.listen)
    if metrics_problem:
        bad("metrics_listen", metrics_problem)
    dsn_problem = _dsn_problem(c.dsn.reveal())
    if dsn_problem:
        bad("dsn", dsn_problem)
    if c.master_key is None and not dsn_problem and not c.is_embedded:
        bad(
            "master_key",
            "required with a ClickHouse server DSN (every callsight process must share it); "
            + _MASTER_KEY_HINT,
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", c.database):
        bad("database", f"{c.database!r} is not a plain identifier (letters, digits, '_')")
    if c.cluster is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", c.cluster):
            bad("cluster", f"{c.cluster!r} is not a plain identifier (letters, digits, '_')")
        elif c.is_embedded:
            bad("cluster", "needs a ClickHouse server DSN (http:// or https://), not chDB")

    if c.operator_token is not None:
        token = c.operator_token.reveal()
        if len(token) < 16:
            bad("operator_token", f"too short ({len(token)} characters, need 16+); {_TOKEN_HINT}")
        elif not all(33 <= ord(ch) <= 126 for ch in token):
            bad(
                "operator_token",
                "must be printable ASCII without spaces (it is sent as "
                f"'authorization: Bearer <token>'); {_TOKEN_HINT}",
            )
    if c.operator_token_file is not None:
        if c.operator_token is not None:
            bad(
                "operator_token_file",
                "set either it or CALLSIGHT_OPERATOR_TOKEN, not both (the file is for rotating "
                "the token without a restart)",
            )
        else:
            try:
                read_tokens(Path(c.operator_token_file))
            except ValueError as exc:
                bad("operator_token_file", f"{exc}; {_TOKEN_HINT}")
    if c.master_key is not None and len(c.master_key) != 32:
        bad(
            "master_key",
            f"not valid base64 of 32 bytes (got {len(c.master_key)} bytes); {_MASTER_KEY_HINT}",
        )

    if (c.tls_cert is None) != (c.tls_key is None):
        given, missing = ("tls_cert", "tls_key") if c.tls_key is None else ("tls_key", "tls_cert")
        bad(
            missing,
            f"not set but {_BY_FIELD[given].label} is; TLS needs both the certificate chain "
            "and its private key, or neither",
        )
    for name in ("tls_cert", "tls_key"):
        path = getattr(c, name)
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            bad(name, f"cannot read {path}: {exc.strerror or exc}")

    if c.log_level not in LOG_LEVELS:
        bad("log_level", f"unknown level {c.log_level!r}; use one of {', '.join(LOG_LEVELS)}")
    for name in (
        "grace_period_s",
        "write_retry_initial_s",
        "write_retry_max_s",
        "write_retry_max_elapsed_s",
        "report_max_execution_s",
        "stream_idle_timeout_s",
        "stream_yield_idle_s",
        "keepalive_time_s",
        "keepalive_timeout_s",
        "min_client_ping_interval_s",
        "max_connection_idle_s",
        "webhook_timeout_s",
        "webhook_retry_initial_s",
        "webhook_retry_max_s",
        "webhook_retry_window_s",
        "webhook_lease_s",
    ):
        g = getattr(c, name)
        if (
            isinstance(g, bool)
            or not isinstance(g, int | float)
            or not (math.isfinite(g) and g > 0)
        ):
            bad(name, f"must be a number of seconds > 0 (got {g!r})")

    workers = c.decode_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 64:
        bad("decode_workers", f"must be a whole number from 0 to 64 (got {workers!r})")

    refresh = c.directory_refresh_s
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or not 0 < refresh <= 60:
        bad("directory_refresh_s", f"must be a number of seconds > 0 and <= 60 (got {refresh!r})")

    positive: dict[str, int] = {}
    for name in (
        "batch_max_rows",
        "batch_max_bytes",
        "batch_max_age_ms",
        "buffer_max_bytes",
        "max_inserts_in_flight",
        "dedup_max_entries",
        "admission_max_queue_ms",
        "stream_max_unacked",
        "device_min_share_bytes",
        "max_streams",
        "max_streams_per_device",
        "max_streams_per_connection",
        "report_max_concurrent",
        "report_max_concurrent_per_tenant",
        "report_burst_per_tenant",
        "report_max_memory_bytes",
        "report_max_threads",
        "webhook_max_in_flight",
    ):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            bad(name, f"must be an integer > 0 (got {value!r})")
        else:
            positive[name] = value
    rate = c.report_rate_per_tenant
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not (math.isfinite(rate) and rate > 0)
    ):
        bad("report_rate_per_tenant", f"must be a number of reports per second > 0 (got {rate!r})")
    queue_ms = c.report_max_queue_ms
    if isinstance(queue_ms, bool) or not isinstance(queue_ms, int) or queue_ms < 0:
        bad("report_max_queue_ms", f"must be an integer >= 0 (got {queue_ms!r})")
    lease, timeout = c.webhook_lease_s, c.webhook_timeout_s
    if isinstance(lease, int | float) and isinstance(timeout, int | float) and lease < 3 * timeout:
        # The holder starts no attempt in the last timeout + a sixth of the lease, and renews
        # every sixth: a shorter lease would leave it no time to deliver.
        bad("webhook_lease_s", f"{lease} must be at least 3 times webhook_timeout_s ({timeout})")
    batch, buffer = positive.get("batch_max_bytes"), positive.get("buffer_max_bytes")
    if batch is not None and buffer is not None and batch > buffer:
        # The buffer would fill before a batch could ever reach its size limit.
        bad(
            "batch_max_bytes",
            f"{batch} exceeds {_BY_FIELD['buffer_max_bytes'].label} ({buffer}); "
            "lower it or raise the buffer",
        )
    age, queue = positive.get("batch_max_age_ms"), positive.get("admission_max_queue_ms")
    if age is not None and queue is not None and queue <= age:
        # Every batch waits up to the age limit to be flushed: a lower target refuses idle work.
        bad(
            "admission_max_queue_ms",
            f"{queue} must exceed {_BY_FIELD['batch_max_age_ms'].label} ({age}), the longest "
            "a batch waits to be flushed",
        )
    return problems


_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")


def _listen_problem(listen: str) -> str | None:
    if not isinstance(listen, str):
        return f"not a string (got {listen!r}); {_LISTEN_HINT}"
    host, sep, port = listen.rpartition(":")
    if not sep:
        return f"{listen!r} is not HOST:PORT; {_LISTEN_HINT}"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host!r} is not an IPv6 address; {_LISTEN_HINT}"
    elif ":" in host or "[" in host or "]" in host:
        return f"{listen!r}: write an IPv6 host in brackets, e.g. [::1]:50051"
    elif not host:
        return f"{listen!r} has no host; use 0.0.0.0:PORT for all interfaces or 127.0.0.1:PORT"
    elif not _HOSTNAME.fullmatch(host):
        return f"{host!r} is not a host name or IP address; {_LISTEN_HINT}"
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address; {_LISTEN_HINT}"
    if not _PORT.fullmatch(port) or int(port) > 65535:
        return f"port {port!r} is not a number from 0 to 65535 (0 picks a free port)"
    return None


_METRICS_OFF = ("", "off")


def _metrics_listen_problem(address: str, listen: str) -> str | None:
    if isinstance(address, str) and address.strip().lower() in _METRICS_OFF:
        return None
    problem = _listen_problem(address)
    if problem:
        return f"{problem}; or off for no metrics"
    port = address.rpartition(":")[2]
    if address == listen and int(port) != 0:
        return f"{address} is also the gRPC --listen address; give metrics a port of their own"
    return None


def _dsn_problem(dsn: str) -> str | None:
    # Never echo the DSN itself: it may carry a password.
    try:
        parts = urlsplit(dsn)
    except ValueError as exc:
        return f"not a valid URL ({exc}); {_DSN_HINT}"
    scheme = parts.scheme.lower()
    if not scheme or "://" not in dsn:
        return f"not a URL with a scheme; {_DSN_HINT}"
    if scheme == "chdb":
        if parts.netloc and parts.netloc != "memory":
            return (
                "a chdb DSN takes an absolute path after three slashes, e.g. "
                "chdb:///var/lib/callsight/clickhouse (or chdb://memory for a throw-away one)"
            )
        if not parts.netloc and parts.path in ("", "/"):
            return "a chdb DSN needs an absolute path, e.g. chdb:///var/lib/callsight/clickhouse"
        return None
    if scheme in ("http", "https"):
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            return f"bad port ({exc}); e.g. {scheme}://user:pass@host:8123/db"
        if not parts.hostname:
            return f"an {scheme} DSN needs a host, e.g. {scheme}://user:pass@host:8123/db"
        return None
    return f"unknown scheme {parts.scheme!r}; {_DSN_HINT}"


_SECRET_QUERY_KEYS = frozenset({"password", "access_token", "token", "secret"})


def _mask_dsn(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<unparseable DSN>"  # cannot tell where a password would be
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:****@{hostport}"
    query = "&".join(
        piece.partition("=")[0] + "=****"
        if unquote_plus(piece.partition("=")[0]).lower() in _SECRET_QUERY_KEYS
        else piece
        for piece in parts.query.split("&")
    )
    # Rebuilt by hand: urlunsplit drops the "//" of an empty netloc (chdb:///path).
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        out += "?" + query
    if parts.fragment:
        out += "#" + parts.fragment
    return out
