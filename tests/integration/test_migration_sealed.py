"""Migration 0009 on tables holding plaintext that can carry a number: the plaintext is gone, the
ciphertext columns are there (empty for old rows), and coordinates are coarsened in place."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callsight.storage.database import Database
from callsight.storage.migrator import available, migrate

INSIDE = "9812345678"
NOW = datetime.now(UTC).replace(microsecond=0)  # inside the telemetry TTL


@pytest.fixture
def db(empty_db: Database) -> Database:
    return empty_db  # not the session's migrated database: this test migrates its own


async def _columns(db: Database, table: str) -> set[str]:
    rows = await db.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        {"t": table},
    )
    return {str(r[0]) for r in rows}


async def test_plaintext_that_can_carry_a_number_is_dropped_and_coordinates_coarsened(
    db: Database,
) -> None:
    assert await migrate(db, until=8) == list(range(1, 9))
    await db.insert_rows(
        "telemetry",
        [("t", "d", NOW, 12.971598, -77.594562, f"fcm:{INSIDE}", [f"8991{INSIDE}"], NOW)],
        ["tenant_id", "device_id", "captured_at", "latitude", "longitude", "fcm_id", "sim_ids"]
        + ["synced_at"],
    )
    await db.insert_rows(
        "devices",
        [("t", "d", f"fcm:{INSIDE}", [f"8991{INSIDE}"], NOW, 1)],
        ["tenant_id", "device_id", "fcm_id", "sim_ids", "registered_at", "version"],
    )
    await db.insert_rows(
        "leads",
        [("t", "l", f"Traders {INSIDE}", f"Pune {INSIDE}", INSIDE, "MH", NOW, 1, 0)],
        ["tenant_id", "lead_id", "company", "city", "zipcode", "state", "created_at"]
        + ["version", "is_deleted"],
    )
    await db.insert_rows(
        "calls",
        [("t", "d", "c", NOW, f"8991{INSIDE}", f"content://rec/{INSIDE}.m4a", 1, NOW)],
        ["tenant_id", "device_id", "call_id", "started_at", "sim_id", "recording_uri"]
        + ["version", "synced_at"],
    )

    assert await migrate(db) == [m.version for m in available() if m.version >= 9]
    # A start-up that died half-way runs it again.
    await db.command("DELETE FROM schema_migrations WHERE version = 9")
    assert await migrate(db) == [9]

    gone = {
        "calls": {"sim_id", "recording_uri"},
        "telemetry": {"fcm_id", "sim_ids"},
        "devices": {"fcm_id", "sim_ids"},
        "leads": {"company", "city", "zipcode"},
    }
    for table, plaintext in gone.items():
        columns = await _columns(db, table)
        assert not columns & plaintext, table
        assert {f"{name}_enc" for name in plaintext} <= columns, table
        dump = await db.run(
            lambda c, t=table: c.raw_query(f"SELECT * FROM `{t}` FORMAT TSVRaw")  # type: ignore[misc]
        )
        assert INSIDE.encode() not in dump, table
    (row,) = await db.query("SELECT latitude, longitude, fcm_id_enc, sim_ids_enc FROM telemetry")
    assert row == (12.97, -77.59, "", [])
    (lead,) = await db.query("SELECT state, company_enc FROM leads")
    assert lead == ("MH", "")
