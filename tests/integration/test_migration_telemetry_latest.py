"""Migration 0017 on a database holding telemetry: ``telemetry_latest`` starts with every
device's newest sample, and the materialized view keeps it newest as samples arrive, in any
order and in any insert."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callsight.storage.database import Database
from callsight.storage.migrator import migrate
from callsight.storage.sql import Sql

TENANT = "t-latest"
# An hour ago: telemetry older than 90 days is deleted as it is written (its TTL).
START_MS = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
COLUMNS = ["tenant_id", "device_id", "captured_at", "battery_pct", "charging", "network"]
COLUMNS += ["app_version", "android_version"]


@pytest.fixture
def db(empty_db: Database) -> Database:
    return empty_db  # not the session's migrated database: this test migrates its own


def _sample(device: str, at_s: int, battery: int, version: str) -> tuple[object, ...]:
    captured = datetime.fromtimestamp(START_MS / 1000 + at_s, UTC)
    return (TENANT, device, captured, battery, False, 1, version, "14")


async def _latest(db: Database) -> dict[str, tuple[int, str]]:
    rows = await db.named_rows(
        Sql(
            "SELECT device_id, max(latest) AS latest FROM telemetry_latest"
            " WHERE tenant_id = {t:String} GROUP BY device_id",
            {"t": TENANT},
        )
    )
    return {r["device_id"]: (int(r["latest"][1]), str(r["latest"][4])) for r in rows}


async def test_the_newest_sample_of_each_device_before_and_after_the_migration(
    db: Database,
) -> None:
    await migrate(db, until=16)
    # Two inserts, newest first for d1: the order of arrival does not matter, capture time does.
    await db.insert_rows(
        "telemetry", [_sample("d1", 60, 40, "3.1"), _sample("d2", 5, 90, "2.0")], COLUMNS
    )
    await db.insert_rows("telemetry", [_sample("d1", 30, 80, "3.0")], COLUMNS)
    await migrate(db)
    assert await _latest(db) == {"d1": (40, "3.1"), "d2": (90, "2.0")}

    # After it, the view keeps up: an older sample changes nothing, a newer one wins.
    await db.insert_rows("telemetry", [_sample("d2", 1, 10, "1.0")], COLUMNS)
    await db.insert_rows("telemetry", [_sample("d1", 120, 15, "3.2")], COLUMNS)
    assert await _latest(db) == {"d1": (15, "3.2"), "d2": (90, "2.0")}
    # Migrating again (a start-up that died half-way) leaves it as it is.
    await db.command("DELETE FROM schema_migrations WHERE version = 17")
    await migrate(db)
    assert await _latest(db) == {"d1": (15, "3.2"), "d2": (90, "2.0")}
