"""RowChunk: rows as plain columns; one Arrow table per flush equals the per-batch tables."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from callsight.pipeline.batcher import Batcher
from callsight.pipeline.chunk import RowChunk, concat
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import SCHEMAS, NumberCodec, Source, decode
from callsight.server.config import Config
from callsight.v1 import ingest_pb2

NOW = 1_700_000_000_000
START = NOW - 3_600_000
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("blob", pa.binary()),
        ("tags", pa.list_(pa.string())),
        ("at", pa.timestamp("ms", tz="UTC")),
    ]
)


def chunk(start: int, count: int) -> RowChunk:
    span = range(start, start + count)
    return RowChunk(
        SCHEMA,
        count,
        (
            np.arange(start, start + count, dtype=np.int64),
            [f"n{i}" for i in span],
            [bytes([i % 256]) * (i % 3) for i in span],
            [[f"t{i}"] * (i % 3) for i in span],
            np.arange(START + start, START + start + count, dtype=np.int64),
        ),
    )


def request(kind: str, seq: int, records: list[dict[str, Any]]) -> ingest_pb2.UploadRequest:
    out = ingest_pb2.UploadRequest(seq=seq, batch_id=f"b{seq}")
    batch = getattr(out, kind)
    for record in records:
        batch.records.add(**record)
    return out


def small_batches(kind: str) -> list[ingest_pb2.UploadRequest]:
    """Twelve uploads of 1-3 records; every fourth has a record decode() rejects."""
    out = []
    for seq in range(12):
        records: list[dict[str, Any]] = []
        for j in range(seq % 3 + 1):
            i = seq * 10 + j
            if kind == "calls":
                records.append(
                    {
                        "call_id": f"c{i}",
                        "number": f"98765{i % 7:05d}",
                        "name": "Ravi" if j else "",
                        "type": 2,
                        "started_at_ms": START + i,
                        "duration_s": i,
                        "note": "call back" if j == 1 else "",
                    }
                )
            elif kind == "contacts":
                numbers = [f"98765{(i + k) % 5:05d}" for k in range(j)]
                records.append(
                    {
                        "contact_id": f"k{i}",
                        "name": f"Contact {i}",
                        "numbers": numbers,
                        "updated_at_ms": START + i,
                        "deleted": not numbers,
                    }
                )
            else:
                records.append(
                    {
                        "captured_at_ms": START + i,
                        "battery_pct": 50 + j,
                        "sim_ids": [f"sim-{k}" for k in range(j)],
                        "model": "Pixel",
                    }
                )
        if seq % 4 == 3:  # an unusable number or a timestamp in the future
            bad = {"number": "x"} if kind != "telemetry" else {"captured_at_ms": NOW + 10**9}
            if kind == "contacts":
                bad = {"numbers": ["x"], "deleted": False}
            records[0] = {**records[0], **bad}
        out.append(request(kind, seq, records))
    return out


def decoded_chunks(kind: str) -> list[RowChunk]:
    source = Source(
        "tenant-a", "device-1", "employee-1", "IN", Keyring(TenantCipher(1, new_data_key()))
    )
    codec = NumberCodec()
    decoded = [decode(req, source, codec, NOW) for req in small_batches(kind)]
    assert sum(1 for d in decoded if d.errors) == 3  # so three chunks were filtered in decode
    chunks = [d.rows for d in decoded]
    # One more, filtered the way ingest drops duplicates: keep the first and last rows only.
    last = chunks[-1]
    mask = np.zeros(last.num_rows, dtype=np.bool_)
    mask[[0, -1]] = True
    chunks.append(last.filter(mask))
    return chunks


@pytest.mark.parametrize("kind", ["calls", "contacts", "telemetry"])
async def test_one_flush_of_many_small_chunks_equals_the_per_batch_tables(kind: str) -> None:
    chunks = decoded_chunks(kind)
    per_batch = pa.concat_tables([c.to_arrow() for c in chunks])

    class Sink:
        def __init__(self) -> None:
            self.writes: list[pa.Table] = []

        async def write(self, table: str, rows: pa.Table, token: str) -> None:
            self.writes.append(rows)

    sink = Sink()
    settings = replace(Config().pipeline_settings(), max_rows=1_000_000, max_age_ms=60_000)
    batcher = Batcher(sink, settings)
    futures = [f for c in chunks for f in batcher.add(kind, c)]
    await batcher.close(2)
    await asyncio.wait_for(asyncio.gather(*futures), 2)
    (written,) = sink.writes
    assert written.schema.equals(SCHEMAS[kind])
    assert written.num_rows == sum(c.num_rows for c in chunks) == per_batch.num_rows
    assert written.equals(per_batch)
    assert concat(chunks).to_arrow().equals(per_batch)


def test_list_columns_survive_filter_and_concat() -> None:
    for kind, name in [("contacts", "numbers_bidx"), ("telemetry", "sim_ids_enc")]:
        chunks = decoded_chunks(kind)
        lists = [v for c in chunks for v in c.to_arrow().column(name).to_pylist()]
        assert any(len(v) == 0 for v in lists) and any(len(v) > 1 for v in lists)
        assert concat(chunks).to_arrow().column(name).to_pylist() == lists


def test_filter_keeps_the_masked_rows_in_order() -> None:
    whole = chunk(0, 6)
    kept = whole.filter(np.array([True, False, True, False, False, True]))
    assert kept.num_rows == 3
    expected = whole.to_arrow().filter(pa.array([True, False, True, False, False, True]))
    assert kept.to_arrow().equals(expected)
    assert kept.to_arrow().column("id").to_pylist() == [0, 2, 5]
    assert kept.to_arrow().column("tags").to_pylist() == [[], ["t2", "t2"], ["t5", "t5"]]


def test_filter_keeping_every_row_is_the_chunk_itself() -> None:
    whole = chunk(0, 4)
    assert whole.filter(np.ones(4, dtype=np.bool_)) is whole
    with pytest.raises(ValueError):
        whole.filter(np.ones(3, dtype=np.bool_))


def test_slices_and_concat_give_back_the_whole() -> None:
    whole = chunk(0, 10)
    parts = [whole.slice(0, 3), whole.slice(3, 3), whole.slice(3, 10)]
    assert [p.num_rows for p in parts] == [3, 0, 7]
    assert concat(parts).to_arrow().equals(whole.to_arrow())
    assert concat([chunk(0, 4), chunk(4, 6)]).to_arrow().equals(whole.to_arrow())


def test_adjacent_slices_join_into_their_whole_without_cutting_columns() -> None:
    whole = chunk(0, 10)
    parts = [whole.slice(0, 4), whole.slice(4, 5), whole.slice(5, 10)]
    joined = concat(parts)
    # Every column of the join is the whole chunk's own object: nothing was cut or copied.
    assert all(a is b for a, b in zip(joined.columns, whole.columns, strict=True))
    assert joined.num_rows == 10
    # A slice of a slice is a view of the whole chunk too, and joins the same way.
    half = whole.slice(2, 8)
    inner = [half.slice(0, 3), half.slice(3, 6)]
    assert concat(inner).to_arrow().equals(whole.to_arrow().slice(2, 6))


def test_slices_out_of_order_or_of_other_chunks_concat_in_the_order_given() -> None:
    a, b = chunk(0, 6), chunk(100, 4)
    parts = [a.slice(3, 6), a.slice(0, 3), b.slice(1, 3), b.slice(3, 4), a.slice(0, 2)]
    expected = pa.concat_tables(
        [a.to_arrow().slice(3, 3), a.to_arrow().slice(0, 3), b.to_arrow().slice(1, 3)]
        + [a.to_arrow().slice(0, 2)]
    )
    assert concat(parts).to_arrow().equals(expected)
    # A slice asked for its columns, filtered, or measured, shows only its own rows.
    view = b.slice(1, 3)
    assert view.columns[0].tolist() == [101, 102]
    assert view.filter(np.array([False, True])).to_arrow().column("id").to_pylist() == [102]
    assert b.slice(0, 2, nbytes=77).nbytes() == 77
    assert b.slice(0, 2).nbytes() == RowChunk(SCHEMA, 2, b.slice(0, 2).columns).nbytes()


def test_concat_refuses_other_columns() -> None:
    other = RowChunk(pa.schema([("id", pa.int64())]), 1, (np.array([1], dtype=np.int64),))
    with pytest.raises(ValueError):
        concat([chunk(0, 1), other])


def test_nbytes_estimates_the_arrow_size() -> None:
    for kind in ["calls", "contacts", "telemetry"]:
        whole = concat(decoded_chunks(kind))
        arrow = whole.to_arrow().get_total_buffer_size()
        # Arrow adds validity bitmaps and padding; the estimate is for flushing by size.
        assert arrow / 2 <= whole.nbytes() <= arrow * 2
