"""server.metrics without a server: outcomes from acks, error classes, one registry each."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from callsight.core.errors import StorageError, StorageRefused, Unavailable
from callsight.pipeline.batcher import error_class
from callsight.server.metrics import AckMetrics, Metrics
from callsight.v1 import ingest_pb2

CALLS = ingest_pb2.UploadRequest(calls=ingest_pb2.CallLogBatch())


def records(registry: CollectorRegistry, kind: str, outcome: str) -> float | None:
    return registry.get_sample_value("callsight_records_total", {"kind": kind, "outcome": outcome})


def test_erased_and_policy_dropped_records_are_not_also_duplicates() -> None:
    registry = CollectorRegistry()
    acks = AckMetrics(registry)
    # The ack's duplicates hold the erased and policy-dropped records as well (ingest.proto).
    ack = ingest_pb2.UploadAck(
        result=ingest_pb2.UPLOAD_RESULT_ACCEPTED,
        accepted=3,
        duplicates=2 + 4 + 5,
        erased=4,
        dropped_by_policy=5,
        rejected=1,
    )
    acks.acked(CALLS, ack)
    got = {
        outcome: records(registry, "calls", outcome)
        for outcome in ("accepted", "updated", "duplicate", "rejected", "erased")
    }
    assert got == {"accepted": 3, "updated": 0, "duplicate": 2, "rejected": 1, "erased": 4}
    assert records(registry, "calls", "dropped_by_policy") == 5
    assert registry.get_sample_value("callsight_batch_records_sum") == 3 + 2 + 4 + 5 + 1
    assert records(registry, "telemetry", "accepted") == 0  # every series shows from the start


def test_rejected_acks_count_batches_not_records() -> None:
    registry = CollectorRegistry()
    acks = AckMetrics(registry)
    acks.acked(CALLS, ingest_pb2.UploadAck(result=ingest_pb2.UPLOAD_RESULT_REJECTED))
    acks.acked(ingest_pb2.UploadRequest(), ingest_pb2.UploadAck(result=1))  # no payload
    acks.rejected()
    assert registry.get_sample_value("callsight_batches_total", {"result": "rejected"}) == 3
    assert registry.get_sample_value("callsight_batches_total", {"result": "accepted"}) == 0
    assert registry.get_sample_value("callsight_batch_records_count") == 0


def test_insert_errors_are_classed_as_the_batcher_retries_them() -> None:
    assert error_class(StorageError("timeout", 159)) == "transient"
    assert error_class(Unavailable("busy")) == "transient"
    assert error_class(ConnectionResetError()) == "transient"
    assert error_class(StorageRefused("bad type", 53, "TYPE_MISMATCH")) == "refused"
    assert error_class(KeyError("bug")) == "unexpected"


def test_each_service_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.acks.rejected()
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("callsight_batches_total", {"result": "rejected"}) == 0
