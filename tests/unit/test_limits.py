"""The caps of pipeline/limits.py, the time-zone rule, and the CallHistory page budget."""

from __future__ import annotations

import pytest

from callsight.core.errors import InvalidArgument
from callsight.pipeline import limits
from callsight.pipeline.limits import (
    MAX_ID_BYTES,
    MAX_NAME_BYTES,
    MAX_NOTE_BYTES,
    MAX_URI_BYTES,
    check_count,
    check_text,
    quote,
    tag_problems,
    text_problem,
)
from callsight.pipeline.paging import MAX_PAGE_SIZE
from callsight.pipeline.phone import timezones, valid_region, valid_timezone
from callsight.v1 import common_pb2, report_pb2

GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
EMOJI = "\N{GRINNING FACE}"


# --- time zones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Asia/Kolkata", "America/New_York", "America/Argentina/Buenos_Aires", "UTC", "Etc/GMT+5"],
)
def test_iana_zones_are_accepted(name: str) -> None:
    assert valid_timezone(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Factory",  # a "zone" whose abbreviation is "-00": not a place
        "posixrules",
        "localtime",  # the host's own zone, whatever that is
        "EST",
        "GMT",
        "Japan",
        "",
        "Mars/Base",
        "asia/kolkata",
        "Asia/Kolkata ",
        "../../etc/passwd",
        "posix/Asia/Kolkata",
        "right/UTC",
        "Asia/Kolkata\x00",
        "A" * 5000,
        "Asia/" + "x" * 10_000,
    ],
)
def test_non_zones_are_refused_with_a_short_message(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        valid_timezone(name)
    message = str(info.value)
    assert 'such as "Asia/Kolkata"' in message
    assert len(message) < 200
    assert name not in timezones()


def test_huge_timezone_is_quoted_cut_short() -> None:
    with pytest.raises(InvalidArgument) as info:
        valid_timezone("A" * 5000, "filter.timezone")
    message = str(info.value)
    assert message.startswith(f"filter.timezone {'A' * 64!r}... (5000 characters) is not")


def test_zone_set_is_read_once_and_is_area_location_or_utc() -> None:
    zones = timezones()
    assert zones is timezones()
    assert len(zones) > 300
    assert all("/" in z or z == "UTC" for z in zones)
    assert {"Factory", "posixrules", "localtime"}.isdisjoint(zones)
    assert max(map(len, zones)) <= limits.MAX_TIMEZONE_BYTES


def test_region_echo_is_cut_short() -> None:
    with pytest.raises(InvalidArgument) as info:
        valid_region("X" * 5000, "default_region")
    assert len(str(info.value)) < 200


# --- text and count caps ----------------------------------------------------------------------


def test_text_caps_count_utf8_bytes() -> None:
    assert text_problem("x" * MAX_NAME_BYTES, "name", MAX_NAME_BYTES) is None
    assert text_problem(EMOJI * (MAX_NAME_BYTES // 4), "name", MAX_NAME_BYTES) is None
    assert (
        text_problem(EMOJI * (MAX_NAME_BYTES // 4 + 1), "name", MAX_NAME_BYTES)
        == "name is 260 bytes (UTF-8); the limit is 256"
    )
    with pytest.raises(InvalidArgument, match=r"^name is 1000000 bytes \(UTF-8\); the limit"):
        check_text("n" * 1_000_000, "name", MAX_NAME_BYTES)


def test_count_and_tag_caps() -> None:
    with pytest.raises(InvalidArgument, match=r"^tags has 50000 entries; the limit is 64$"):
        check_count(["t"] * 50_000, "tags", limits.MAX_TAGS)
    assert tag_problems(["t"] * 50_000, "tags") == ["tags has 50000 entries; the limit is 64"]
    assert tag_problems(["ok", "t" * 65], "tags") == [
        "tags[1] is 65 bytes (UTF-8); the limit is 64"
    ]
    many = tag_problems(["t" * 65] * 10, "tags")
    assert many[-1] == "and 7 more tags" and len(many) == 4


def test_quote_cuts_long_values() -> None:
    assert quote("abc") == "'abc'"
    assert quote("z" * 1000) == repr("z" * 64) + "... (1000 characters)"


# --- CallHistory page budget ------------------------------------------------------------------


def test_a_full_call_history_page_at_every_cap_fits_the_default_client_limit() -> None:
    # Each field at its cap and each integer at its widest varint: the largest page there is.
    widest = -1  # a negative int64 takes ten bytes
    entry = report_pb2.CallHistoryEntry(
        call_id="c" * MAX_ID_BYTES,
        device_id="d" * 40,  # ours: a public id, shorter than this
        employee_id="e" * 36,  # a UUID
        number="+" + "9" * 15,  # E.164: at most 15 digits
        name="n" * MAX_NAME_BYTES,
        type=common_pb2.CALL_TYPE_ANSWERED_EXTERNALLY,
        started_at_ms=widest,
        duration_s=2**32 - 1,
        note="x" * MAX_NOTE_BYTES,
        recording_uri="u" * MAX_URI_BYTES,
        synced_at_ms=widest,
        lead_id="l" * 36,
    )
    page = report_pb2.CallHistoryResponse(
        calls=[entry] * MAX_PAGE_SIZE, next_page_token="t" * limits.MAX_PAGE_TOKEN_BYTES
    )
    assert page.ByteSize() < GRPC_DEFAULT_MAX_RECEIVE
    # The arithmetic of MAX_NOTE_BYTES's comment: 3,637 bytes a call (3 of them framing).
    assert entry.ByteSize() + 3 == 3637
    assert page.ByteSize() < 0.87 * GRPC_DEFAULT_MAX_RECEIVE
