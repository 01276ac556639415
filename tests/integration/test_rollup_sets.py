"""Rollups take bounded space whatever time zones and excluded-number settings reports ask for.

A year-long CallSummary in two dozen time zones (whole-hour, half-hour and quarter-hour offsets,
with and without daylight saving), both include_excluded_numbers values, through a real server:
every answer equals the reference and the same summary with rollups off, and the tenant's
rollups hold at most the sets of its own time zone and ``max_sets`` others.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage import summaries
from callsight.storage.database import Database
from callsight.storage.filters import CallFilter
from callsight.storage.rollups import DEFAULT_SETTINGS, Rollups, RollupSettings
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
HOME = "Asia/Kolkata"
ZONES = [
    HOME,
    "UTC",
    "America/New_York",
    "Europe/London",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Tehran",
    "Australia/Eucla",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Tokyo",
    "Europe/Berlin",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Africa/Cairo",
    "Asia/Dubai",
    "Asia/Yangon",
    "Australia/Lord_Howe",
    "America/Caracas",
    "Etc/GMT+5",
    "Asia/Shanghai",
    "Africa/Lagos",
]
KINDS = [
    T.CALL_TYPE_OUTGOING,
    T.CALL_TYPE_OUTGOING,
    T.CALL_TYPE_INCOMING,
    T.CALL_TYPE_INCOMING,
    T.CALL_TYPE_MISSED,
    T.CALL_TYPE_REJECTED,
]


@pytest.fixture(scope="module")
async def own(data_dir: Path) -> AsyncIterator[Service]:
    """A server on a database of its own, so that the rollup tables' parts are this module's."""
    svc = Service(make_config(data_dir, f"test_sets_{secrets.token_hex(4)}"))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture(scope="module")
async def channel(own: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{own.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
async def db(own: Service) -> AsyncIterator[Database]:
    database = Database(own.config.dsn.reveal(), own.config.database)
    yield database
    database.close()


@pytest.fixture(scope="module")
async def year(channel: grpc.aio.Channel) -> Truth:
    """Two employees' calls over the last 400 days (a few right around UTC midnights)."""
    rng = random.Random(11)
    tenant = await new_tenant(channel, region="IN", timezone=HOME)
    pool = [f"+9198{rng.randrange(10**8):08d}" for _ in range(30)]
    await admin_pb2_grpc.AdminServiceStub(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=pool[:2]), metadata=tenant.admin
    )
    now = int(time.time() * 1000) - HOUR_MS
    start = now - 400 * DAY_MS
    truth = Truth(tenant, HOME, {}, [], set(pool[:2]), start, now)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    for e in range(2):
        employee_id = await new_employee(channel, tenant, f"Zones {e}", f"+9172000000{e:02d}")
        device = await enroll(channel, tenant, employee_id, region="IN")
        truth.employees[employee_id] = Employee(employee_id, f"Zones {e}", (), [device.device_id])
        records = []
        for i in range(300):
            started = start + rng.randrange(now - start)
            if i % 5 == 0:  # close to a UTC midnight: local days of many zones cut there
                started = started // DAY_MS * DAY_MS + rng.randrange(-3 * HOUR_MS, 3 * HOUR_MS)
            started = min(started, now)
            kind = rng.choice(KINDS)
            connected = kind in (T.CALL_TYPE_OUTGOING, T.CALL_TYPE_INCOMING) and rng.random() < 0.7
            record = ingest_pb2.CallRecord(
                call_id=f"z{i}",
                number=rng.choice(pool),
                type=kind,
                started_at_ms=started,
                duration_s=rng.randrange(1, 3_000) if connected else 0,
            )
            records.append(record)
            truth.calls.append(
                Call(device.device_id, record.call_id, employee_id, record.number, "", kind,
                     started, record.duration_s, "", "", started)
            )  # fmt: skip
        request = ingest_pb2.UploadRequest(
            seq=1, batch_id="zones", calls=ingest_pb2.CallLogBatch(records=records)
        )
        ack = await ingest.Upload(request, metadata=auth(device.device_token))
        assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and not ack.rejected, ack
    truth.calls.sort(key=lambda c: c.started_at_ms)
    return truth


async def _footprint(db: Database, tenant_id: str) -> tuple[int, int]:
    # The tenant's rollup rows, and its distinct (time zone, include_excluded) sets with runs.
    (rows,) = await db.query(
        "SELECT count() FROM call_rollups WHERE tenant_id = {t:String}", {"t": tenant_id}
    )
    (sets,) = await db.query(
        "SELECT uniqExact(timezone, endsWith(state, '|all')) FROM call_rollup_runs"
        " WHERE tenant_id = {t:String} AND kind != 'set'",
        {"t": tenant_id},
    )
    return int(rows[0]), int(sets[0])


async def _bytes(db: Database) -> int:
    # Bytes on disk of the rollup tables' active parts (this module's database: one tenant).
    (row,) = await db.query(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase()"
        " AND table IN ('call_rollups', 'call_rollup_runs') AND active"
    )
    return int(row[0])


async def test_a_year_in_many_time_zones_keeps_rollups_bounded_and_answers_exact(
    year: Truth, channel: grpc.aio.Channel, db: Database
) -> None:
    stub = report_pb2_grpc.ReportServiceStub(channel)
    tenant_id = year.tenant.tenant_id
    to_ms = year.end_ms
    from_ms = to_ms - 365 * DAY_MS

    async def summary(zone: str, everything: bool) -> None:
        f = report_pb2.ReportFilter(
            from_ms=from_ms, to_ms=to_ms, timezone=zone, include_excluded_numbers=everything
        )
        got = await stub.CallSummary(
            report_pb2.CallSummaryRequest(filter=f), metadata=year.tenant.admin
        )
        calls, tz = reference.select(year, f, (0, 0))
        assert str(got.summary) == str(reference.summary(calls, tz)), (zone, everything)
        plain = await summaries.call_summary(
            db,
            CallFilter(tenant_id, from_ms, to_ms, zone, include_excluded=everything),
            use_rollups=False,
        )
        assert str(got.summary) == str(report_pb2.Summary(**asdict(plain))), (zone, everything)

    await summary(HOME, False)
    one_set, sets = await _footprint(db, tenant_id)
    assert one_set > 0 and sets == 1, "the home zone's year should be rolled up"
    one_set_bytes = await _bytes(db)

    for zone in ZONES:
        for everything in (False, True):
            await summary(zone, everything)
    rows, sets = await _footprint(db, tenant_id)
    # The home zone's two sets and the first max_sets others; every other zone reads its calls.
    bound = 2 + DEFAULT_SETTINGS.max_sets
    assert sets == bound
    assert rows <= bound * one_set * 1.5, (rows, one_set)
    assert await _bytes(db) <= bound * one_set_bytes * 2, one_set_bytes

    # Asked again, every zone still answers the same, and nothing new is made.
    for zone in ZONES[::5]:
        await summary(zone, True)
    assert await _footprint(db, tenant_id) == (rows, sets)


async def test_services_racing_for_the_last_set_never_exceed_it(db: Database) -> None:
    # Five services (five Rollups: nothing shared in memory) each ask for a new time zone of
    # one tenant at once; there is one place, so exactly one of them makes runs.
    tenant_id = f"race-{secrets.token_hex(4)}"
    settings = RollupSettings(max_sets=1)
    to_ms = int(time.time() * 1000)
    zones = ["Asia/Kolkata", "Europe/Paris", "Asia/Singapore", "America/Chicago", "Asia/Karachi"]
    filters = [CallFilter(tenant_id, to_ms - 90 * DAY_MS, to_ms, zone) for zone in zones]
    await asyncio.gather(
        *(
            summaries.call_summary(db, f, rollups=Rollups(settings), home_timezone="UTC")
            for f in filters
        )
    )
    (made,) = await db.query(
        "SELECT uniqExact(timezone) FROM call_rollup_runs WHERE tenant_id = {t:String}"
        " AND kind != 'set'",
        {"t": tenant_id},
    )
    assert int(made[0]) == 1
    # The home zone is always rolled up, whatever the others hold.
    home = CallFilter(tenant_id, to_ms - 90 * DAY_MS, to_ms, "UTC")
    await summaries.call_summary(db, home, rollups=Rollups(settings), home_timezone="UTC")
    (made,) = await db.query(
        "SELECT uniqExact(timezone) FROM call_rollup_runs WHERE tenant_id = {t:String}"
        " AND kind != 'set'",
        {"t": tenant_id},
    )
    assert int(made[0]) == 2
