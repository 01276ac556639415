"""The insert ceilings write every encoded row, each way, in inserts of the size asked for."""

from __future__ import annotations

import math
import time

from callsight.loadtest.ceilings import INSERTS, insert_ceilings
from callsight.loadtest.generate import FleetSpec, fleet_batches, interleave
from callsight.v1 import ingest_pb2

NOW = int(time.time() * 1000)  # telemetry past its 90-day TTL would be merged away


def test_insert_ceilings_insert_every_row() -> None:
    spec = FleetSpec(devices=2, batches_per_device=3, batch_size=100, now_ms=NOW)
    result = insert_ceilings(interleave(fleet_batches(spec)), insert_rows=250, now_ms=spec.now_ms)
    # Fewer rows written than inserted would raise CeilingError.
    assert result["rows_inserted"] == spec.devices * spec.calls_per_device == 600
    assert result["inserts"] == math.ceil(600 / 250)
    assert all(result[f"insert_{way}_s"] > 0 for way in INSERTS)
    assert all(result[f"insert_{way}_rows_per_s"] > 0 for way in INSERTS)
    assert result["encode_s"] > 0 and result["encode_warm_s"] > 0


def test_insert_ceilings_write_contacts_and_telemetry_too() -> None:
    contacts = ingest_pb2.UploadRequest(seq=1, batch_id="d0-b1")
    contacts.contacts.records.add(
        contact_id="1", name="Asha", numbers=["+919876543210"], updated_at_ms=NOW - 1000
    )
    telemetry = ingest_pb2.UploadRequest(seq=2, batch_id="d0-b2")
    telemetry.telemetry.records.add(captured_at_ms=NOW - 1000, battery_pct=80)
    telemetry.telemetry.records.add(captured_at_ms=NOW - 2000, battery_pct=79)
    payloads = [contacts.SerializeToString(), telemetry.SerializeToString()]
    result = insert_ceilings(payloads, insert_rows=100, now_ms=NOW)
    assert (result["rows_inserted"], result["inserts"]) == (3, 2)
    assert all(result[f"insert_{way}_s"] > 0 for way in INSERTS)
