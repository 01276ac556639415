"""The device policy applied to decoded batches (pipeline/policy.py) and SetDevicePolicy's input
checks (server/policy.py): which rows are dropped, local times around daylight-saving changes."""

from __future__ import annotations

import os
import random
import zoneinfo
from datetime import UTC, datetime

import numpy as np
import pytest

from callsight.core.errors import InvalidArgument
from callsight.pipeline.crypto import Keyring, TenantCipher
from callsight.pipeline.encode import NumberCodec, Source, client_keys, decode
from callsight.pipeline.policy import holds, outside_hours, policy_rows, utc_offsets_ms
from callsight.server.policy import policy_from
from callsight.storage.policies import NO_EXCLUDED, Excluded, OfficeHours, Policy
from callsight.v1 import ingest_pb2

HOUR_MS = 3_600_000
KEYRING = Keyring(TenantCipher(1, os.urandom(32)))
SOURCE = Source("t1", "d1", "e1", "IN", KEYRING)
PERSONAL = "+919811100001"
# Monday 2024-06-03 00:00 in Asia/Kolkata (UTC+5:30), epoch ms.
MONDAY_IST_MS = int(datetime(2024, 6, 2, 18, 30, tzinfo=UTC).timestamp() * 1000)
NOW_MS = int(datetime(2024, 6, 10, tzinfo=UTC).timestamp() * 1000)


def reference_offsets(instants_ms: list[int], name: str) -> list[int]:
    zone = zoneinfo.ZoneInfo(name)
    out = []
    for ms in instants_ms:
        offset = datetime.fromtimestamp(ms // 1000, UTC).astimezone(zone).utcoffset()
        assert offset is not None
        out.append(int(offset.total_seconds() * 1000))
    return out


@pytest.mark.parametrize(
    ("zone", "change"),
    [
        ("America/New_York", datetime(2024, 3, 10, 7, 0, tzinfo=UTC)),  # spring forward
        ("America/New_York", datetime(2024, 11, 3, 6, 0, tzinfo=UTC)),  # fall back
        ("Australia/Lord_Howe", datetime(2024, 4, 6, 15, 0, tzinfo=UTC)),  # 30-minute change
        ("Asia/Kolkata", datetime(2024, 3, 10, 7, 0, tzinfo=UTC)),  # none
    ],
)
def test_offsets_match_zoneinfo_per_record_around_changes(zone: str, change: datetime) -> None:
    at = int(change.timestamp() * 1000)
    rng = random.Random(zone)
    # Every second around the change, and random instants over the days either side.
    instants = [at + s * 1000 for s in range(-5, 6)]
    instants += [at + rng.randrange(-3 * 86_400_000, 3 * 86_400_000) for _ in range(2_000)]
    got = utc_offsets_ms(np.array(instants, dtype=np.int64), zone)
    assert got.tolist() == reference_offsets(instants, zone)


def test_holds_matches_isin_at_the_edges() -> None:
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(1, 2**64 - 2, size=500, dtype=np.uint64))
    values = np.concatenate(
        [keys[::7], rng.integers(0, 2**64 - 1, size=500, dtype=np.uint64)]
    ).astype(np.uint64)
    values = np.concatenate([values, np.array([0, 2**64 - 1], dtype=np.uint64)])
    assert holds(values, keys).tolist() == np.isin(values, keys).tolist()
    assert holds(values, keys).sum() == len(keys[::7])


def test_offsets_of_an_empty_column() -> None:
    assert utc_offsets_ms(np.zeros(0, dtype=np.int64), "UTC").tolist() == []


def test_office_hours_window_and_weekdays_in_the_zone() -> None:
    hours = OfficeHours(9 * 60, 18 * 60, (1, 2, 3, 4, 5), "Asia/Kolkata")
    starts = [
        MONDAY_IST_MS + 9 * HOUR_MS,  # Monday 09:00: inside (start inclusive)
        MONDAY_IST_MS + 18 * HOUR_MS - 60_000,  # Monday 17:59: inside
        MONDAY_IST_MS + 18 * HOUR_MS,  # Monday 18:00: outside (end exclusive)
        MONDAY_IST_MS + 9 * HOUR_MS - 1,  # Monday 08:59:59.999: outside
        MONDAY_IST_MS - 12 * HOUR_MS,  # Sunday 12:00: outside (weekday)
        MONDAY_IST_MS + 4 * 86_400_000 + 10 * HOUR_MS,  # Friday 10:00: inside
        MONDAY_IST_MS + 5 * 86_400_000 + 10 * HOUR_MS,  # Saturday 10:00: outside
    ]
    got = outside_hours(np.array(starts, dtype=np.int64), hours)
    assert got.tolist() == [False, False, True, True, True, False, True]
    every_day = OfficeHours(0, 1440, (), "UTC")
    assert not outside_hours(np.array(starts, dtype=np.int64), every_day).any()


def test_office_hours_across_a_daylight_saving_change() -> None:
    # New York springs forward at 2024-03-10 07:00 UTC (02:00 EST -> 03:00 EDT).
    hours = OfficeHours(8 * 60, 9 * 60, (), "America/New_York")
    eight_edt = int(datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp() * 1000)
    eight_est = int(datetime(2024, 3, 9, 13, 0, tzinfo=UTC).timestamp() * 1000)
    starts = np.array([eight_edt, eight_edt - HOUR_MS, eight_est, eight_est - HOUR_MS])
    assert outside_hours(starts, hours).tolist() == [False, True, False, True]


def calls_request(records: list[ingest_pb2.CallRecord]) -> ingest_pb2.UploadRequest:
    return ingest_pb2.UploadRequest(seq=1, calls=ingest_pb2.CallLogBatch(records=records))


def record(i: int, slot: int, hour: float, number: str = "") -> ingest_pb2.CallRecord:
    return ingest_pb2.CallRecord(
        call_id=f"c{i}",
        number=number or f"+9198000000{i:02d}",
        type=1,
        started_at_ms=MONDAY_IST_MS + int(hour * HOUR_MS),
        duration_s=10,
        sim_slot=slot,
    )


def excluded(*numbers: str) -> Excluded:
    keys = client_keys([KEYRING.blind_index(n) for n in numbers])
    return Excluded(frozenset(keys.tolist()), np.unique(keys), ())


def test_calls_outside_the_policy_are_dropped() -> None:
    decoded = decode(
        calls_request(
            [
                record(1, 0, 10),  # kept
                record(2, 1, 10),  # slot not tracked
                record(3, -1, 10),  # slot unknown: kept
                record(4, 0, 20),  # after hours
                record(5, 0, 10.5, number="098111 00001"),  # never to upload (local format)
                record(6, 0, -14),  # Sunday
            ]
        ),
        SOURCE,
        NumberCodec(),
        NOW_MS,
    )
    policy = Policy((0,), OfficeHours(540, 1080, (1, 2, 3, 4, 5), "Asia/Kolkata"), 0)
    mask = policy_rows(decoded, policy, excluded(PERSONAL))
    assert mask.tolist() == [False, True, False, True, True, True]
    # Each rule alone.
    assert policy_rows(decoded, Policy((0,)), NO_EXCLUDED).tolist() == [
        False,
        True,
        False,
        False,
        False,
        False,
    ]
    assert policy_rows(decoded, Policy(), excluded(PERSONAL)).tolist() == [
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    # No policy in force: nothing is dropped, excluded numbers included.
    assert not policy_rows(decoded, None, excluded(PERSONAL)).any()


def test_contacts_go_whole_and_telemetry_stays() -> None:
    contacts = decode(
        ingest_pb2.UploadRequest(
            seq=1,
            contacts=ingest_pb2.ContactBatch(
                records=[
                    ingest_pb2.Contact(contact_id="k1", numbers=["+919800000001", PERSONAL]),
                    ingest_pb2.Contact(contact_id="k2", numbers=["+919800000001"]),
                ]
            ),
        ),
        SOURCE,
        NumberCodec(),
        NOW_MS,
    )
    assert policy_rows(contacts, Policy(), excluded(PERSONAL)).tolist() == [True, False]
    assert policy_rows(contacts, Policy(), NO_EXCLUDED).tolist() == [False, False]
    telemetry = decode(
        ingest_pb2.UploadRequest(
            seq=1,
            telemetry=ingest_pb2.TelemetryBatch(
                records=[ingest_pb2.Telemetry(captured_at_ms=MONDAY_IST_MS, battery_pct=50)]
            ),
        ),
        SOURCE,
        NumberCodec(),
        NOW_MS,
    )
    strict = Policy((0,), OfficeHours(0, 1, (7,), "UTC"), 0)
    assert policy_rows(telemetry, strict, excluded(PERSONAL)).tolist() == [False]


def test_policy_from_normalises_and_defaults_the_time_zone() -> None:
    message = ingest_pb2.DevicePolicy(
        version=99,
        sim_slots=[1, 0, 1],
        office_hours=ingest_pb2.OfficeHours(start_minute=540, end_minute=1080, weekdays=[5, 1]),
        never_upload=["ignored"],
        sync_interval_s=900,
    )
    assert policy_from(message, "Asia/Kolkata") == Policy(
        (0, 1), OfficeHours(540, 1080, (1, 5), "Asia/Kolkata"), 900
    )
    assert policy_from(ingest_pb2.DevicePolicy(), "UTC") == Policy()


def test_policy_from_names_every_problem() -> None:
    message = ingest_pb2.DevicePolicy(
        sim_slots=[0, 8, -1],
        office_hours=ingest_pb2.OfficeHours(
            start_minute=1440, end_minute=1441, weekdays=[0, 8], timezone="Mars/Olympus"
        ),
        sync_interval_s=59,
    )
    with pytest.raises(InvalidArgument) as info:
        policy_from(message, "UTC")
    text = str(info.value)
    for part in (
        "policy.sim_slots[1] is 8; SIM slots are 0-7",
        "policy.sim_slots[2] is -1",
        "policy.sync_interval_s is 59; send 0 (the agent's default) or 60-86400 seconds",
        "policy.office_hours.start_minute is 1440; it must be 0-1439",
        "policy.office_hours.end_minute is 1441; it must be 1-1440",
        "policy.office_hours.weekdays[0] is 0",
        "policy.office_hours.weekdays[1] is 8",
        "policy.office_hours.timezone 'Mars/Olympus' is not an IANA time zone",
    ):
        assert part in text
    with pytest.raises(InvalidArgument, match="must be after start_minute"):
        policy_from(
            ingest_pb2.DevicePolicy(
                office_hours=ingest_pb2.OfficeHours(start_minute=600, end_minute=600)
            ),
            "UTC",
        )
    with pytest.raises(InvalidArgument, match="sim_slots has 9 entries; the limit is 8"):
        policy_from(ingest_pb2.DevicePolicy(sim_slots=[0] * 9), "UTC")
