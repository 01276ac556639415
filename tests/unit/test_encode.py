from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import callsight.pipeline.phone
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import (
    PRIVATE_BIDX,
    PRIVATE_CLIENT_KEY,
    Decoded,
    NumberCodec,
    Source,
    client_keys,
    decode,
    decode_many,
)
from callsight.pipeline.ingest import erased_rows
from callsight.pipeline.validate import MAX_BATCH_BYTES, MAX_RECORDS, BatchRejected
from callsight.v1 import ingest_pb2

NOW = 1_700_000_000_000
START = NOW - 3_600_000
TS = pa.timestamp("ms", tz="UTC")

CALLS_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("call_id", pa.string()),
        ("employee_id", pa.string()),
        ("number_bidx", pa.binary(32)),
        ("number_enc", pa.binary()),
        ("name_enc", pa.binary()),
        ("type", pa.uint8()),
        ("started_at", TS),
        ("duration_s", pa.uint32()),
        ("sim_slot", pa.int32()),
        ("sim_id_enc", pa.binary()),
        ("note_enc", pa.binary()),
        ("recording_uri_enc", pa.binary()),
        ("version", pa.uint64()),
        ("synced_at", TS),
        ("client_key", pa.uint64()),
        ("name_key", pa.uint32()),
        ("presentation", pa.uint8()),
        ("method", pa.uint8()),
        ("mode", pa.uint8()),
    ]
)
CONTACTS_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("contact_id", pa.string()),
        ("name_enc", pa.binary()),
        ("numbers_enc", pa.list_(pa.binary())),
        ("numbers_bidx", pa.list_(pa.binary(32))),
        ("photo_uri", pa.string()),
        ("deleted", pa.bool_()),
        ("version", pa.uint64()),
        ("synced_at", TS),
    ]
)
TELEMETRY_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("captured_at", TS),
        ("battery_pct", pa.uint8()),
        ("charging", pa.bool_()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("accuracy_m", pa.float32()),
        ("network", pa.uint8()),
        ("app_version", pa.string()),
        ("version_code", pa.int64()),
        ("android_version", pa.string()),
        ("sdk_int", pa.int32()),
        ("model", pa.string()),
        ("fcm_id_enc", pa.binary()),
        ("sim_ids_enc", pa.list_(pa.binary())),
        ("synced_at", TS),
    ]
)

IN_SPELLINGS = ["+91 98765 43210", "09876543210", "9876543210", "+919876543210", "098765-43210"]
US_SPELLINGS = ["+1 650-253-0000", "(650) 253-0000", "650.253.0000", "1 650 253 0000"]


class CountingCipher(TenantCipher):
    """Records every plaintext encrypted or blind-indexed, to observe the codec's caches."""

    def __init__(self, key_id: int, data_key: bytes) -> None:
        super().__init__(key_id, data_key)
        self.encrypted: list[str] = []
        self.indexed: list[str] = []

    def encrypt_many(self, plaintexts: Sequence[str]) -> list[bytes]:
        self.encrypted.extend(p for p in plaintexts if p)
        return super().encrypt_many(plaintexts)

    def blind_index_many(self, values: Sequence[str]) -> list[bytes]:
        self.indexed.extend(values)
        return super().blind_index_many(values)


@pytest.fixture
def cipher() -> CountingCipher:
    return CountingCipher(3, new_data_key())


@pytest.fixture
def source(cipher: CountingCipher) -> Source:
    return Source("tenant-a", "device-1", "employee-1", "IN", Keyring(cipher))


@pytest.fixture
def codec() -> NumberCodec:
    return NumberCodec()


@pytest.fixture
def normalizations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every raw number actually parsed by libphonenumber (not answered from a cache)."""
    seen: list[str] = []
    real = callsight.pipeline.phone.normalize

    def counting(raw: str, region: str) -> str:
        seen.append(raw)
        return real(raw, region)

    monkeypatch.setattr(callsight.pipeline.phone, "normalize", counting)
    return seen


def call(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "number": "9876543210",
        "type": 2,
        "started_at_ms": START,
        "duration_s": 42,
    }
    record.update(fields)
    return record


def calls_request(*records: dict[str, Any]) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=7, batch_id="b7")
    for i, record in enumerate(records):
        request.calls.records.add(**{"call_id": f"c{i}", **record})
    return request


def contacts_request(*records: dict[str, Any]) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=8, batch_id="b8")
    for record in records:
        request.contacts.records.add(**record)
    return request


def telemetry_request(*records: dict[str, Any]) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=9, batch_id="b9")
    for record in records:
        request.telemetry.records.add(**record)
    return request


def column(decoded: Decoded, name: str) -> list[Any]:
    return list(decoded.rows.to_arrow().column(name).to_pylist())


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# --- whole batch ----------------------------------------------------------------------------


def test_decode_refuses_a_batch_without_payload(source: Source, codec: NumberCodec) -> None:
    with pytest.raises(BatchRejected, match="no payload"):
        decode(ingest_pb2.UploadRequest(seq=1), source, codec, NOW)


def test_decode_refuses_too_many_records(source: Source, codec: NumberCodec) -> None:
    request = calls_request(*[call() for _ in range(MAX_RECORDS + 1)])
    with pytest.raises(BatchRejected, match="10001 records"):
        decode(request, source, codec, NOW)


def test_decode_refuses_too_many_bytes(source: Source, codec: NumberCodec) -> None:
    request = calls_request(call(note="n" * MAX_BATCH_BYTES))
    with pytest.raises(BatchRejected, match="the limit is 4194304"):
        decode(request, source, codec, NOW)


@pytest.mark.parametrize(
    ("kind", "schema"),
    [("calls", CALLS_SCHEMA), ("contacts", CONTACTS_SCHEMA), ("telemetry", TELEMETRY_SCHEMA)],
)
def test_empty_batch_gives_an_empty_table(
    source: Source, codec: NumberCodec, kind: str, schema: pa.Schema
) -> None:
    request = ingest_pb2.UploadRequest()
    getattr(request, kind).SetInParent()
    decoded = decode(request, source, codec, NOW)
    assert decoded.table == kind
    assert decoded.size == 0
    assert decoded.rows.to_arrow().num_rows == 0
    assert decoded.rows.to_arrow().schema.equals(schema)
    assert decoded.keys == []
    assert decoded.errors == []


# --- calls ----------------------------------------------------------------------------------


def test_calls_rows_schema_and_columns(
    source: Source, codec: NumberCodec, cipher: CountingCipher
) -> None:
    request = calls_request(
        call(name="Ravi Kumar", note="call back", sim_slot=1, sim_id="sim-9", updated_at_ms=0),
        call(type=3, duration_s=0, recording_uri="content://rec/2", updated_at_ms=START + 5),
    )
    decoded = decode(request, source, codec, NOW)

    assert decoded.table == "calls"
    assert decoded.size == 2
    assert decoded.errors == []
    assert decoded.rows.to_arrow().schema.equals(CALLS_SCHEMA)
    assert decoded.rows.to_arrow().schema.names == CALLS_SCHEMA.names
    assert column(decoded, "tenant_id") == ["tenant-a", "tenant-a"]
    assert column(decoded, "device_id") == ["device-1", "device-1"]
    assert column(decoded, "employee_id") == ["employee-1", "employee-1"]
    assert column(decoded, "call_id") == ["c0", "c1"]
    assert column(decoded, "type") == [2, 3]
    assert decoded.rows.to_arrow().column("started_at").cast(pa.int64()).to_pylist() == [
        START,
        START,
    ]
    assert column(decoded, "duration_s") == [42, 0]
    assert column(decoded, "sim_slot") == [1, 0]
    keyring = source.keyring
    # Either can hold a number (recorders name files after it): only ciphertexts are stored.
    assert [keyring.decrypt(b) for b in column(decoded, "sim_id_enc")] == ["sim-9", ""]
    assert column(decoded, "sim_id_enc")[1] == b""
    assert b"sim-9" not in column(decoded, "sim_id_enc")[0]
    assert [keyring.decrypt(b) for b in column(decoded, "recording_uri_enc")] == [
        "",
        "content://rec/2",
    ]
    assert b"rec/2" not in column(decoded, "recording_uri_enc")[1]
    # version 0 means started_at_ms
    assert column(decoded, "version") == [START, START + 5]
    assert decoded.versions.dtype == np.uint64
    assert decoded.versions.tolist() == [START, START + 5]
    assert decoded.rows.to_arrow().column("synced_at").cast(pa.int64()).to_pylist() == [NOW, NOW]
    assert decoded.indices.tolist() == [0, 1]
    assert decoded.keys == ["c0", "c1"]

    assert [keyring.decrypt(b) for b in column(decoded, "number_enc")] == ["+919876543210"] * 2
    assert column(decoded, "number_bidx") == [cipher.blind_index("+919876543210")] * 2
    assert [keyring.decrypt(b) for b in column(decoded, "name_enc")] == ["Ravi Kumar", ""]
    assert column(decoded, "name_enc")[1] == b""
    assert [keyring.decrypt(b) for b in column(decoded, "note_enc")] == ["call back", ""]
    # The keys calls keep: the blind index's first 8 bytes as ClickHouse reads them, and a
    # keyed hash of the name (0 for none).
    bidx = cipher.blind_index("+919876543210")
    assert column(decoded, "client_key") == [int.from_bytes(bidx[:8], "little")] * 2
    assert column(decoded, "name_key") == [cipher.name_keys(["Ravi Kumar"])[0], 0]
    assert column(decoded, "name_key")[0] != 0
    assert column(decoded, "note_enc")[1] == b""
    # Not reported: a shown number, over the phone network, voice only.
    assert column(decoded, "presentation") == [1, 1]
    assert column(decoded, "method") == [1, 1]
    assert column(decoded, "mode") == [1, 1]


def test_hidden_callers_are_stored_as_the_private_client(
    source: Source, codec: NumberCodec, cipher: CountingCipher
) -> None:
    request = calls_request(
        call(number="", name="Someone", method=2, mode=2),
        call(),
        call(number="-2"),
        call(number="12"),  # a shown number that is bad: still rejected, at its own index
        call(number="-3", presentation=0),
        call(number="9876543210", presentation=2, name="Withheld"),
        call(number="-1", type=0),  # hidden, but breaks a rule: rejected
    )
    decoded = decode(request, source, codec, NOW)
    assert decoded.errors == [
        (3, "number: '12' is not a possible phone number in region IN (too short)"),
        (6, "type 0 is not a CallType (1-7)"),
    ]
    assert column(decoded, "call_id") == ["c0", "c1", "c2", "c4", "c5"]
    assert column(decoded, "presentation") == [3, 1, 2, 4, 2]
    assert column(decoded, "method") == [2, 1, 1, 1, 1]
    assert column(decoded, "mode") == [2, 1, 1, 1, 1]
    shown = cipher.blind_index("+919876543210")
    hidden = PRIVATE_BIDX
    assert column(decoded, "number_bidx") == [hidden, shown, hidden, hidden, hidden]
    key = int.from_bytes(shown[:8], "little")
    private = PRIVATE_CLIENT_KEY
    assert column(decoded, "client_key") == [private, key, private, private, private]
    # Neither the withheld number nor a name is kept for a hidden caller.
    numbers = [source.keyring.decrypt(b) for b in column(decoded, "number_enc")]
    assert numbers == ["", "+919876543210", "", "", ""]
    assert column(decoded, "name_enc") == [b""] * 5
    assert column(decoded, "name_key") == [0] * 5


def test_the_private_client_key_is_what_clickhouse_reads_of_its_index() -> None:
    assert client_keys([PRIVATE_BIDX]).tolist() == [PRIVATE_CLIENT_KEY]
    assert PRIVATE_CLIENT_KEY == 2**64 - 1


def test_rejected_calls_are_left_out_with_their_index(source: Source, codec: NumberCodec) -> None:
    request = calls_request(
        call(),
        call(type=0),
        call(number="12"),
        call(duration_s=90_000, number="also bad"),
        call(updated_at_ms=START + 9),
        call(number="hello"),
    )
    decoded = decode(request, source, codec, NOW)
    assert decoded.size == 6
    assert decoded.errors == [
        (1, "type 0 is not a CallType (1-7)"),
        (2, "number: '12' is not a possible phone number in region IN (too short)"),
        # one reason per record: the validation rule, not the number's as well
        (3, "duration_s 90000 is over 86400 (24 h)"),
        (5, "number: 'hello' is not a phone number"),
    ]
    assert decoded.indices.tolist() == [0, 4]
    assert decoded.keys == ["c0", "c4"]
    assert column(decoded, "call_id") == ["c0", "c4"]
    assert decoded.versions.tolist() == [START, START + 9]
    assert decoded.rows.to_arrow().num_rows == 2
    assert decoded.rows.to_arrow().schema.equals(CALLS_SCHEMA)


def test_all_calls_rejected(source: Source, codec: NumberCodec) -> None:
    decoded = decode(calls_request(call(call_id=""), call(number="x")), source, codec, NOW)
    assert [i for i, _ in decoded.errors] == [0, 1]
    assert decoded.rows.to_arrow().num_rows == 0
    assert decoded.rows.to_arrow().schema.equals(CALLS_SCHEMA)
    assert decoded.keys == []
    assert decoded.indices.tolist() == []


def test_mixed_in_formats_share_one_blind_index(source: Source, codec: NumberCodec) -> None:
    decoded = decode(calls_request(*[call(number=n) for n in IN_SPELLINGS]), source, codec, NOW)
    assert decoded.errors == []
    assert len(set(column(decoded, "number_bidx"))) == 1
    assert {source.keyring.decrypt(b) for b in column(decoded, "number_enc")} == {"+919876543210"}


def test_mixed_us_formats_share_one_blind_index(cipher: CountingCipher, codec: NumberCodec) -> None:
    us = Source("tenant-a", "device-2", "employee-2", "US", Keyring(cipher))
    decoded = decode(calls_request(*[call(number=n) for n in US_SPELLINGS]), us, codec, NOW)
    assert decoded.errors == []
    assert set(column(decoded, "number_bidx")) == {cipher.blind_index("+16502530000")}
    assert {us.keyring.decrypt(b) for b in column(decoded, "number_enc")} == {"+16502530000"}


def test_region_decides_local_numbers(cipher: CountingCipher, codec: NumberCodec) -> None:
    keyring = Keyring(cipher)
    local = calls_request(call(number="6502530000"))
    in_row = decode(local, Source("t", "d", "e", "IN", keyring), codec, NOW)
    us_row = decode(local, Source("t", "d", "e", "US", keyring), codec, NOW)
    assert keyring.decrypt(column(in_row, "number_enc")[0]) == "+916502530000"
    assert keyring.decrypt(column(us_row, "number_enc")[0]) == "+16502530000"


def test_tenants_never_share_ciphertexts_or_indexes(codec: NumberCodec) -> None:
    first = Source("tenant-a", "d", "e", "IN", Keyring(TenantCipher(1, new_data_key())))
    second = Source("tenant-b", "d", "e", "IN", Keyring(TenantCipher(1, new_data_key())))
    request = calls_request(call(name="Ravi"))
    a = decode(request, first, codec, NOW)
    b = decode(request, second, codec, NOW)
    assert column(a, "number_bidx") != column(b, "number_bidx")
    assert second.keyring.decrypt(column(b, "number_enc")[0]) == "+919876543210"
    assert second.keyring.decrypt(column(b, "name_enc")[0]) == "Ravi"


def test_key_rotation_encrypts_under_the_new_key(codec: NumberCodec) -> None:
    old = TenantCipher(1, new_data_key())
    new = TenantCipher(2, new_data_key())
    request = calls_request(call(name="Ravi"))
    decode(request, Source("t", "d", "e", "IN", Keyring(old)), codec, NOW)
    rotated = Keyring(new, [old])
    decoded = decode(request, Source("t", "d", "e", "IN", rotated), codec, NOW)
    for name in ("number_enc", "name_enc"):
        blob = column(decoded, name)[0]
        assert blob[1:5] == (2).to_bytes(4, "big")
    assert column(decoded, "number_bidx") == [new.blind_index("+919876543210")]


def test_codec_normalises_and_encrypts_each_number_once(
    source: Source, codec: NumberCodec, cipher: CountingCipher, normalizations: list[str]
) -> None:
    records = [
        call(number=IN_SPELLINGS[i % 3], name="Ravi" if i % 2 else "Asha") for i in range(30)
    ]
    request = calls_request(*records)

    decode(request, source, codec, NOW)
    assert sorted(normalizations) == sorted(IN_SPELLINGS[:3])
    assert cipher.indexed == ["+919876543210"]
    assert sorted(cipher.encrypted) == sorted(["+919876543210", "Ravi", "Asha"])

    # The same numbers and names again, in a later batch: everything comes from the caches.
    decoded = decode(request, source, codec, NOW)
    assert len(normalizations) == 3
    assert cipher.indexed == ["+919876543210"]
    assert len(cipher.encrypted) == 3
    assert decoded.errors == []
    assert decoded.rows.to_arrow().num_rows == 30
    stats = codec.stats()
    assert (stats.number_hits, stats.number_misses) == (1, 1)
    assert (stats.name_hits, stats.name_misses) == (2, 2)


def test_notes_are_not_cached(source: Source, codec: NumberCodec, cipher: CountingCipher) -> None:
    decode(calls_request(call(note="same"), call(note="same"), call()), source, codec, NOW)
    assert cipher.encrypted.count("same") == 2


def test_number_errors_are_returned_not_logged(
    source: Source, codec: NumberCodec, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    decoded = decode(calls_request(call(number="555 12")), source, codec, NOW)
    assert decoded.errors[0][0] == 0
    assert "555 12" in decoded.errors[0][1]
    assert caplog.records == []


def test_bad_numbers_are_cached_too(
    source: Source, codec: NumberCodec, normalizations: list[str]
) -> None:
    request = calls_request(call(number="nope"), call(number="nope"))
    first = decode(request, source, codec, NOW)
    second = decode(request, source, codec, NOW)
    assert normalizations == ["nope"]
    assert [i for i, _ in first.errors] == [i for i, _ in second.errors] == [0, 1]


def test_codec_caches_stay_within_their_bound(
    source: Source, cipher: CountingCipher, normalizations: list[str]
) -> None:
    codec = NumberCodec(max_entries=5)
    numbers = [f"98765{i:05d}" for i in range(20)]
    request = calls_request(*[call(number=n, name=f"Name {n}") for n in numbers])
    decoded = decode(request, source, codec, NOW)

    stats = codec.stats()
    assert stats.normalized_entries <= 5
    assert stats.number_entries <= 5
    assert stats.name_entries <= 5
    # Results stay right even when a batch holds more distinct numbers than the caches.
    assert [source.keyring.decrypt(b) for b in column(decoded, "number_enc")] == [
        "+91" + n for n in numbers
    ]
    assert [source.keyring.decrypt(b) for b in column(decoded, "name_enc")] == [
        f"Name {n}" for n in numbers
    ]
    # The most recent entries survive: the last five numbers hit, the first ones are gone.
    normalizations.clear()
    decode(calls_request(*[call(number=n) for n in numbers[-5:]]), source, codec, NOW)
    assert normalizations == []
    decode(calls_request(call(number=numbers[0])), source, codec, NOW)
    assert normalizations == [numbers[0]]


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        NumberCodec(max_entries=0)


def test_codec_numbers_on_a_column(source: Source, codec: NumberCodec) -> None:
    enc, bidx, errors = codec.numbers(source, ["9876543210", "bad", "+919876543210", ""])
    assert errors == [(1, "'bad' is not a phone number"), (3, "empty number")]
    assert enc[1] == enc[3] == b""
    assert bidx[0] == bidx[2] == source.keyring.blind_index("+919876543210")
    assert bidx[1] == bytes(32)
    assert source.keyring.decrypt(enc[2]) == "+919876543210"


def test_no_plaintext_reaches_the_table(source: Source, codec: NumberCodec) -> None:
    request = calls_request(
        *[call(number=n, name="Ravi Kumar", note="promised a discount") for n in IN_SPELLINGS],
        *[call(number=n) for n in US_SPELLINGS],
    )
    decoded = decode(request, source, codec, NOW)
    assert decoded.rows.to_arrow().num_rows == len(IN_SPELLINGS) + len(US_SPELLINGS)
    blob = ipc_bytes(decoded.rows.to_arrow())
    assert b"device-1" in blob  # the search does see the table's bytes
    for needle in [b"9876543210", b"98765", b"43210", b"6502530000", b"2530000", b"253-0000"]:
        assert needle not in blob
    assert b"Ravi" not in blob
    assert b"discount" not in blob


# --- contacts -------------------------------------------------------------------------------


def test_contacts_rows(source: Source, codec: NumberCodec, cipher: CountingCipher) -> None:
    request = contacts_request(
        {
            "contact_id": "k1",
            "name": "Asha",
            "numbers": ["+91 98765 43210", "+1 650 253 0000"],
            "photo_uri": "content://p/1",
            "updated_at_ms": START,
        },
        {"contact_id": "k2", "numbers": ["9876543210", "not a number"], "updated_at_ms": 1},
        {"contact_id": "k3", "name": "No Numbers", "updated_at_ms": START + 1, "deleted": True},
        {"contact_id": "", "numbers": ["also bad"]},
    )
    decoded = decode(request, source, codec, NOW)

    assert decoded.table == "contacts"
    assert decoded.size == 4
    assert decoded.errors == [
        (1, "numbers[1]: 'not a number' is not a phone number"),
        (3, "contact_id is required"),
    ]
    assert decoded.rows.to_arrow().schema.equals(CONTACTS_SCHEMA)
    assert decoded.indices.tolist() == [0, 2]
    assert decoded.keys == ["k1", "k3"]
    assert decoded.versions.tolist() == [START, START + 1]
    assert column(decoded, "contact_id") == ["k1", "k3"]
    assert column(decoded, "tenant_id") == ["tenant-a"] * 2
    assert column(decoded, "device_id") == ["device-1"] * 2
    assert column(decoded, "photo_uri") == ["content://p/1", ""]
    assert column(decoded, "deleted") == [False, True]
    assert column(decoded, "version") == [START, START + 1]
    assert decoded.rows.to_arrow().column("synced_at").cast(pa.int64()).to_pylist() == [NOW, NOW]
    keyring = source.keyring
    assert [keyring.decrypt(b) for b in column(decoded, "name_enc")] == ["Asha", "No Numbers"]
    numbers_enc = column(decoded, "numbers_enc")
    assert [[keyring.decrypt(b) for b in blobs] for blobs in numbers_enc] == [
        ["+919876543210", "+16502530000"],
        [],
    ]
    assert column(decoded, "numbers_bidx") == [
        [cipher.blind_index("+919876543210"), cipher.blind_index("+16502530000")],
        [],
    ]
    blob = ipc_bytes(decoded.rows.to_arrow())
    assert b"98765" not in blob
    assert b"6502530000" not in blob


def test_a_deletion_gets_through_despite_a_garbled_number(
    source: Source, codec: NumberCodec
) -> None:
    request = contacts_request(
        {"contact_id": "k1", "numbers": ["not a number"], "updated_at_ms": 5, "deleted": True},
        {"contact_id": "k2", "numbers": ["not a number"], "updated_at_ms": 5},
    )
    decoded = decode(request, source, codec, NOW)
    assert column(decoded, "contact_id") == ["k1"]
    assert [i for i, _ in decoded.errors] == [1]


def test_contact_and_call_of_one_number_join_on_the_blind_index(
    source: Source, codec: NumberCodec
) -> None:
    contact = decode(
        contacts_request({"contact_id": "k", "numbers": ["098765 43210"]}), source, codec, NOW
    )
    calls = decode(calls_request(call(number="+91-98765-43210")), source, codec, NOW)
    assert column(contact, "numbers_bidx")[0] == column(calls, "number_bidx")


# --- telemetry ------------------------------------------------------------------------------


def test_telemetry_rows(source: Source, codec: NumberCodec) -> None:
    good = {
        "captured_at_ms": START,
        "battery_pct": 77,
        "charging": True,
        "latitude": 12.9716,
        "longitude": 77.5946,
        "accuracy_m": 8.5,
        "network": 2,
        "app_version": "3.2.1",
        "version_code": 321,
        "android_version": "14",
        "sdk_int": 34,
        "model": "Pixel 8",
        "fcm_id": "fcm-1",
        "sim_ids": ["s1", "s2"],
    }
    request = telemetry_request(
        good,
        {**good, "captured_at_ms": START + 1, "battery_pct": 150},
        {**good, "captured_at_ms": START + 2, "longitude": 200.0},
        {**good, "captured_at_ms": START + 3, "network": 5},
        {**good, "captured_at_ms": NOW + 2 * 86_400_000},
        {**good, "captured_at_ms": START + 4, "network": 0, "sim_ids": []},
    )
    decoded = decode(request, source, codec, NOW)

    assert decoded.table == "telemetry"
    assert decoded.size == 6
    assert decoded.errors == [
        (1, "battery_pct 150 is over 100"),
        (2, "longitude 200.0 is outside [-180, 180]"),
        (3, "network 5 is not a NetworkType (0-3)"),
        (4, f"captured_at_ms {NOW + 2 * 86_400_000} is more than a day in the future"),
    ]
    assert decoded.rows.to_arrow().schema.equals(TELEMETRY_SCHEMA)
    assert decoded.indices.tolist() == [0, 5]
    assert decoded.keys == [str(START), str(START + 4)]
    assert decoded.versions.tolist() == [0, 0]
    rows = decoded.rows.to_arrow().to_pylist()
    first = rows[0]
    assert first["tenant_id"] == "tenant-a"
    assert first["device_id"] == "device-1"
    assert first["battery_pct"] == 77
    assert first["charging"] is True
    # Coordinates are coarsened to 2 decimals (~1.1 km) before they are stored.
    assert first["latitude"] == 12.97
    assert first["longitude"] == 77.59
    assert first["accuracy_m"] == 8.5
    assert first["network"] == 2
    assert (first["app_version"], first["version_code"]) == ("3.2.1", 321)
    assert (first["android_version"], first["sdk_int"]) == ("14", 34)
    keyring = source.keyring
    assert first["model"] == "Pixel 8"
    assert keyring.decrypt(first["fcm_id_enc"]) == "fcm-1"
    assert [keyring.decrypt(b) for b in first["sim_ids_enc"]] == ["s1", "s2"]
    assert b"fcm-1" not in first["fcm_id_enc"]
    # A device's ids repeat in every sample: each distinct one is encrypted once (cached).
    assert rows[1]["fcm_id_enc"] == first["fcm_id_enc"]
    assert rows[1]["network"] == 0
    assert rows[1]["sim_ids_enc"] == []
    assert decoded.rows.to_arrow().column("captured_at").cast(pa.int64()).to_pylist() == [
        START,
        START + 4,
    ]
    assert decoded.rows.to_arrow().column("synced_at").cast(pa.int64()).to_pylist() == [NOW, NOW]


def test_warm_codec_gives_the_same_rows_as_a_cold_one(
    source: Source, cipher: CountingCipher
) -> None:
    numbers = ["9876543210", "+91 98765 43210", "12", "9876543211", "9876543210"]
    names = ["Asha", "", "Asha", "Ravi", "Ravi"]
    request = ingest_pb2.UploadRequest(seq=1, batch_id="b")
    for i, (number, name) in enumerate(zip(numbers, names, strict=True)):
        request.calls.records.add(
            call_id=f"c{i}", number=number, name=name, type=1, started_at_ms=NOW - 1_000
        )
    codec = NumberCodec()
    cold = decode(request, source, codec, NOW)
    warm = decode(request, source, codec, NOW)  # every lookup hits the caches now
    for out in (cold, warm):
        assert out.indices.tolist() == [0, 1, 3, 4]
        assert [i for i, _ in out.errors] == [2]
        table = out.rows.to_arrow()
        assert [cipher.decrypt(b) for b in table["number_enc"].to_pylist()] == [
            "+919876543210",
            "+919876543210",
            "+919876543211",
            "+919876543210",
        ]
        assert [cipher.decrypt(b) for b in table["name_enc"].to_pylist()] == [
            "Asha",
            "",
            "Ravi",
            "Ravi",
        ]
    assert warm.errors == cold.errors
    assert warm.rows.to_arrow()["number_bidx"] == cold.rows.to_arrow()["number_bidx"]
    assert warm.rows.to_arrow()["number_enc"] == cold.rows.to_arrow()["number_enc"]


def test_erased_rows_are_the_calls_and_contacts_holding_an_erased_number(
    source: Source, codec: NumberCodec, cipher: CountingCipher
) -> None:
    gone = cipher.blind_index("+919876543210")
    erased = {int.from_bytes(gone[:8], "little")}
    calls = decode(
        calls_request(call(), call(number="9123456789"), call(number="+91 98765 43210")),
        source,
        codec,
        NOW,
    )
    assert erased_rows(calls, erased).tolist() == [True, False, True]
    assert erased_rows(calls, set()).tolist() == [False, False, False]
    contacts = decode(
        contacts_request(
            {"contact_id": "k1", "numbers": ["9123456789", "09876543210"], "updated_at_ms": 1},
            {"contact_id": "k2", "numbers": ["9123456789"], "updated_at_ms": 1},
        ),
        source,
        codec,
        NOW,
    )
    assert erased_rows(contacts, erased).tolist() == [True, False]


# --- many uploads at once -------------------------------------------------------------------


def test_uploads_decoded_together_keep_their_senders_and_their_own_errors(
    cipher: CountingCipher, codec: NumberCodec
) -> None:
    keyring = Keyring(cipher)
    senders = [Source("tenant-a", f"device-{i}", f"employee-{i}", "IN", keyring) for i in range(3)]
    sample = {"captured_at_ms": START, "battery_pct": 50, "network": 1}
    uploads = [
        (calls_request(call(), call(type=99), call()), senders[0]),
        (telemetry_request(sample, sample), senders[1]),
        (ingest_pb2.UploadRequest(seq=1), senders[2]),  # no payload: refused whole
        (calls_request(call(number="x"), call()), senders[2]),
        (telemetry_request({**sample, "battery_pct": 101}, sample), senders[0]),
    ]
    first, second, refused, third, fourth = decode_many(uploads, codec, NOW)
    assert isinstance(refused, BatchRejected)
    assert isinstance(first, Decoded) and isinstance(third, Decoded)
    assert isinstance(second, Decoded) and isinstance(fourth, Decoded)
    assert (first.size, first.indices.tolist(), first.keys) == (3, [0, 2], ["c0", "c2"])
    assert first.errors == [(1, "type 99 is not a CallType (1-7)")]
    assert column(first, "device_id") == ["device-0"] * 2
    assert column(first, "employee_id") == ["employee-0"] * 2
    assert (third.indices.tolist(), [i for i, _ in third.errors]) == ([1], [0])
    assert column(third, "device_id") == ["device-2"]
    assert column(third, "employee_id") == ["employee-2"]
    assert column(second, "device_id") == ["device-1"] * 2
    assert fourth.errors == [(0, "battery_pct 101 is over 100")]
    assert column(fourth, "device_id") == ["device-0"]
