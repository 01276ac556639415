"""The decode and transport ceilings count every record and every batch (no database here)."""

from __future__ import annotations

import math

import pytest

from callsight.loadtest.ceilings import (
    decode_ceiling,
    record_count,
    small_batch_floor,
    stream_workloads,
    transport_ceiling,
)
from callsight.loadtest.fleet import ratios
from callsight.loadtest.generate import FleetSpec, fleet_batches, interleave
from callsight.v1 import ingest_pb2

SPEC = FleetSpec(devices=3, batches_per_device=4, batch_size=50, seed=7, now_ms=1_700_000_000_000)


@pytest.fixture(scope="module")
def batches() -> list[bytes]:
    return interleave(fleet_batches(SPEC))


def _other_payloads() -> list[bytes]:
    contacts = ingest_pb2.UploadRequest(seq=1, batch_id="c-b1")
    contacts.contacts.records.add(contact_id="1", name="Asha", numbers=["+919876543210"])
    contacts.contacts.records.add(contact_id="2", name="Ravi", numbers=["09876543211"])
    telemetry = ingest_pb2.UploadRequest(seq=2, batch_id="c-b2")
    telemetry.telemetry.records.add(captured_at_ms=1_700_000_000_000, battery_pct=80)
    empty = ingest_pb2.UploadRequest(seq=3, batch_id="c-b3")
    return [contacts.SerializeToString(), telemetry.SerializeToString(), empty.SerializeToString()]


def test_interleave_sends_round_by_round() -> None:
    per_device = [[b"a1", b"a2", b"a3"], [b"b1"], [b"c1", b"c2"]]
    assert interleave(per_device) == [b"a1", b"b1", b"c1", b"a2", b"c2", b"a3"]


def test_record_count_covers_every_payload() -> None:
    counts = [record_count(ingest_pb2.UploadRequest.FromString(b)) for b in _other_payloads()]
    assert counts == [2, 1, 0]


def test_decode_ceiling_counts_all_records(batches: list[bytes]) -> None:
    everything = [*batches, *_other_payloads()]
    result = decode_ceiling(everything, min_time_s=0.0)
    assert result["records"] == SPEC.devices * SPEC.calls_per_device + 3
    assert result["batches"] == len(everything)
    assert result["decode_passes"] >= 1
    assert result["decode_records_per_s"] > 0


def test_stream_workloads_deal_batches_round_robin_with_their_own_seqs(
    batches: list[bytes],
) -> None:
    streams = stream_workloads(batches, 5)
    assert [len(s.batches) for s in streams] == [3, 3, 2, 2, 2]
    for stream in streams:
        seqs = [b.seq for b in stream.batches]
        assert seqs == list(range(1, len(seqs) + 1))
        for batch in stream.batches:
            request = ingest_pb2.UploadRequest.FromString(batch.payload)
            assert request.seq == batch.seq and batch.records == SPEC.batch_size
    assert len(stream_workloads(batches[:2], 8)) == 2


def test_transport_ceiling_acks_every_batch(batches: list[bytes]) -> None:
    result = transport_ceiling(batches, streams=4, window=2, min_time_s=0.0)
    assert result["transport_acks"] == len(batches) == SPEC.devices * SPEC.batches_per_device
    assert result["transport_records_acked"] == SPEC.devices * SPEC.calls_per_device
    assert result["transport_rejected"] == 0 and result["transport_streams"] == 4
    assert result["transport_passes"] == 1
    assert 0 < result["transport_ack_p50_ms"] <= result["transport_ack_p99_ms"]
    # Measured, not NaN.
    assert result["transport_records_per_s"] > 0 and result["transport_server_cpu_s"] >= 0


def test_transport_ceiling_with_more_streams_than_batches(batches: list[bytes]) -> None:
    result = transport_ceiling(batches[:2], streams=8, window=1, min_time_s=0.0)
    assert (result["transport_acks"], result["transport_records_acked"]) == (2, 2 * SPEC.batch_size)
    assert result["transport_streams"] == 2


def test_small_batch_floor_acks_what_phones_offer_when_far_below_it() -> None:
    floor = small_batch_floor(devices=40, duration_s=3.0)
    assert floor["small_floor_devices"] == 40
    # 40 phones syncing every second: about 40 batches/s offered (calls and telemetry), all of
    # them taken by a servicer that only acks.
    offered = floor["small_floor_offered_batches_per_s"]
    assert 35 <= offered <= 90
    assert floor["small_floor_errors"] == 0
    assert floor["small_floor_batches_per_s"] == pytest.approx(offered, rel=0.35)
    assert 0 < floor["small_floor_ack_p50_ms"] <= floor["small_floor_ack_p99_ms"] < 1000
    assert floor["small_floor_server_cpu_s"] > 0 and floor["small_floor_client_cpu_s"] > 0


def test_ratios_divide_the_end_to_end_rate_by_each_ceiling() -> None:
    ceilings = {
        "transport_records_per_s": 400_000.0,
        "decode_records_per_s": 2_000_000.0,
        "insert_columns_rows_per_s": 100_000.0,
        "insert_arrow_rows_per_s": 0.0,
        "transport_acks": 10.0,
    }
    got = ratios(50_000.0, ceilings)
    assert got["transport_records"] == 0.125
    assert got["decode_records"] == 0.025
    assert got["insert_columns_rows"] == 0.5
    assert math.isnan(got["insert_arrow_rows"])
    assert len(got) == 4
