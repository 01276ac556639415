"""Prometheus metrics of one callsight process, all defined here, served on ``--metrics-listen``.

Each ``Metrics`` has a ``CollectorRegistry`` of its own (never the global default one), so many
services in one process (the tests) keep their counts apart. Three kinds of sources feed it:

* events, counted where they happen: RPCs in the interceptor (``RpcMetrics``, the
  ``grpc_server_*`` names of go-grpc-prometheus), acks in the ingest servicer (``AckMetrics``, a
  few increments per ack, none per record), flushes in the batcher (``FlushMetrics``, the
  pipeline's ``FlushObserver``);
* state, read only when Prometheus scrapes (``_StateCollector``): buffer bytes, waiting batches,
  buffered rows, inserts in flight, open streams, dedup entries, cache lookups, so the hot path
  does no work for them;
* the HTTP server: prometheus_client's own, on a thread, answering ``GET /metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callsight.pipeline.ingest import Ingestor
from callsight.server.preflight import StartupError, split_address
from callsight.v1 import ingest_pb2

__all__ = ["AckMetrics", "FlushMetrics", "Metrics", "RpcMetrics"]

# Record outcomes as the ack counts them; "duplicate" excludes the erased and policy-dropped
# records the ack's ``duplicates`` also holds, so the outcomes of a kind add up to its records.
OUTCOMES = ("accepted", "updated", "duplicate", "rejected", "erased", "dropped_by_policy")
KINDS = ("calls", "contacts", "telemetry")
# Records in one batch: 1 to MAX_RECORDS (10,000).
BATCH_RECORD_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
# Rows in one flush: up to batch_max_rows (50,000 by default).
FLUSH_ROW_BUCKETS = (10, 100, 1000, 5000, 10_000, 25_000, 50_000, 100_000, 250_000)
# Seconds one flush takes (prepare + insert, retries included).
FLUSH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The DB error classes the batcher reports (pipeline/batcher.py ``error_class``).
DB_ERROR_CLASSES = ("transient", "refused", "unexpected")


def _grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


class RpcMetrics:
    """RPCs started, handled (by status code) and their latency, per service and method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        self._started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its status, in seconds (streams: the whole stream).",
            labels,
            registry=registry,
        )
        # Children per method (and code), made on first use: the methods are a fixed set, and a
        # dict lookup costs a third of labels().
        self._started_of: dict[str, Counter] = {}
        self._handled_of: dict[tuple[str, grpc.StatusCode], Counter] = {}
        self._seconds_of: dict[str, Histogram] = {}

    def started(self, method: str, request_streaming: bool, response_streaming: bool) -> str:
        """Counts an RPC of ``method`` (``/package.Service/Method``) starting; returns its type."""
        grpc_type = _grpc_type(request_streaming, response_streaming)
        child = self._started_of.get(method)
        if child is None:
            child = self._started_of[method] = self._started.labels(*_split(method), grpc_type)
        child.inc()
        return grpc_type

    def handled(self, method: str, grpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        """Counts an RPC ending with ``code`` after ``seconds``."""
        handled = self._handled_of.get((method, code))
        if handled is None:
            service, name = _split(method)
            handled = self._handled.labels(service, name, grpc_type, code.name)
            self._handled_of[(method, code)] = handled
        handled.inc()
        latency = self._seconds_of.get(method)
        if latency is None:
            latency = self._seconds_of[method] = self._seconds.labels(*_split(method), grpc_type)
        latency.observe(seconds)


def _split(method: str) -> tuple[str, str]:
    """(service, method) of ``/package.Service/Method``."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class AckMetrics:
    """Batches by result and records by kind and outcome, counted from acks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        records = Counter(
            "callsight_records_total",
            "Records in acked batches, by kind and outcome (rejected: refused one by one inside "
            "an accepted batch).",
            ["kind", "outcome"],
            registry=registry,
        )
        batches = Counter(
            "callsight_batches_total",
            "Batches answered: accepted (durable) or rejected whole.",
            ["result"],
            registry=registry,
        )
        self._batch_records = Histogram(
            "callsight_batch_records",
            "Records in one accepted batch.",
            registry=registry,
            buckets=BATCH_RECORD_BUCKETS,
        )
        # Children made up front: every series shows (at 0) from the first scrape, and an ack
        # costs no label lookup.
        self._records = {
            kind: tuple(records.labels(kind, outcome) for outcome in OUTCOMES) for kind in KINDS
        }
        self._accepted = batches.labels("accepted")
        self._rejected = batches.labels("rejected")

    def acked(self, request: ingest_pb2.UploadRequest, ack: ingest_pb2.UploadAck) -> None:
        """Counts one ack sent (or a batch refused whole, when ``ack`` is REJECTED)."""
        kind = request.WhichOneof("payload")
        if ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED or kind is None:
            self._rejected.inc()
            return
        self._accepted.inc()
        duplicates = ack.duplicates - ack.erased - ack.dropped_by_policy
        counts = (
            ack.accepted,
            ack.updated,
            duplicates,
            ack.rejected,
            ack.erased,
            ack.dropped_by_policy,
        )
        for child, n in zip(self._records[kind], counts, strict=True):
            if n:
                child.inc(n)
        self._batch_records.observe(sum(counts))

    def rejected(self) -> None:
        """Counts a batch refused whole without an ack (Upload answers it with a status)."""
        self._rejected.inc()


class FlushMetrics:
    """The batcher's flushes and database errors (implements ``batcher.FlushObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._seconds = Histogram(
            "callsight_flush_seconds",
            "Time one flush to ClickHouse took, from a writer taking it to the insert "
            "returning (preparing and retries included), in seconds.",
            ["table"],
            registry=registry,
            buckets=FLUSH_SECONDS_BUCKETS,
        )
        self._rows = Histogram(
            "callsight_flush_rows",
            "Rows in one flush written to ClickHouse.",
            ["table"],
            registry=registry,
            buckets=FLUSH_ROW_BUCKETS,
        )
        errors = Counter(
            "callsight_db_errors_total",
            "Failed inserts into ClickHouse, per attempt: transient (retried), refused (never "
            "retried: type error, unknown column) or unexpected (a bug).",
            ["class"],
            registry=registry,
        )
        self._errors = {name: errors.labels(name) for name in DB_ERROR_CLASSES}

    def written(self, table: str, rows: int, seconds: float) -> None:
        """A flush of ``rows`` rows into ``table`` was written after ``seconds``."""
        self._seconds.labels(table).observe(seconds)
        self._rows.labels(table).observe(rows)

    def write_failed(self, table: str, error_class: str) -> None:
        """An insert attempt into ``table`` failed; ``error_class`` is one of DB_ERROR_CLASSES."""
        self._errors[error_class].inc()


class Streams(Protocol):
    """Open ingest streams (``server.ingest.OpenStreams``)."""

    @property
    def open(self) -> int:
        """Streams open now."""
        ...

    @property
    def devices(self) -> int:
        """Devices with at least one stream open now."""
        ...


class _StateCollector(Collector):
    """Gauges and cache counters read from the pipeline when scraped (on the HTTP thread: reads
    of ints only, or the codec's own lock)."""

    def __init__(self, ingestor: Ingestor, streams: Streams) -> None:
        self._ingestor = ingestor
        self._streams = streams

    def collect(self) -> Iterable[Metric]:
        ingestor, streams = self._ingestor, self._streams
        budget, batcher = ingestor.budget, ingestor.batcher.stats
        gauges = (
            ("callsight_buffer_bytes", "Bytes of admitted batches not yet written.", budget.used),
            (
                "callsight_buffer_capacity_bytes",
                "Bytes that may be admitted and not yet written (--buffer-max-bytes).",
                budget.capacity,
            ),
            (
                "callsight_admission_waiting",
                "Batches waiting for buffer space or their turn (streams held, Upload waiting).",
                budget.waiting,
            ),
            ("callsight_rows_buffered", "Rows buffered, not yet flushed.", batcher.rows_buffered),
            (
                "callsight_flushes_pending",
                "Flushes handed to the writers and not yet written (in flight or queued).",
                batcher.flushes_pending,
            ),
            (
                "callsight_inserts_in_flight",
                "Flushes a writer is preparing or inserting now (--max-inserts-in-flight).",
                batcher.inserts_in_flight,
            ),
            ("callsight_open_streams", "IngestService.Stream calls open.", streams.open),
            (
                "callsight_connected_devices",
                "Devices with at least one IngestService.Stream call open.",
                streams.devices,
            ),
            (
                "callsight_dedup_entries",
                "Record versions remembered for deduplication (--dedup-max-entries).",
                ingestor.dedup.entries,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        codec = ingestor.codec_stats()
        hits = CounterMetricFamily(
            "callsight_cache_hits",
            "Lookups answered from ingest's caches: numbers (encrypted and blind-indexed) and "
            "names (encrypted).",
            labels=["cache"],
        )
        misses = CounterMetricFamily(
            "callsight_cache_misses",
            "Lookups ingest's caches had to compute.",
            labels=["cache"],
        )
        hits.add_metric(["numbers"], codec.number_hits)
        hits.add_metric(["names"], codec.name_hits)
        misses.add_metric(["numbers"], codec.number_misses)
        misses.add_metric(["names"], codec.name_misses)
        entries = GaugeMetricFamily(
            "callsight_cache_entries",
            "Entries in ingest's caches (each bounded by its size limit).",
            labels=["cache"],
        )
        entries.add_metric(["normalized"], codec.normalized_entries)
        entries.add_metric(["numbers"], codec.number_entries)
        entries.add_metric(["names"], codec.name_entries)
        decoded = CounterMetricFamily(
            "callsight_decoded_batches",
            "Batches decoded, validated and encrypted: on the event loop or by the decode workers "
            "(--decode-workers; chunks of large batches).",
            labels=["where"],
        )
        decoded.add_metric(["loop"], ingestor.decoder.decoded_here)
        decoded.add_metric(["workers"], ingestor.decoder.decoded_by_workers)
        restarts = CounterMetricFamily(
            "callsight_decode_worker_restarts",
            "Times the decode workers were started again after one died (its chunk was decoded "
            "on the event loop instead).",
        )
        restarts.add_metric([], ingestor.pool.restarts if ingestor.pool is not None else 0)
        yield from (hits, misses, entries, decoded, restarts)


class Metrics:
    """Every metric of one service, in a registry of its own, and the HTTP server for them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = RpcMetrics(self.registry)
        self.acks = AckMetrics(self.registry)
        self.flushes = FlushMetrics(self.registry)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def read_state(self, ingestor: Ingestor, streams: Streams) -> None:
        """Adds the gauges read from ``ingestor`` and ``streams`` at each scrape."""
        self.registry.register(_StateCollector(ingestor, streams))

    def serve(self, address: str) -> int:
        """Serves ``GET /metrics`` on ``address`` (HOST:PORT, port 0: a free one) on a thread;
        returns the bound port. StartupError when the address cannot be bound."""
        host, port = split_address(address)
        try:
            self._http, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            # The preflight check names the usual causes; this is the race after it.
            raise StartupError(
                f"cannot serve metrics on {address}: {exc.strerror or exc}; "
                "pass --metrics-listen HOST:PORT (or off)"
            ) from None
        return int(self._http.server_port)

    def close(self) -> None:
        """Stops the HTTP server (blocks up to its 0.5 s poll interval); idempotent."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
