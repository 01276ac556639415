"""The service object that owns callsight's lifecycle.

``Service.start()`` binds the port (health NOT_SERVING), opens the database, runs migrations and
then reports SERVING; ``stop()`` stops accepting RPCs, lets in-flight ones finish within the grace
period and closes the database. ``run()`` does both around a shutdown signal.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callsight.core.clock import SYSTEM_CLOCK, Clock
from callsight.pipeline.ingest import Ingestor
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_BATCH_BYTES
from callsight.pipeline.paging import PageTokens
from callsight.pipeline.watch import WatchHub
from callsight.server.accept import Acceptors, MethodHandlers
from callsight.server.admin import AdminServicer
from callsight.server.admin_export import ExportBounds
from callsight.server.auth import Authenticator, TokenHasher
from callsight.server.config import Config, Secret, describe, package_version
from callsight.server.ingest import IngestServicer, StreamLimits
from callsight.server.interceptor import CallsightInterceptor
from callsight.server.metrics import Metrics
from callsight.server.operator import OperatorTokens
from callsight.server.policy import PolicyMessages
from callsight.server.preflight import StartupError
from callsight.server.report_export import WatchLoader
from callsight.server.report_quota import ReportQuota
from callsight.server.reports import ReportServicer
from callsight.server.webhooks import (
    Dispatcher,
    WebhookEvents,
    WebhookRegistry,
    Webhooks,
    WebhookSettings,
)
from callsight.storage.activity import DeviceActivity, recent_devices
from callsight.storage.claims import EnrollmentClaims
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.storage.group_writer import GroupWriter
from callsight.storage.identities import Identities
from callsight.storage.migrator import migrate
from callsight.storage.policies import Policies
from callsight.storage.rollups import DEFAULT_SETTINGS as DEFAULT_ROLLUP_SETTINGS
from callsight.storage.rollups import Rollups, RollupSettings
from callsight.storage.tenants import KeyUses
from callsight.storage.versions import stored_versions, stored_versions_of
from callsight.storage.writer import Sink, Writer
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

log = structlog.get_logger("callsight.server")

SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (admin_pb2, "AdminService"),
        (ingest_pb2, "IngestService"),
        (report_pb2, "ReportService"),
    )
)
# The largest request message grpc reads: an upload batch at its limit (4 MiB, the largest
# request of any RPC) and some slack. Batches a little over 4 MiB get a REJECTED ack naming the
# limit, in-stream; grpc refuses a longer message from its length prefix, before buffering it,
# with RESOURCE_EXHAUSTED "Received message larger than max (N vs. 4259840)", which ends a
# stream. The limit puts every message in flight under a known size, so memory is bounded by
# the open calls (--max-streams, --max-streams-per-connection) times it.
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + 64 * 1024
# What a fleet calls by the thousand at once (streams, uploads, enrollment, and the enrollment
# code each phone needs): these are taken off gRPC's queue several at a time (server/accept.py).
BUSY_METHODS = ("/callsight.v1.IngestService/", "/callsight.v1.AdminService/CreateEnrollment")
# How often the time batches spent per ingest stage is logged (while batches flow).
STAGE_LOG_EVERY_S = 10.0
# Start-up loads dedup state for the devices heard from within this window (most recent first, at
# most this many), so that a fleet reconnecting after a restart does not wait for it batch by
# batch. Agents sync every 15-60 minutes.
DEDUP_WARM_WINDOW_S = 3600
DEDUP_WARM_MAX_DEVICES = 50_000


def grpc_options(config: Config) -> list[tuple[str, int]]:
    """The grpc server's channel arguments: message size, call and connection bounds."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # A fleet reconnecting opens thousands of streams at once; grpc's default
        # (about 1,000 calls waiting for the event loop) would cancel the rest.
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 40_000),
        ("grpc.so_reuseport", 0),
        # Keepalive: ping quiet connections, also ones whose only stream is idle (grpc stops
        # after 2 pings without data unless told otherwise), and drop those that do not answer.
        ("grpc.keepalive_time_ms", ms(config.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout_s)),
        ("grpc.http2.max_pings_without_data", 0),
        # Enforcement: a client pinging more often than this gets strikes, then GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(config.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", ms(config.max_connection_idle_s)),
    ]


async def _log_stages(ingestor: Ingestor, every_s: float) -> None:
    """Logs where batches spent their time over each interval in which any were acked, and
    how late the event loop ran its timers meanwhile (a busy loop delays every stream)."""
    loop = asyncio.get_running_loop()
    tick_s = 0.1
    next_log = loop.time() + every_s
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        ingestor.stages.add("loop_lag", max(0.0, loop.time() - due))
        if loop.time() >= next_log:
            next_log += every_s
            stages = ingestor.stages.summary()
            if "total" in stages or "write" in stages:
                log.info("ingest stages", every_s=every_s, **stages)


async def _warm_dedup(db: Database, ingestor: Ingestor, clock: Clock) -> None:
    """Loads dedup state for the devices heard from in the last ``DEDUP_WARM_WINDOW_S``; a
    failure is logged (their batches load it themselves)."""
    started = time.perf_counter()
    try:
        recent = await recent_devices(
            db, clock.now_ms() - DEDUP_WARM_WINDOW_S * 1000, DEDUP_WARM_MAX_DEVICES
        )
        loaded = await ingestor.warm_dedup(recent)
    except Exception as exc:
        log.warning("dedup warm-up failed", error=repr(exc))
        return
    log.info(
        "dedup warmed up",
        devices=sum(map(len, recent.values())),
        loaded=loaded,
        entries=ingestor.dedup.entries,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _refresher_done(task: asyncio.Task[None]) -> None:
    # The loop retries failures itself; ending any other way than cancellation is a bug.
    if not task.cancelled() and task.exception() is not None:
        log.error("identity refresh stopped", error=repr(task.exception()))


def _dispatcher_done(task: asyncio.Task[None]) -> None:
    # The dispatcher retries failures itself; ending any other way than cancellation is a bug.
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook dispatcher stopped", error=repr(task.exception()))


def _secret_file(path: Path, make: bytes, what: str) -> bytes:
    """Reads a generated secret from ``path``, creating it (mode 0600) on first start."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(make + b"\n")
    log.warning(f"no {what} configured; generated one", path=str(path))
    return make


def operator_tokens(
    config: Config, hasher: TokenHasher, operator: Secret | None
) -> OperatorTokens | None:
    """The operator's tokens: a fixed one from the environment, else the token file (given, or
    generated in embedded mode), which is read again when it changes."""
    if operator is not None and config.operator_token is not None:
        return OperatorTokens(hasher, token=operator.reveal())
    path = config.operator_token_file
    if path is None and config.is_embedded:
        path = config.data_dir / "operator.token"
    if path is None:
        return None
    return OperatorTokens(hasher, path=path, check_every_s=config.directory_refresh_s)


def embedded_secrets(config: Config) -> tuple[bytes, Secret | None]:
    """The master key and operator token, generated into the data directory in embedded mode."""
    master_key, operator = config.master_key, config.operator_token
    if config.is_embedded and master_key is None:
        encoded = _secret_file(
            config.data_dir / "master.key", base64.b64encode(os.urandom(32)), "master key"
        )
        master_key = base64.b64decode(encoded)
    if config.is_embedded and operator is None and config.operator_token_file is None:
        token = _secret_file(
            config.data_dir / "operator.token",
            secrets.token_urlsafe(32).encode(),
            "operator token (CALLSIGHT_OPERATOR_TOKEN)",
        )
        operator = Secret(token.decode())
    if master_key is None:  # config validation makes this unreachable for server DSNs
        raise RuntimeError("a master key is required")
    return master_key, operator


def secret_sources(config: Config) -> dict[str, str]:
    """Where the master key and the operator token come from, for the start-up log (never the
    values themselves)."""
    if config.master_key is not None:
        master = "env CALLSIGHT_MASTER_KEY"
    else:
        master = f"file {config.data_dir / 'master.key'} (generated on first start)"
    if config.operator_token is not None:
        operator = "env CALLSIGHT_OPERATOR_TOKEN"
    elif config.operator_token_file is not None:
        operator = f"file {config.operator_token_file} (CALLSIGHT_OPERATOR_TOKEN_FILE)"
    elif config.is_embedded:
        operator = f"file {config.data_dir / 'operator.token'} (generated on first start)"
    else:
        operator = "none: operator RPCs are refused"
    return {"master_key": master, "operator_token": operator}


class Service:
    """One callsight server process."""

    def __init__(
        self,
        config: Config,
        wrap_sink: Callable[[Sink], Sink] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rollup_settings: RollupSettings = DEFAULT_ROLLUP_SETTINGS,
    ) -> None:
        """``wrap_sink`` lets tests inject faults into ClickHouse writes; ``clock`` sets time;
        ``rollup_settings`` sets when summaries roll up and remake settled days."""
        self.config = config
        self._clock = clock
        self._rollup_settings = rollup_settings
        self._wrap_sink = wrap_sink
        self.ingestor: Ingestor | None = None
        self.report_quota: ReportQuota | None = None
        self.port = 0
        # Prometheus metrics, made per start(); metrics_port is None while they are off.
        self.metrics: Metrics | None = None
        self.metrics_port: int | None = None
        self._ready = asyncio.Event()
        self._db: Database | None = None
        self._report_db: Database | None = None
        self._server: grpc.aio.Server | None = None
        self._acceptors: Acceptors | None = None
        self._health = health.aio.HealthServicer()
        self._identities: Identities | None = None
        self._group_writer: GroupWriter | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._policy_refresher: asyncio.Task[None] | None = None
        self._stage_log: asyncio.Task[None] | None = None
        self._dedup_warm_up: asyncio.Task[None] | None = None
        self._key_uses: KeyUses | None = None
        self._key_use_writer: asyncio.Task[None] | None = None
        self._activity: DeviceActivity | None = None
        self._activity_writer: asyncio.Task[None] | None = None
        self.webhooks: Webhooks | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._watch: WatchHub | None = None
        self._watch_ticker: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Binds, migrates, then serves; returns the bound port."""
        master_key, operator = embedded_secrets(self.config)
        cluster = self.config.cluster
        db = Database(self.config.dsn.reveal(), self.config.database, cluster=cluster)
        self._db = db
        # Reports read through a pool and clients of their own, bounded per query, so that no
        # report can hold a thread an insert (an ack) waits for (issue 11).
        report_db = Database(
            self.config.dsn.reveal(),
            self.config.database,
            pool_size=self.config.report_max_concurrent,
            settings=self.config.report_query_settings(),
            role="reports",
            cluster=cluster,
        )
        self._report_db = report_db
        report_quota = ReportQuota(self.config.report_limits())
        self.report_quota = report_quota
        identities = Identities(db)
        self._identities = identities
        group_writer = GroupWriter(db, self._clock)
        self._group_writer = group_writer
        directory = Directory(db, self._clock, group_writer, identities)
        hasher = TokenHasher(master_key)
        key_uses = KeyUses(db, self._clock, identities)
        self._key_uses = key_uses
        activity = DeviceActivity(db, ingest_pb2.UPLOAD_RESULT_ACCEPTED)
        self._activity = activity
        authenticator = Authenticator(
            identities, hasher, operator_tokens(self.config, hasher, operator), key_uses
        )
        keys = TenantKeys(directory, master_key)
        # A key rotated or destroyed anywhere: drop the tenant's cached keyring.
        identities.on_key_change(keys.forget)
        # Device policies, in memory like the identities: ingest reads them per batch.
        policies = Policies(db, self._clock)
        policy_messages = PolicyMessages(policies, keys)
        # WatchSummary's live totals, fed by ingest's acks, loaded from the report database.
        rollups = Rollups(self._rollup_settings, self._clock)
        watch = WatchHub(
            WatchLoader(report_db, rollups, self._clock),
            lambda tenant_id: policies.excluded(tenant_id).sorted_keys,
            self._clock.now_ms,
        )
        self._watch = watch
        registry = WebhookRegistry(db)
        webhooks = Webhooks(
            registry,
            WebhookEvents(registry, keys, group_writer, self._clock),
            Dispatcher(db, registry, keys, self._clock, self._webhook_settings()),
        )
        self.webhooks = webhooks
        sink: Sink = Writer(db)
        if self._wrap_sink is not None:
            sink = self._wrap_sink(sink)
        metrics = Metrics()
        self.metrics = metrics
        ingestor = Ingestor(
            sink,
            lambda table, tenant, devices: stored_versions(db, table, tenant, devices),
            self.config.pipeline_settings(),
            self._clock,
            identities,
            policies,
            watch=watch,
            flushes=metrics.flushes,
            key_loader=lambda table, tenant, keys: stored_versions_of(db, table, tenant, keys),
        )
        self.ingestor = ingestor
        # A tombstone written or lifted anywhere: forget what dedup remembers of the tenant.
        identities.on_erasure(ingestor.dedup.forget_tenant)
        # A tenant being deleted: nothing of it stays in memory to be written back after its rows
        # are deleted (DeleteTenant waits a refresh before deleting them).
        identities.on_shred(activity.forget_tenant)
        identities.on_shred(ingestor.dedup.forget_tenant)

        interceptors = [CallsightInterceptor(authenticator, self._ready, metrics.rpcs)]
        server = grpc.aio.server(interceptors=interceptors, options=grpc_options(self.config))
        admin = AdminServicer(
            directory,
            keys,
            hasher,
            db,
            self._clock,
            PageTokens(master_key),
            erase_settle_s=self.config.directory_refresh_s + self.config.batch_max_age_ms / 1000,
            key_uses=key_uses,
            policies=policy_messages,
            activity=activity,
            exports=ExportBounds(report_db, report_quota),
            webhooks=webhooks,
        )
        # Registered through MethodHandlers, which keeps the handlers of the busy methods below.
        registered = MethodHandlers(server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, registered.as_server())
        ingest = IngestServicer(
            directory,
            hasher,
            keys,
            ingestor,
            self._clock,
            identities,
            EnrollmentClaims(db, group_writer),
            StreamLimits(
                max_streams=self.config.max_streams,
                max_per_device=self.config.max_streams_per_device,
                idle_timeout_s=self.config.stream_idle_timeout_s,
                yield_idle_s=self.config.stream_yield_idle_s,
            ),
            policies=policy_messages,
            activity=activity,
            webhooks=webhooks.events,
            metrics=metrics.acks,
        )
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, registered.as_server())
        self._acceptors = Acceptors(
            server,
            {m: h for m, h in registered.handlers.items() if m.startswith(BUSY_METHODS)},
            interceptors,
        )
        metrics.read_state(ingestor, ingest.streams)
        report_pb2_grpc.add_ReportServiceServicer_to_server(
            ReportServicer(
                report_db,
                directory,
                keys,
                PageTokens(master_key),
                rollups,
                self._clock,
                report_quota,
                watch=watch,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        for name in ("", *SERVICES):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.config.metrics_address is not None:
            self.metrics_port = metrics.serve(self.config.metrics_address)
        steps = _Steps()
        ingestor.warm_up()
        steps.lap("warm_up")
        self.port = self._bind(server)
        self._server = server
        await server.start()
        self._acceptors.start()
        log.info(
            "listening",
            port=self.port,
            version=package_version(),
            **{**describe(self.config), **secret_sources(self.config)},
        )

        steps.lap("listen")
        applied = await migrate(db, cluster=cluster)
        log.info("migrations done", applied=applied, duration_ms=steps.lap("migrations"))
        await ingestor.start()
        steps.lap("ingest")
        # Beside the rest of the start and after it: batches wait for it only for their device.
        self._dedup_warm_up = asyncio.create_task(
            _warm_dedup(db, ingestor, self._clock), name="dedup-warm-up"
        )
        await identities.load()
        steps.lap("identities")
        await policies.load()
        steps.lap("policies")
        self._policy_refresher = asyncio.create_task(
            policies.run(self.config.directory_refresh_s), name="policy-refresh"
        )
        self._refresher = asyncio.create_task(
            identities.run(self.config.directory_refresh_s), name="identity-refresh"
        )
        self._refresher.add_done_callback(_refresher_done)
        self._stage_log = asyncio.create_task(_log_stages(ingestor, STAGE_LOG_EVERY_S))
        self._key_use_writer = asyncio.create_task(key_uses.run(), name="key-use-writer")
        self._activity_writer = asyncio.create_task(activity.run(), name="device-activity-writer")
        self._dispatcher = asyncio.create_task(webhooks.dispatcher.run(), name="webhook-dispatcher")
        self._dispatcher.add_done_callback(_dispatcher_done)
        self._watch_ticker = asyncio.create_task(watch.run(), name="watch-ticker")
        # What start-up made lives as long as the process: keep it out of every later collection,
        # and collect less often, so the collector does not stall thousands of streams at once.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        steps.lap("gc")
        self._ready.set()
        for name in ("", *SERVICES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", port=self.port, metrics_port=self.metrics_port, start_ms=steps.laps)
        return self.port

    def _webhook_settings(self) -> WebhookSettings:
        c = self.config
        return WebhookSettings(
            timeout_s=c.webhook_timeout_s,
            retry_initial_s=c.webhook_retry_initial_s,
            retry_max_s=c.webhook_retry_max_s,
            retry_window_s=c.webhook_retry_window_s,
            lease_s=c.webhook_lease_s,
            max_in_flight=c.webhook_max_in_flight,
        )

    def _bind(self, server: grpc.aio.Server) -> int:
        cert, key = self.config.tls_cert, self.config.tls_key
        try:
            if cert is not None and key is not None:
                credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
                return server.add_secure_port(self.config.listen, credentials)
            return server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            # gRPC says only "Failed to bind"; the preflight check names the usual causes.
            raise StartupError(
                f"cannot listen on {self.config.listen}: {exc}; is another server there? "
                "pass --listen HOST:PORT"
            ) from None

    async def stop(self) -> None:
        """Stops accepting RPCs, drains in-flight ones within the grace period, closes the DB."""
        if self._server is not None:
            log.info("shutting down", grace_period_s=self.config.grace_period_s)
            await self._health.enter_graceful_shutdown()
            # Stop accepting RPCs, write and ack what is buffered, then let the streams close.
            stopping = asyncio.create_task(self._server.stop(self.config.grace_period_s))
            if self.ingestor is not None:
                await self.ingestor.close(self.config.grace_period_s)
            await stopping
            self._server = None
        if self._acceptors is not None:
            await self._acceptors.stop()
            self._acceptors = None
        for task in (
            self._refresher,
            self._policy_refresher,
            self._stage_log,
            self._dedup_warm_up,
            self._key_use_writer,
            self._activity_writer,
            self._watch_ticker,
            self._dispatcher,
        ):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._refresher = self._stage_log = self._key_use_writer = self._activity_writer = None
        self._dedup_warm_up = None
        self._watch_ticker = self._dispatcher = None
        if self.webhooks is not None:
            await self.webhooks.dispatcher.close()
            self.webhooks = None
        self._policy_refresher = None
        if self._key_uses is not None and self._db is not None:
            try:
                await self._key_uses.flush()
            except Exception:
                log.exception("writing API key last-use times at shutdown failed")
            self._key_uses = None
        if self._identities is not None:
            await self._identities.close()
            self._identities = None
        if self._activity is not None and self._db is not None:
            # What devices did since the last flush, now that no RPC runs any more.
            await self._activity.close()
            self._activity = None
        if self._group_writer is not None:
            # Directory writes still queued are committed before the database closes.
            await self._group_writer.close()
            self._group_writer = None
        if self._report_db is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._report_db.close)
            self._report_db = None
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._db.close)
            self._db = None
        if self.metrics is not None:
            # Last, so that the drain above can still be watched.
            await asyncio.get_running_loop().run_in_executor(None, self.metrics.close)
            self.metrics_port = None
        log.info("stopped")

    async def run(self) -> None:
        """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()


class _Steps:
    """Milliseconds spent in each start-up step, for the ``serving`` log line."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> float:
        now = time.perf_counter()
        self.laps[step] = round((now - self._last) * 1000, 1)
        self._last = now
        return self.laps[step]
