"""Builders of call-log batches for ingest tests, and direct counts in ClickHouse."""

from __future__ import annotations

import time

from callsight.storage.database import Database
from callsight.v1 import common_pb2, ingest_pb2

DAY_MS = 86_400_000
BASE_MS = int(time.time() * 1000) - 3 * DAY_MS


def call(
    i: int, version: int = 0, *, number: str | None = None, **fields: object
) -> ingest_pb2.CallRecord:
    """Call ``i`` of a device: stable id, a client number from a pool of 50, mixed formats."""
    client = 9_800_000_000 + i % 50
    shown = number if number is not None else (f"+91 {client}" if i % 2 else f"0{client}")
    record = ingest_pb2.CallRecord(
        call_id=f"c{i}",
        number=shown,
        name=f"Client {i % 50}",
        type=(
            common_pb2.CALL_TYPE_INCOMING,
            common_pb2.CALL_TYPE_OUTGOING,
            common_pb2.CALL_TYPE_MISSED,
        )[i % 3],
        started_at_ms=BASE_MS + i * 1_000,
        duration_s=0 if i % 3 == 2 else 30 + i % 300,
        sim_slot=0,
        updated_at_ms=(BASE_MS + i * 1_000 + version) if version else 0,
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def batch(
    seq: int, records: list[ingest_pb2.CallRecord], batch_id: str | None = None
) -> ingest_pb2.UploadRequest:
    return ingest_pb2.UploadRequest(
        seq=seq,
        batch_id=batch_id if batch_id is not None else f"b{seq}",
        calls=ingest_pb2.CallLogBatch(records=records),
    )


def counts(ack: ingest_pb2.UploadAck) -> tuple[int, int, int, int]:
    return ack.accepted, ack.updated, ack.duplicates, ack.rejected


async def stored_calls(db: Database, tenant_id: str) -> dict[tuple[str, str], int]:
    """(device_id, call_id) -> version, one entry per call at its newest version."""
    rows = await db.query(
        "SELECT device_id, call_id, version FROM calls FINAL WHERE tenant_id = {t:String}",
        {"t": tenant_id},
    )
    return {(d, c): int(v) for d, c, v in rows}


async def raw_call_rows(db: Database, tenant_id: str) -> int:
    """Physical rows before merging (duplicates a re-send would add)."""
    rows = await db.query(
        "SELECT count() FROM calls WHERE tenant_id = {t:String}", {"t": tenant_id}
    )
    return int(rows[0][0])
