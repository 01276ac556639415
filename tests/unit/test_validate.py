from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from callsight.core.errors import InvalidArgument
from callsight.pipeline import validate
from callsight.pipeline.validate import (
    MAX_BATCH_BYTES,
    MAX_RECORDS,
    BatchRejected,
    check_batch,
    validate_calls,
    validate_contacts,
    validate_telemetry,
)
from callsight.v1 import ingest_pb2

NOW = 1_700_000_000_000
Y2K = 946_684_800_000
DAY = 86_400_000
INT64_MAX = 2**63 - 1
# Four bytes in UTF-8 each: a string of these is four times as long on the wire as in len().
EMOJI = "\N{GRINNING FACE}"


def call(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "number": "+919876543210",
        "type": 1,
        "started_at_ms": NOW - 60_000,
        "duration_s": 30,
    }
    record.update(fields)
    return record


def calls_request(*records: dict[str, Any]) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=1, batch_id="b1")
    for i, record in enumerate(records):
        request.calls.records.add(**{"call_id": f"c{i}", **record})
    return request


def calls_batch(*records: dict[str, Any]) -> ingest_pb2.CallLogBatch:
    return calls_request(*records).calls


def sample(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "captured_at_ms": NOW - 1000,
        "battery_pct": 80,
        "latitude": 12.97,
        "longitude": 77.59,
        "network": 1,
    }
    record.update(fields)
    return record


def telemetry_batch(*records: dict[str, Any]) -> ingest_pb2.TelemetryBatch:
    batch = ingest_pb2.TelemetryBatch()
    for record in records:
        batch.records.add(**record)
    return batch


# --- whole-batch limits -------------------------------------------------------------------


def test_limits_are_the_documented_ones() -> None:
    assert MAX_RECORDS == 10_000
    assert MAX_BATCH_BYTES == 4 * 1024 * 1024


def test_no_payload_is_rejected() -> None:
    with pytest.raises(BatchRejected) as info:
        check_batch(ingest_pb2.UploadRequest(seq=1, batch_id="b"))
    assert str(info.value) == "UploadRequest has no payload: set calls, contacts or telemetry"
    assert isinstance(info.value, InvalidArgument)


def test_too_many_records_is_rejected() -> None:
    request = ingest_pb2.UploadRequest()
    for i in range(MAX_RECORDS + 1):
        request.calls.records.add(call_id=str(i))
    with pytest.raises(BatchRejected, match=r"^batch has 10001 records; the limit is 10000 per"):
        check_batch(request)


def test_exactly_the_record_limit_is_fine() -> None:
    request = ingest_pb2.UploadRequest()
    for i in range(MAX_RECORDS):
        request.telemetry.records.add(captured_at_ms=i)
    assert check_batch(request) == "telemetry"


def test_too_many_bytes_is_rejected() -> None:
    request = calls_request(call(note="x" * MAX_BATCH_BYTES))
    size = request.ByteSize()
    with pytest.raises(BatchRejected) as info:
        check_batch(request)
    assert str(info.value).startswith(f"batch is {size} bytes; the limit is 4194304")


@pytest.mark.parametrize("kind", ["calls", "contacts", "telemetry"])
def test_payload_kind(kind: str) -> None:
    request = ingest_pb2.UploadRequest()
    getattr(request, kind).SetInParent()  # an empty batch is a payload too
    assert check_batch(request) == kind


# --- calls ----------------------------------------------------------------------------------


def test_valid_calls_become_columns() -> None:
    batch = calls_batch(
        call(number="98765 43210", name="Ravi", type=2, duration_s=5, sim_slot=1, sim_id="s1"),
        call(note="n", recording_uri="r", updated_at_ms=NOW),
    )
    result = validate_calls(batch, NOW)
    cols = result.columns
    assert result.errors == []
    assert result.valid.tolist() == [True, True]
    assert result.size == 2
    assert cols.call_id == ["c0", "c1"]
    assert cols.number == ["98765 43210", "+919876543210"]
    assert cols.name == ["Ravi", ""]
    assert cols.type.tolist() == [2, 1]
    assert cols.duration_s.tolist() == [5, 30]
    assert cols.sim_slot.tolist() == [1, 0]
    assert cols.sim_id == ["s1", ""]
    assert cols.note == ["", "n"]
    assert cols.recording_uri == ["", "r"]
    assert cols.updated_at_ms.tolist() == [0, NOW]
    assert cols.started_at_ms.dtype == np.int64


CALL_REJECTS: list[tuple[dict[str, Any], str]] = [
    ({"call_id": ""}, "call_id is required"),
    ({"call_id": "x" * 129}, "call_id is 129 bytes (UTF-8); the limit is 128"),
    ({"call_id": EMOJI * 33}, "call_id is 132 bytes (UTF-8); the limit is 128"),
    ({"presentation": 5}, "presentation 5 is not a NumberPresentation (0-4)"),
    ({"presentation": -1}, "presentation -1 is not a NumberPresentation (0-4)"),
    ({"method": 4}, "method 4 is not a CallMethod (0-3)"),
    ({"method": -2}, "method -2 is not a CallMethod (0-3)"),
    ({"mode": 3}, "mode 3 is not a CallMode (0-2)"),
    ({"type": 0}, "type 0 is not a CallType (1-7)"),
    ({"type": 8}, "type 8 is not a CallType (1-7)"),
    ({"type": -3}, "type -3 is not a CallType (1-7)"),
    ({"duration_s": 90_000}, "duration_s 90000 is over 86400 (24 h)"),
    ({"started_at_ms": Y2K - 1}, "started_at_ms 946684799999 is before 2000-01-01"),
    ({"started_at_ms": 0}, "started_at_ms 0 is before 2000-01-01"),
    ({"started_at_ms": -5}, "started_at_ms -5 is before 2000-01-01"),
    (
        {"started_at_ms": NOW + DAY + 1},
        f"started_at_ms {NOW + DAY + 1} is more than a day in the future",
    ),
    ({"updated_at_ms": -1}, "updated_at_ms -1 is before 2000-01-01"),
    ({"updated_at_ms": 5}, "updated_at_ms 5 is before 2000-01-01"),
    (
        {"updated_at_ms": INT64_MAX},
        f"updated_at_ms {INT64_MAX} is more than a day in the future",
    ),
    (
        {"updated_at_ms": NOW + DAY + 1},
        f"updated_at_ms {NOW + DAY + 1} is more than a day in the future",
    ),
    ({"name": "n" * 257}, "name is 257 bytes (UTF-8); the limit is 256"),
    ({"name": EMOJI * 65}, "name is 260 bytes (UTF-8); the limit is 256"),
    ({"sim_id": "s" * 100_000}, "sim_id is 100000 bytes (UTF-8); the limit is 128"),
    ({"note": "x" * 1_500_000}, "note is 1500000 bytes (UTF-8); the limit is 2048"),
    ({"note": "\u00e9" * 1025}, "note is 2050 bytes (UTF-8); the limit is 2048"),
    ({"recording_uri": "u" * 1025}, "recording_uri is 1025 bytes (UTF-8); the limit is 1024"),
]


@pytest.mark.parametrize(("fields", "reason"), CALL_REJECTS)
def test_each_call_rule_rejects_with_its_index(fields: dict[str, Any], reason: str) -> None:
    batch = calls_batch(call(), call(), call(**fields), call())
    result = validate_calls(batch, NOW)
    assert result.errors == [(2, reason)]
    assert result.valid.tolist() == [True, True, False, True]


CALL_BOUNDARIES: list[dict[str, Any]] = [
    {"call_id": "x" * 128},
    {"type": 7},
    {"duration_s": 86_400},
    {"duration_s": 0},
    {"started_at_ms": Y2K},
    {"started_at_ms": NOW + DAY},
    {"updated_at_ms": 0},
    {"updated_at_ms": Y2K},
    {"updated_at_ms": NOW + DAY},
    {"sim_slot": -1},
    {"name": "n" * 256},
    {"name": EMOJI * 64},
    {"sim_id": "s" * 128},
    {"note": "x" * 2048},
    {"note": "\u00e9" * 1024},
    {"note": EMOJI * 512},
    {"recording_uri": "u" * 1024},
    {"number": ""},
    {"number": "-2"},
    {"presentation": 4},
    {"method": 3},
    {"mode": 2},
]


@pytest.mark.parametrize("fields", CALL_BOUNDARIES)
def test_boundaries_are_accepted(fields: dict[str, Any]) -> None:
    assert validate_calls(calls_batch(call(**fields)), NOW).errors == []


def test_one_reason_per_record_first_rule_wins() -> None:
    batch = calls_batch(call(call_id="", type=0, duration_s=100_000, updated_at_ms=-1))
    assert validate_calls(batch, NOW).errors == [(0, "call_id is required")]


def test_errors_are_sorted_by_index() -> None:
    batch = calls_batch(
        call(updated_at_ms=-1), call(), call(type=9), call(call_id=""), call(duration_s=99_999)
    )
    result = validate_calls(batch, NOW)
    assert result.errors == [
        (0, "updated_at_ms -1 is before 2000-01-01"),
        (2, "type 9 is not a CallType (1-7)"),
        (3, "call_id is required"),
        (4, "duration_s 99999 is over 86400 (24 h)"),
    ]
    assert result.valid.tolist() == [False, True, False, False, False]


# (number, presentation sent) -> presentation stored; 1 ALLOWED, 2 RESTRICTED, 3 UNKNOWN,
# 4 PAYPHONE. Android logs a hidden caller with "" or "-1", "-2", "-3" as the number.
PRESENTATIONS = [
    ("+919876543210", 0, 1),
    ("+919876543210", 1, 1),
    ("", 0, 3),
    ("-1", 0, 3),
    ("-2", 0, 2),
    ("-3", 0, 4),
    ("", 2, 2),
    ("-2", 1, 2),  # a special number is never a shown one, whatever the phone says
    ("", 1, 3),
    ("+919876543210", 2, 2),  # the caller withheld it: the number is not kept
    ("+919876543210", 3, 3),
    ("+919876543210", 4, 4),
    ("-4", 0, 1),  # not one of Android's: a number, which the codec will judge
]


def test_presentation_is_read_from_the_number_and_the_flag() -> None:
    batch = calls_batch(*(call(number=n, presentation=p) for n, p, _ in PRESENTATIONS))
    result = validate_calls(batch, NOW)
    assert result.errors == []
    assert result.columns.presentation.tolist() == [stored for _, _, stored in PRESENTATIONS]
    assert result.columns.hidden.tolist() == [stored != 1 for _, _, stored in PRESENTATIONS]


def test_a_batch_without_hidden_numbers_is_all_shown() -> None:
    result = validate_calls(calls_batch(call(), call(number="98765 43210")), NOW)
    assert result.columns.presentation.tolist() == [1, 1]
    assert not result.columns.hidden.any()


def test_method_and_mode_default_to_phone_and_voice() -> None:
    batch = calls_batch(call(), call(method=2, mode=2), call(method=3, mode=1), call(method=1))
    cols = validate_calls(batch, NOW).columns
    assert cols.method.tolist() == [1, 2, 3, 1]
    assert cols.mode.tolist() == [1, 2, 1, 1]


def test_empty_call_batch() -> None:
    result = validate_calls(ingest_pb2.CallLogBatch(), NOW)
    assert result.size == 0
    assert result.errors == []
    assert result.columns.call_id == []


# --- contacts -------------------------------------------------------------------------------


def test_contact_rules() -> None:
    batch = ingest_pb2.ContactBatch()
    batch.records.add(contact_id="a", name="Ravi", numbers=["1", "2"], updated_at_ms=5)
    batch.records.add(contact_id="", updated_at_ms=5)
    batch.records.add(contact_id="y" * 129)
    batch.records.add(contact_id="d", updated_at_ms=-7)
    batch.records.add(contact_id="e", deleted=True)
    result = validate_contacts(batch, NOW)
    assert result.errors == [
        (1, "contact_id is required"),
        (2, "contact_id is 129 bytes (UTF-8); the limit is 128"),
        (3, "updated_at_ms -7 is negative"),
    ]
    assert result.valid.tolist() == [True, False, False, False, True]
    cols = result.columns
    assert cols.contact_id[0] == "a"
    assert cols.numbers == [["1", "2"], [], [], [], []]
    assert cols.deleted.tolist() == [False, False, False, False, True]
    assert cols.updated_at_ms.tolist() == [5, 5, 0, -7, 0]


# --- telemetry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"captured_at_ms": Y2K - 1}, "captured_at_ms 946684799999 is before 2000-01-01"),
        (
            {"captured_at_ms": NOW + DAY + 1},
            f"captured_at_ms {NOW + DAY + 1} is more than a day in the future",
        ),
        ({"battery_pct": 101}, "battery_pct 101 is over 100"),
        ({"latitude": 90.5}, "latitude 90.5 is outside [-90, 90]"),
        ({"latitude": -91.0}, "latitude -91.0 is outside [-90, 90]"),
        ({"latitude": float("nan")}, "latitude nan is outside [-90, 90]"),
        ({"longitude": 180.25}, "longitude 180.25 is outside [-180, 180]"),
        ({"longitude": float("-inf")}, "longitude -inf is outside [-180, 180]"),
        ({"network": 4}, "network 4 is not a NetworkType (0-3)"),
        ({"network": -1}, "network -1 is not a NetworkType (0-3)"),
    ],
)
def test_each_telemetry_rule_rejects_with_its_index(fields: dict[str, Any], reason: str) -> None:
    batch = telemetry_batch(sample(), sample(**fields), sample())
    result = validate_telemetry(batch, NOW)
    assert result.errors == [(1, reason)]
    assert result.valid.tolist() == [True, False, True]


@pytest.mark.parametrize(
    "fields",
    [
        {"captured_at_ms": Y2K},
        {"captured_at_ms": NOW + DAY},
        {"battery_pct": 100},
        {"battery_pct": 0},
        {"latitude": 90.0, "longitude": -180.0},
        {"latitude": -90.0, "longitude": 180.0},
        {"network": 0},
        {"network": 3},
    ],
)
def test_telemetry_boundaries_are_accepted(fields: dict[str, Any]) -> None:
    assert validate_telemetry(telemetry_batch(sample(**fields)), NOW).errors == []


def test_telemetry_columns() -> None:
    batch = telemetry_batch(
        sample(
            charging=True,
            accuracy_m=12.5,
            app_version="3.2.1",
            version_code=321,
            android_version="14",
            sdk_int=34,
            model="Pixel 8",
            fcm_id="f",
            sim_ids=["s1", "s2"],
        )
    )
    result = validate_telemetry(batch, NOW)
    cols = result.columns
    assert result.errors == []
    assert cols.captured_at_ms.tolist() == [NOW - 1000]
    assert cols.charging.tolist() == [True]
    assert cols.accuracy_m.tolist() == [12.5]
    assert cols.latitude.tolist() == [12.97]
    assert cols.network.tolist() == [1]
    assert cols.sim_ids == [["s1", "s2"]]
    assert (cols.model, cols.version_code.tolist(), cols.sdk_int.tolist()) == (
        ["Pixel 8"],
        [321],
        [34],
    )


def test_clean_call_batch_is_all_valid() -> None:
    validated = validate_calls(calls_batch(*(call() for _ in range(5))), NOW)
    assert validated.valid.tolist() == [True] * 5
    assert validated.errors == []
    assert validated.columns.call_id == [f"c{i}" for i in range(5)]


def test_one_bad_call_among_many_keeps_its_index_and_reason() -> None:
    records = [call() for _ in range(50)]
    records[17] = call(duration_s=86_401)
    validated = validate_calls(calls_batch(*records), NOW)
    assert validated.errors == [(17, "duration_s 86401 is over 86400 (24 h)")]
    assert np.flatnonzero(~validated.valid).tolist() == [17]


# --- size caps and the fast path ------------------------------------------------------------


def _call_columns(*records: dict[str, Any]) -> validate.CallColumns:
    return validate_calls(calls_batch(*records), NOW).columns


@pytest.mark.parametrize("fields", [fields for fields, _ in CALL_REJECTS] + CALL_BOUNDARIES + [{}])
def test_fast_path_and_slow_path_agree(fields: dict[str, Any]) -> None:
    cols = _call_columns(call(), call(**fields))
    clean = validate._calls_look_clean(cols, NOW)
    slow = validate._call_rules(cols, NOW)
    assert clean == (slow.errors == []), (fields, slow.errors)


def test_fast_path_agrees_when_only_utf8_bytes_break_a_cap() -> None:
    # 600 characters is under 2,048 in len() but 2,400 bytes on the wire.
    cols = _call_columns(call(note=EMOJI * 600), call(note="x" * 600))
    assert not validate._calls_look_clean(cols, NOW)
    assert validate._call_rules(cols, NOW).errors == [
        (0, "note is 2400 bytes (UTF-8); the limit is 2048")
    ]


def test_oversized_batch_id_refuses_the_batch() -> None:
    request = calls_request(call())
    request.batch_id = "b" * 129
    with pytest.raises(BatchRejected, match=r"^batch_id is 129 bytes \(UTF-8\); the limit is 128$"):
        check_batch(request)
    request.batch_id = "b" * 128
    assert check_batch(request) == "calls"


def test_contact_caps() -> None:
    batch = ingest_pb2.ContactBatch()
    batch.records.add(contact_id="ok", name="n" * 256, numbers=["1"] * 32, photo_uri="u" * 1024)
    batch.records.add(contact_id="a", name="n" * 1_000_000)
    batch.records.add(contact_id="b", numbers=["+919876543210"] * 10_000)
    batch.records.add(contact_id="c", photo_uri="u" * 1025)
    batch.records.add(contact_id="d", updated_at_ms=INT64_MAX)
    batch.records.add(contact_id="e", updated_at_ms=NOW + DAY)
    result = validate_contacts(batch, NOW)
    assert result.errors == [
        (1, "name is 1000000 bytes (UTF-8); the limit is 256"),
        (2, "numbers has 10000 entries; the limit is 32"),
        (3, "photo_uri is 1025 bytes (UTF-8); the limit is 1024"),
        (4, f"updated_at_ms {INT64_MAX} is more than a day in the future"),
    ]


def test_contacts_without_a_clock_use_the_system_clock() -> None:
    batch = ingest_pb2.ContactBatch()
    batch.records.add(contact_id="a", updated_at_ms=INT64_MAX)
    batch.records.add(contact_id="b", updated_at_ms=1)
    assert [i for i, _ in validate_contacts(batch).errors] == [0]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": "m" * 100_000}, "model is 100000 bytes (UTF-8); the limit is 128"),
        ({"app_version": "v" * 129}, "app_version is 129 bytes (UTF-8); the limit is 128"),
        ({"android_version": "a" * 129}, "android_version is 129 bytes (UTF-8); the limit is 128"),
        ({"fcm_id": "f" * 513}, "fcm_id is 513 bytes (UTF-8); the limit is 512"),
        ({"sim_ids": ["s"] * 9}, "sim_ids has 9 entries; the limit is 8"),
        ({"sim_ids": ["s", "s" * 129]}, "sim_ids[1] is 129 bytes (UTF-8); the limit is 128"),
        (
            {"captured_at_ms": INT64_MAX},
            f"captured_at_ms {INT64_MAX} is more than a day in the future",
        ),
    ],
)
def test_telemetry_caps(fields: dict[str, Any], reason: str) -> None:
    batch = telemetry_batch(sample(), sample(**fields))
    assert validate_telemetry(batch, NOW).errors == [(1, reason)]


def test_telemetry_at_its_caps_is_accepted() -> None:
    at_caps = sample(
        model="m" * 128,
        app_version="v" * 128,
        android_version="a" * 128,
        fcm_id="f" * 512,
        sim_ids=["s" * 128] * 8,
    )
    assert validate_telemetry(telemetry_batch(at_caps), NOW).errors == []


TELEMETRY_REJECTS = [
    {"captured_at_ms": Y2K - 1},
    {"captured_at_ms": NOW + DAY + 1},
    {"battery_pct": 101},
    {"latitude": 90.5},
    {"latitude": float("nan")},
    {"longitude": float("-inf")},
    {"network": 4},
    {"network": -1},
    {"model": "m" * 129},
    {"app_version": EMOJI * 40},  # 40 characters, 160 bytes
    {"android_version": "a" * 129},
    {"fcm_id": "f" * 513},
    {"sim_ids": ["s"] * 9},
    {"sim_ids": ["s", EMOJI * 33]},
]
TELEMETRY_BOUNDARIES = [
    {"captured_at_ms": Y2K},
    {"captured_at_ms": NOW + DAY},
    {"battery_pct": 100},
    {"latitude": -90.0, "longitude": 180.0},
    {"network": 3},
    {"model": "m" * 128, "fcm_id": EMOJI * 128, "sim_ids": ["s" * 128] * 8},
]


@pytest.mark.parametrize("fields", [*TELEMETRY_REJECTS, *TELEMETRY_BOUNDARIES, {}])
def test_telemetry_fast_path_and_slow_path_agree(fields: dict[str, Any]) -> None:
    cols = validate_telemetry(telemetry_batch(sample(), sample(**fields)), NOW).columns
    clean = validate._telemetry_looks_clean(cols, NOW)
    slow = validate._telemetry_rules(cols, NOW)
    assert clean == (slow.errors == []), (fields, slow.errors)
    assert clean == (fields not in TELEMETRY_REJECTS)
