"""CallSummary over ranges that hold settled whole months and days, which it takes from rollups:
the same answer as the pure-Python reference, and still after those months and days change (a
newer version, a new call, a copy of a stored row, an erasure, other excluded numbers)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.storage.rollups import RollupSettings
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.conftest import make_config
from tests.integration import reference
from tests.integration.dataset import Call, Employee, Truth
from tests.integration.helpers import auth, enroll, new_employee, new_tenant

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T = common_pb2
KINDS = [
    T.CALL_TYPE_OUTGOING,
    T.CALL_TYPE_OUTGOING,
    T.CALL_TYPE_INCOMING,
    T.CALL_TYPE_INCOMING,
    T.CALL_TYPE_MISSED,
    T.CALL_TYPE_REJECTED,
    T.CALL_TYPE_BLOCKED,
    T.CALL_TYPE_VOICEMAIL,
]


def _month_start(months_back: int) -> int:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - months_back
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


class World:
    """One tenant's devices and the truth of what they sent, kept in step with every send."""

    def __init__(self, channel: grpc.aio.Channel, truth: Truth, tokens: dict[str, str]) -> None:
        self.channel = channel
        self.truth = truth
        self.tokens = tokens  # device_id -> device token
        self.seq = 100

    async def send(self, device_id: str, records: list[ingest_pb2.CallRecord]) -> None:
        ingest = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.seq += 1
        request = ingest_pb2.UploadRequest(
            seq=self.seq, batch_id=f"b{self.seq}", calls=ingest_pb2.CallLogBatch(records=records)
        )

        async def one() -> AsyncIterator[ingest_pb2.UploadRequest]:
            yield request

        async for ack in ingest.Stream(one(), metadata=auth(self.tokens[device_id])):
            assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and not ack.rejected, ack
        employee = next(e for e in self.truth.employees.values() if device_id in e.device_ids)
        newest = {(c.device_id, c.call_id): c for c in self.truth.calls}
        for r in records:
            version = r.updated_at_ms or r.started_at_ms
            old = newest.get((device_id, r.call_id))
            if old is None or version > old.version:
                newest[(device_id, r.call_id)] = Call(
                    device_id,
                    r.call_id,
                    employee.employee_id,
                    r.number,
                    r.name,
                    r.type,
                    r.started_at_ms,
                    r.duration_s,
                    r.note,
                    r.recording_uri,
                    version,
                )
        self.truth.calls = sorted(newest.values(), key=lambda c: c.started_at_ms)


@pytest.fixture(scope="module")
async def world(channel: grpc.aio.Channel) -> World:
    """Three employees' calls over the last three whole months and this one so far."""
    rng = random.Random(5)
    tenant = await new_tenant(channel, region="IN", timezone="Asia/Kolkata")
    pool = [f"+9197{rng.randrange(10**8):08d}" for _ in range(25)]
    await admin_pb2_grpc.AdminServiceStub(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=pool[:1]), metadata=tenant.admin
    )
    start, now = _month_start(3), int(time.time() * 1000) - HOUR_MS
    # Calls close to month edges make local (Kolkata) days that two UTC months share.
    edges = [_month_start(k) for k in (0, 1, 2)]
    truth = Truth(tenant, "Asia/Kolkata", {}, [], {pool[0]}, start, now)
    world = World(channel, truth, {})
    for e in range(3):
        employee_id = await new_employee(channel, tenant, f"Rollup {e}", f"+9171000000{e:02d}")
        device = await enroll(channel, tenant, employee_id, region="IN")
        truth.employees[employee_id] = Employee(employee_id, f"Rollup {e}", (), [device.device_id])
        world.tokens[device.device_id] = device.device_token
        records = []
        for i in range(240):
            if i % 8 == 0:
                started = rng.choice(edges) + rng.randrange(-10 * HOUR_MS, 10 * HOUR_MS)
            else:
                started = start + rng.randrange(now - start)
            kind = rng.choice(KINDS)
            connected = kind in (T.CALL_TYPE_OUTGOING, T.CALL_TYPE_INCOMING) and rng.random() < 0.6
            records.append(
                ingest_pb2.CallRecord(
                    call_id=f"r{i}",
                    number=rng.choice(pool[:6]) if rng.random() < 0.5 else rng.choice(pool),
                    name=f"Client {i % 7}" if rng.random() < 0.5 else "",
                    type=kind,
                    started_at_ms=min(started, now),
                    duration_s=rng.randrange(1, 900) if connected else 0,
                )
            )
        for k in range(0, len(records), 80):
            await world.send(device.device_id, records[k : k + 80])
    return world


@pytest.fixture(scope="module")
async def eager(service: Service, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A second server on the session's database whose rollups make a changed unit's runs again
    at once (normally at most every 10 minutes)."""
    svc = Service(
        make_config(data_dir, service.config.database),
        rollup_settings=RollupSettings(remake_interval_s=0.0),
    )
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


def _filters(world: World) -> dict[str, report_pb2.ReportFilter]:
    truth = world.truth
    ids = sorted(truth.employees)
    mid_month = _month_start(3) + 12 * DAY_MS + 7 * HOUR_MS
    return {
        "all": report_pb2.ReportFilter(from_ms=truth.start_ms, to_ms=truth.end_ms),
        "from_mid_month": report_pb2.ReportFilter(from_ms=mid_month, to_ms=truth.end_ms),
        "two_employees": report_pb2.ReportFilter(
            from_ms=truth.start_ms, to_ms=truth.end_ms, employee_ids=ids[:2]
        ),
        "include_excluded": report_pb2.ReportFilter(
            from_ms=truth.start_ms, to_ms=truth.end_ms, include_excluded_numbers=True
        ),
        "new_york": report_pb2.ReportFilter(
            from_ms=truth.start_ms, to_ms=truth.end_ms, timezone="America/New_York"
        ),
    }


async def _check(world: World, channel: grpc.aio.Channel | None = None) -> None:
    stub = report_pb2_grpc.ReportServiceStub(channel or world.channel)
    for name, f in _filters(world).items():
        calls, tz = reference.select(world.truth, f, (0, 0))
        got = await stub.CallSummary(
            report_pb2.CallSummaryRequest(filter=f), metadata=world.truth.tenant.admin
        )
        assert str(got.summary) == str(reference.summary(calls, tz)), name


async def _runs(
    db: Database, tenant_id: str, kinds: tuple[str, ...] = ("month", "day", "span")
) -> int:
    rows = await db.query(
        "SELECT count() FROM call_rollup_runs WHERE tenant_id = {t:String}"
        " AND kind IN {kinds:Array(String)}",
        {"t": tenant_id, "kinds": list(kinds)},
    )
    return int(rows[0][0])


async def test_whole_months_come_from_rollups_and_match_the_reference(
    world: World, db: Database
) -> None:
    await _check(world)
    made = await _runs(db, world.truth.tenant.tenant_id)
    assert made >= 1, "the range holds a settled whole month: a rollup should have been made"
    # Asked again, the same months are reused, not made again.
    await _check(world)
    assert await _runs(db, world.truth.tenant.tenant_id) == made


async def test_rollups_follow_changes_to_their_months(
    world: World, db: Database, eager: grpc.aio.Channel
) -> None:
    # Runs of a changed unit are made again at once here (normally at most every 10 minutes).
    await _check(world, eager)
    tenant_id = world.truth.tenant.tenant_id
    old_month = _month_start(2)
    in_old_month = [c for c in world.truth.calls if old_month <= c.started_at_ms < _month_start(1)]
    missed = next(c for c in in_old_month if c.duration_s == 0)
    # A newer version turns an unanswered call into a connected one; a new call lands in the
    # same month; a stored row is written again as another server process might.
    await world.send(
        missed.device_id,
        [
            ingest_pb2.CallRecord(
                call_id=missed.call_id,
                number=missed.number,
                name="Renamed",
                type=T.CALL_TYPE_INCOMING,
                started_at_ms=missed.started_at_ms,
                duration_s=47,
                updated_at_ms=missed.started_at_ms + DAY_MS,
            ),
            ingest_pb2.CallRecord(
                call_id="late-1",
                number=missed.number,
                type=T.CALL_TYPE_OUTGOING,
                started_at_ms=old_month + 5 * DAY_MS,
                duration_s=0,
            ),
        ],
    )
    await db.command(
        "INSERT INTO calls SELECT * FROM calls FINAL WHERE tenant_id = {t:String}"
        " AND started_at >= fromUnixTimestamp64Milli({m:Int64}, 'UTC') LIMIT 5",
        {"t": tenant_id, "m": old_month},
    )
    await _check(world, eager)

    # An erased number leaves every month, rolled up or not.
    gone = missed.number
    await admin_pb2_grpc.AdminServiceStub(world.channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=gone), metadata=world.truth.tenant.admin
    )
    world.truth.calls = [c for c in world.truth.calls if c.number != gone]
    world.truth.excluded.discard(gone)
    await _check(world, eager)

    # Other excluded numbers: the months are judged again without them.
    others = sorted({c.number for c in world.truth.calls})[:2]
    await admin_pb2_grpc.AdminServiceStub(world.channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=others), metadata=world.truth.tenant.admin
    )
    world.truth.excluded = set(others)
    await _check(world, eager)


async def test_settled_days_follow_changes_and_later_days_leave_them_alone(
    world: World, db: Database, eager: grpc.aio.Channel
) -> None:
    # Days 14-27 of the oldest month are day units for "from_mid_month" (its whole month for
    # "all"): a newer version there, and a new call, must show.
    await _check(world, eager)
    tenant_id = world.truth.tenant.tenant_id
    days_from = _month_start(3) + 14 * DAY_MS
    in_days = [
        c for c in world.truth.calls if days_from <= c.started_at_ms < days_from + 14 * DAY_MS
    ]
    connected = next(c for c in in_days if c.duration_s > 0)
    await world.send(
        connected.device_id,
        [
            ingest_pb2.CallRecord(
                call_id=connected.call_id,
                number=connected.number,
                type=T.CALL_TYPE_MISSED,
                started_at_ms=connected.started_at_ms,
                duration_s=0,
                updated_at_ms=connected.started_at_ms + HOUR_MS,
            ),
            ingest_pb2.CallRecord(
                call_id="days-1",
                number=connected.number,
                type=T.CALL_TYPE_INCOMING,
                started_at_ms=days_from + 3 * DAY_MS + 5 * HOUR_MS,
                duration_s=31,
            ),
        ],
    )
    await _check(world, eager)
    made = await _runs(db, tenant_id)

    # A call from the last hours lies outside every rollup: it shows, and no run is made again.
    device_id = next(iter(world.tokens))
    await world.send(
        device_id,
        [
            ingest_pb2.CallRecord(
                call_id="recent-1",
                number=connected.number,
                type=T.CALL_TYPE_OUTGOING,
                started_at_ms=world.truth.end_ms - 2 * HOUR_MS,
                duration_s=12,
            )
        ],
    )
    await _check(world, eager)
    assert await _runs(db, tenant_id) == made


async def test_a_unit_that_keeps_changing_is_read_from_the_calls_for_a_while(
    world: World, db: Database
) -> None:
    # Every unit's runs were made moments ago; a change to one of them now is answered from the
    # calls (the rollups end before it) rather than by making its runs again. (A span of the
    # units before it may be made.)
    await _check(world)
    tenant_id = world.truth.tenant.tenant_id
    made = await _runs(db, tenant_id, ("month", "day"))
    device_id = next(iter(world.tokens))
    await world.send(
        device_id,
        [
            ingest_pb2.CallRecord(
                call_id="churn-1",
                number=world.truth.calls[0].number,
                type=T.CALL_TYPE_OUTGOING,
                started_at_ms=_month_start(3) + 20 * DAY_MS + 6 * HOUR_MS,
                duration_s=0,
            )
        ],
    )
    await _check(world)
    assert await _runs(db, tenant_id, ("month", "day")) == made
