"""How the writer stores call rows: one party row per (tenant, client, name), then the calls."""

from __future__ import annotations

import pyarrow as pa

from callsight.pipeline.encode import CALLS_SCHEMA
from callsight.storage.parties import PARTIES_SCHEMA, PARTY_COLUMNS, split_calls, stored_inserts


def call(tenant: str, call_id: str, client: int, name: int, synced_ms: int) -> dict[str, object]:
    return {
        "tenant_id": tenant, "device_id": "d", "call_id": call_id, "employee_id": "e",
        "number_bidx": client.to_bytes(32, "little"), "number_enc": b"n%d" % client,
        "name_enc": b"m%d" % name if name else b"", "type": 1, "started_at": 1_000,
        "duration_s": 0, "sim_slot": 0, "sim_id_enc": b"", "note_enc": b"",
        "recording_uri_enc": b"",
        "version": 1_000, "synced_at": synced_ms, "client_key": client, "name_key": name,
    }  # fmt: skip


def test_one_party_row_per_tenant_client_and_name_from_its_first_call() -> None:
    rows = pa.Table.from_pylist(
        [
            call("t1", "1", 7, 0, 10),
            call("t1", "2", 7, 3, 11),
            call("t1", "3", 7, 3, 12),
            call("t2", "4", 7, 3, 13),
            call("t1", "5", 9, 0, 14),
        ],
        schema=CALLS_SCHEMA,
    )
    parties, calls = split_calls(rows)
    assert parties.schema.equals(PARTIES_SCHEMA)
    columns = ("tenant_id", "client_key", "name_key", "version")
    got = sorted(zip(*(parties[c].to_pylist() for c in columns), strict=True))
    assert got == [("t1", 7, 0, 10), ("t1", 7, 3, 11), ("t1", 9, 0, 14), ("t2", 7, 3, 13)]
    assert calls.num_rows == 5 and not set(PARTY_COLUMNS) & set(calls.column_names)
    assert calls["call_id"].to_pylist() == ["1", "2", "3", "4", "5"]


def test_parties_are_inserted_before_their_calls_and_other_tables_as_they_are() -> None:
    rows = pa.Table.from_pylist([call("t1", "1", 7, 0, 10)], schema=CALLS_SCHEMA)
    assert [table for table, _ in stored_inserts("calls", rows)] == ["parties", "calls"]
    other = pa.table({"x": [1]})
    assert stored_inserts("telemetry", other) == [("telemetry", other)]
