"""The fleet workload: batches on the wire agree with the ground truth the verification uses."""

from __future__ import annotations

from collections import Counter

import pytest

from callsight.loadtest.workload import DAY_MS, WorkloadSpec, device_workload, fleet_payloads
from callsight.v1 import ingest_pb2

NOW_MS = 1_790_000_000_000


def _decoded(spec: WorkloadSpec, device: int) -> list[ingest_pb2.UploadRequest]:
    return [
        ingest_pb2.UploadRequest.FromString(b.payload)
        for b in device_workload(spec, device).batches
    ]


@pytest.mark.parametrize("mode", ["backfill", "steady"])
def test_truth_matches_what_is_sent(mode: str) -> None:
    spec = WorkloadSpec(
        mode=mode,
        days=3,
        duration_s=120,
        sync_interval_s=10,
        calls_per_hour=900,
        batch_size=50,
        duplicates=0.2,
        note_share=0.1,
        clock_skew_ms=3_600_000,
        now_ms=NOW_MS,
    )
    for device in range(5):
        workload = device_workload(spec, device)
        truth = workload.truth
        newest: dict[str, ingest_pb2.CallRecord] = {}
        sent_calls = 0
        contacts: set[str] = set()
        samples: set[int] = set()
        for batch in workload.batches:
            request = ingest_pb2.UploadRequest.FromString(batch.payload)
            assert request.seq == batch.seq and request.WhichOneof("payload") == batch.kind
            if batch.resend_of >= 0:
                original = workload.batches[batch.resend_of]
                assert batch.resend_of < workload.batches.index(batch)
                assert original.payload is batch.payload and original.kind == "calls"
            if batch.kind == "calls":
                for record in request.calls.records:
                    sent_calls += 1
                    version = record.updated_at_ms or record.started_at_ms
                    known = newest.get(record.call_id)
                    if known is not None:
                        assert known.type == record.type  # a newer version keeps its type
                        assert known.started_at_ms == record.started_at_ms
                    if known is None or version > (known.updated_at_ms or known.started_at_ms):
                        newest[record.call_id] = record
                    assert record.started_at_ms <= NOW_MS + spec.duration_s * 1000 + DAY_MS / 2
            elif batch.kind == "contacts":
                contacts.update(c.contact_id for c in request.contacts.records)
            else:
                samples.update(t.captured_at_ms for t in request.telemetry.records)
        assert Counter(r.type for r in newest.values()) == truth.calls_by_type
        assert len(contacts) == truth.contacts and len(samples) == truth.telemetry
        noted = sum(1 for r in newest.values() if r.updated_at_ms)
        assert noted == truth.note_versions
        assert sent_calls == truth.calls + truth.note_versions + truth.duplicate_records
        assert truth.min_started_ms == min(r.started_at_ms for r in newest.values())
        assert truth.records == sum(b.records for b in workload.batches)
        assert len({b.seq for b in workload.batches if b.resend_of < 0}) == truth.batches - (
            truth.resent_batches
        )


def test_steady_batches_are_never_ahead_of_their_sync() -> None:
    spec = WorkloadSpec(
        mode="steady", duration_s=60, sync_interval_s=5, calls_per_hour=3_600, now_ms=NOW_MS
    )
    workload = device_workload(spec, 3)
    ticks = [b.tick for b in workload.batches]
    assert ticks == sorted(ticks) and max(ticks) == spec.ticks - 1
    for batch in workload.batches:
        due_ms = NOW_MS + (workload.phase_s + batch.tick * spec.sync_interval_s) * 1000
        request = ingest_pb2.UploadRequest.FromString(batch.payload)
        for record in request.calls.records:
            assert record.started_at_ms <= due_ms


def test_generation_is_deterministic_per_device() -> None:
    spec = WorkloadSpec(days=2, duplicates=0.1, now_ms=NOW_MS)
    assert _decoded(spec, 7) == _decoded(spec, 7)
    assert _decoded(spec, 7) != _decoded(spec, 8)
    payloads = fleet_payloads(spec, 3)
    assert len(payloads) == sum(len(device_workload(spec, d).batches) for d in range(3))


def test_rejects_settings_the_server_would_refuse() -> None:
    with pytest.raises(ValueError):
        WorkloadSpec(clock_skew_ms=13 * 3_600_000)
    with pytest.raises(ValueError):
        WorkloadSpec(batch_size=10_001)
    with pytest.raises(ValueError):
        WorkloadSpec(mode="bursty")
    with pytest.raises(ValueError):
        WorkloadSpec(duplicates=1.5)
