"""Properties of decode and validation over hostile input (hypothesis).

Whatever a device sends, the ingest path either refuses the batch whole (``BatchRejected``) or
accounts for every record exactly once: a row for each valid record and a reason for each
rejected one, never an exception and never a row that is half there.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import Decoded, NumberCodec, Source, decode, decode_many
from callsight.pipeline.validate import BatchRejected
from callsight.v1 import common_pb2, ingest_pb2

NOW = int(time.time() * 1000)
SOURCE = Source(
    "tenant-a", "device-1", "employee-1", "IN", Keyring(TenantCipher(1, new_data_key()))
)
CODEC = NumberCodec()

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
# Digits of other scripts (Arabic-Indic, fullwidth, Devanagari), controls, separators, emoji.
ODD = "٠١٢٣٤٥٦٧٨٩０１２３４５６７８９१२३४५\x00\x07\x1b\u200b\u202e\ufeff +-()#*.,/😀"
TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(ODD), max_size=40)
NUMBERS = st.one_of(
    st.text(alphabet="0123456789+ -()" + ODD, max_size=24),
    st.sampled_from(["+919876543210", "09876543210", "9876543210", "", "+", "00", "*#06#"]),
)
# Near "now", at the edges of the valid window, and at the integers' own limits.
TIMES = st.one_of(
    st.integers(NOW - 400 * 86_400_000, NOW + 2 * 86_400_000),
    st.sampled_from([0, 1, -1, 946_684_800_000, NOW + 86_400_000, 2**63 - 1, -(2**63)]),
)


@st.composite
def call_records(draw: st.DrawFn) -> ingest_pb2.CallRecord:
    return ingest_pb2.CallRecord(
        # A small id space: duplicate ids with different versions land in one batch.
        call_id=draw(st.one_of(st.sampled_from(["c1", "c2", "c3", ""]), TEXT)),
        number=draw(NUMBERS),
        name=draw(TEXT),
        # Unknown enum values too: proto3 enums are open.
        type=common_pb2.CallType.ValueType(draw(st.one_of(st.integers(0, 6), INT32))),
        started_at_ms=draw(TIMES),
        duration_s=draw(st.one_of(st.integers(0, 7200), UINT32)),
        sim_slot=draw(st.one_of(st.integers(-1, 2), INT32)),
        sim_id=draw(TEXT),
        note=draw(TEXT),
        recording_uri=draw(TEXT),
        updated_at_ms=draw(st.one_of(st.just(0), TIMES)),
    )


@st.composite
def contact_records(draw: st.DrawFn) -> ingest_pb2.Contact:
    return ingest_pb2.Contact(
        contact_id=draw(st.one_of(st.sampled_from(["k1", "k2", ""]), TEXT)),
        name=draw(TEXT),
        numbers=draw(st.lists(NUMBERS, max_size=4)),
        updated_at_ms=draw(TIMES),
        deleted=draw(st.booleans()),
    )


@st.composite
def telemetry_records(draw: st.DrawFn) -> ingest_pb2.Telemetry:
    return ingest_pb2.Telemetry(
        captured_at_ms=draw(TIMES),
        battery_pct=draw(st.one_of(st.integers(0, 100), UINT32)),
        latitude=draw(st.floats(allow_nan=True, allow_infinity=True)),
        longitude=draw(st.floats(allow_nan=True, allow_infinity=True)),
        accuracy_m=draw(st.floats(width=32, allow_nan=True, allow_infinity=True)),
        network=ingest_pb2.NetworkType.ValueType(draw(st.one_of(st.integers(0, 5), INT32))),
        model=draw(TEXT),
        sim_ids=draw(st.lists(TEXT, max_size=3)),
    )


@st.composite
def uploads(draw: st.DrawFn) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=draw(st.integers(0, 2**64 - 1)), batch_id=draw(TEXT))
    kind = draw(st.sampled_from(["calls", "contacts", "telemetry"]))
    records: st.SearchStrategy[Any] = {
        "calls": call_records(),
        "contacts": contact_records(),
        "telemetry": telemetry_records(),
    }[kind]
    getattr(request, kind).records.extend(draw(st.lists(records, max_size=12)))
    return request


def check_accounted(decoded: Decoded) -> None:
    """Every record of the request is a row or a rejection, exactly once."""
    rows = decoded.rows.num_rows
    rejected = [i for i, _ in decoded.errors]
    assert rows + len(rejected) == decoded.size
    assert rejected == sorted(set(rejected))
    assert sorted([*decoded.indices.tolist(), *rejected]) == list(range(decoded.size))
    assert len(decoded.keys) == rows == len(decoded.versions)
    assert all(reason for _, reason in decoded.errors)
    table = decoded.rows.to_arrow()  # every column has the table's type, no half rows
    assert table.num_rows == rows


def decode_or_refuse(request: ingest_pb2.UploadRequest) -> None:
    try:
        decoded = decode(request, SOURCE, CODEC, NOW)
    except BatchRejected as refused:
        assert str(refused)
        return
    check_accounted(decoded)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(uploads())
def test_every_record_is_a_row_or_a_rejection(request: ingest_pb2.UploadRequest) -> None:
    decode_or_refuse(request)


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_fail_to_parse_or_decode_cleanly(data: bytes) -> None:
    try:
        request = ingest_pb2.UploadRequest.FromString(data)
    except DecodeError:
        return  # the server answers this with a REJECTED ack (tests/integration/test_ingest.py)
    decode_or_refuse(request)


@FAST
@given(uploads(), st.data())
def test_truncated_batches_fail_to_parse_or_decode_cleanly(
    request: ingest_pb2.UploadRequest, data: st.DataObject
) -> None:
    wire = request.SerializeToString()
    cut = data.draw(st.integers(0, len(wire)))
    try:
        truncated = ingest_pb2.UploadRequest.FromString(wire[:cut])
    except DecodeError:
        return
    decode_or_refuse(truncated)


@FAST
@given(st.lists(call_records(), min_size=2, max_size=12))
def test_duplicate_ids_in_one_batch_each_keep_their_version(
    records: list[ingest_pb2.CallRecord],
) -> None:
    for record in records:
        record.call_id = "same"
    request = ingest_pb2.UploadRequest(
        seq=1, batch_id="b", calls=ingest_pb2.CallLogBatch(records=records)
    )
    try:
        decoded = decode(request, SOURCE, CODEC, NOW)
    except BatchRejected:
        return
    check_accounted(decoded)
    # Dedup (not decode) picks the newest of them: decode keeps each valid record's own version.
    for row, index in enumerate(decoded.indices.tolist()):
        record = records[index]
        assert decoded.keys[row] == "same"
        assert int(decoded.versions[row]) == (record.updated_at_ms or record.started_at_ms)


# Senders of uploads decoded together: two devices of one tenant and region (one group), one in
# another region and one of another tenant (groups of their own).
_KEYRING = SOURCE.keyring
SENDERS = [
    SOURCE,
    Source("tenant-a", "device-2", "employee-2", "IN", _KEYRING),
    Source("tenant-a", "device-3", "employee-3", "US", _KEYRING),
    Source("tenant-b", "device-4", "employee-4", "IN", Keyring(TenantCipher(2, new_data_key()))),
]


def _plain(decoded: Decoded, keyring: dict[str, Keyring]) -> list[dict[str, Any]]:
    """The rows with every ciphertext decrypted (fresh encryptions differ in their nonces)."""
    rows = decoded.rows.to_arrow().to_pylist()
    for row in rows:
        ring = keyring[row["tenant_id"]]
        for name, value in row.items():
            if name.endswith("_enc"):
                row[name] = (
                    [ring.decrypt(v) for v in value]
                    if isinstance(value, list)
                    else ring.decrypt(value)
                )
    return rows


@FAST
@given(st.lists(st.tuples(uploads(), st.integers(0, len(SENDERS) - 1)), max_size=8))
def test_decoding_many_uploads_together_is_decoding_each_alone(
    jobs: list[tuple[ingest_pb2.UploadRequest, int]],
) -> None:
    keyrings = {source.tenant_id: source.keyring for source in SENDERS}
    together = decode_many([(request, SENDERS[s]) for request, s in jobs], CODEC, NOW)
    assert len(together) == len(jobs)
    for (request, s), result in zip(jobs, together, strict=True):
        try:
            alone = decode(request, SENDERS[s], CODEC, NOW)
        except BatchRejected as refused:
            assert isinstance(result, BatchRejected) and str(result) == str(refused)
            continue
        assert isinstance(result, Decoded)
        check_accounted(result)
        assert (result.table, result.size, result.errors) == (alone.table, alone.size, alone.errors)
        assert result.indices.tolist() == alone.indices.tolist()
        assert result.keys == alone.keys
        assert result.versions.tolist() == alone.versions.tolist()
        assert _plain(result, keyrings) == _plain(alone, keyrings)
