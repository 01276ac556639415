"""Export messages and the decrypted-parties cache, without a database."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pytest

from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.server import export_chunks, report_export
from callsight.server.export_chunks import MAX_MESSAGE_BYTES, Rows, encode


def _rows(table: pa.Table) -> Rows:
    ids = table.column("id")
    return Rows(table, lambda i: [ids[i].as_py()], last=True)


@pytest.mark.parametrize("fmt", ["arrow", "csv"])
def test_messages_stay_under_the_row_and_byte_limits(fmt: str) -> None:
    # 40 rows of 300 KiB: about 12 MiB, so the bytes cut the messages before the rows do.
    table = pa.table({"id": list(range(40)), "text": ["x" * 300 * 2**10] * 40})
    messages = export_chunks._messages(_rows(table), fmt, True, 30)
    assert len(messages) >= 3
    assert all(len(m.data) <= MAX_MESSAGE_BYTES and m.rows <= 30 for m in messages)
    assert sum(m.rows for m in messages) == 40
    ends = [sum(m.rows for m in messages[: i + 1]) - 1 for i in range(len(messages))]
    assert [m.key for m in messages] == [[end] for end in ends]
    # The rows cut the messages of small rows.
    small = pa.table({"id": list(range(10)), "text": ["y"] * 10})
    assert [m.rows for m in export_chunks._messages(_rows(small), fmt, False, 4)] == [4, 4, 2]
    if fmt == "arrow":
        read = [pyarrow.ipc.open_stream(m.data).read_all() for m in messages]
        assert pa.concat_tables(read).column("id").to_pylist() == list(range(40))


def test_csv_times_read_as_arrow_writes_them() -> None:
    times = pa.array([0, 1_790_000_000_123, None], pa.timestamp("ms", tz="UTC"))
    table = pa.table({"at": times, "n": [1, 2, 3]})
    rows = list(csv.DictReader(io.StringIO(encode(table, "csv", True).decode())))
    assert [r["at"] for r in rows] == [
        "1970-01-01 00:00:00.000Z",
        "2026-09-21 14:13:20.123Z",
        "",
    ]
    assert [r["n"] for r in rows] == ["1", "2", "3"]


def _parties(cipher: TenantCipher, keys: list[tuple[int, int, str, str]]) -> pa.Table:
    return pa.table(
        {
            "client_key": pa.array([k for k, _, _, _ in keys], pa.uint64()),
            "name_key": pa.array([n for _, n, _, _ in keys], pa.uint32()),
            "number_enc": [cipher.encrypt(number) for _, _, number, _ in keys],
            "name_enc": [cipher.encrypt(name) if name else b"" for _, _, _, name in keys],
        }
    )


def _calls(pairs: list[tuple[int, int]]) -> pa.Table:
    return pa.table(
        {
            "client_key": pa.array([k for k, _ in pairs], pa.uint64()),
            "name_key": pa.array([n for _, n in pairs], pa.uint32()),
        }
    )


def test_parties_find_each_rows_number_and_name() -> None:
    cipher = TenantCipher(1, new_data_key())
    known = report_export._Parties(Keyring(cipher))
    calls = _calls([(20, 5), (10, 7), (10, 0), (30, 0), (10, 99), (20, 5)])
    wanted = known.missing(calls.column("client_key"))
    assert sorted(wanted.to_pylist()) == [10, 20, 30]
    found = [(10, 0, "+911", ""), (10, 7, "+911", "Asha"), (20, 5, "+912", "Ravi")]
    known.add(_parties(cipher, found), wanted)  # 30 has no party row
    assert known.missing(calls.column("client_key")).to_pylist() == []
    numbers, names = known.shown(calls)
    assert numbers.to_pylist() == ["+912", "+911", "+911", "", "+911", "+912"]
    assert names.to_pylist() == ["Ravi", "Asha", "", "", "", "Ravi"]


def test_the_parties_cache_starts_over_at_its_bound(monkeypatch: Any) -> None:
    monkeypatch.setattr(report_export, "MAX_CACHED_PARTIES", 2)
    cipher = TenantCipher(1, new_data_key())
    known = report_export._Parties(Keyring(cipher))
    first = _calls([(1, 0), (2, 0)])
    known.add(
        _parties(cipher, [(1, 0, "+911", ""), (2, 0, "+912", "")]), pa.array([1, 2], pa.uint64())
    )
    assert known.missing(first.column("client_key")).to_pylist() == []
    known.add(_parties(cipher, [(3, 0, "+913", "")]), pa.array([3], pa.uint64()))
    # Over the bound: only the newest party is kept; the others are read again when needed.
    assert len(known.client_keys) == 1
    assert sorted(known.missing(first.column("client_key")).to_pylist()) == [1, 2]
    assert known.shown(_calls([(3, 0), (1, 0)]))[0].to_pylist() == ["+913", ""]
