"""Migrations 0006 and 0007 on a database full of calls: the reports answer as before.

Calls are written the way the code before them wrote them (number and name ciphertexts and the
blind index in every row), the answers are read with the SQL of then, and after migrating the
report functions of now must give the same numbers and names, counts and totals.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import CALLS_SCHEMA
from callsight.storage import listings, privacy, summaries
from callsight.storage.database import Database
from callsight.storage.filters import CallFilter
from callsight.storage.migrator import available, migrate
from callsight.storage.writer import Writer

TENANT = "t-migration"
DAY_MS = 86_400_000
START_MS = 1_780_000_000_000
CIPHER = TenantCipher(1, new_data_key())
RING = Keyring(CIPHER)
# (device, call id, number, name, type, started ms, duration s, version): client 1 is named, then
# unnamed, then renamed; client 2 never named; a call of client 3 was updated (a note and a name).
CALLS = [
    ("d1", "1", "+919876543210", "Ravi", 1, START_MS, 30, START_MS),
    ("d1", "2", "+919876543210", "", 3, START_MS + 1_000, 0, START_MS + 1_000),
    ("d2", "1", "+919876543210", "Ravi Kumar", 2, START_MS + 2_000, 12, START_MS + 2_000),
    ("d2", "2", "+919876543210", "", 3, START_MS + 3_000, 0, START_MS + 3_000),
    ("d1", "3", "+918888888888", "", 3, START_MS + 4_000, 0, START_MS + 4_000),
    ("d2", "3", "+918888888888", "", 2, START_MS + DAY_MS, 0, START_MS + DAY_MS),
    ("d1", "4", "+917777777777", "", 1, START_MS + 5_000, 40, START_MS + 5_000),
    ("d1", "4", "+917777777777", "Asha", 1, START_MS + 5_000, 40, START_MS + 9_000),
]
FILTER = CallFilter(TENANT, START_MS - DAY_MS, START_MS + 2 * DAY_MS, "Asia/Kolkata")
SNAPSHOT_MS = START_MS + 3 * DAY_MS
# The listings of before 0006: number and newest non-empty name straight from the calls.
_OLD_CLIENTS = """
SELECT argMax(number_enc, (started_at, device_id, call_id)) AS number_enc,
       argMaxIf(name_enc, (started_at, device_id, call_id), name_enc != '') AS name_enc,
       count() AS calls, sum(duration_s) AS duration
FROM calls FINAL WHERE tenant_id = {t:String}
GROUP BY client_key
"""
_OLD_HISTORY = """
SELECT device_id, call_id, number_enc, name_enc FROM calls FINAL WHERE tenant_id = {t:String}
"""


@pytest.fixture
def db(empty_db: Database) -> Database:
    return empty_db  # not the session's migrated database: this test migrates its own


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def _write_old_calls(db: Database) -> None:
    """The calls as the writer before 0006 stored them, in two inserts (two parts)."""
    rows = []
    for device, call_id, number, name, kind, started, duration, version in CALLS:
        rows.append(
            (
                TENANT, device, call_id, "e1", CIPHER.blind_index(number),
                RING.encrypt(number), RING.encrypt(name), kind, _ms(started), duration,
                0, "", b"", "", version, _ms(version + 1_000),
            )
        )  # fmt: skip
    columns = [
        "tenant_id", "device_id", "call_id", "employee_id", "number_bidx", "number_enc",
        "name_enc", "type", "started_at", "duration_s", "sim_slot", "sim_id", "note_enc",
        "recording_uri", "version", "synced_at",
    ]  # fmt: skip
    await db.insert_rows("calls", rows[:4], columns)
    await db.insert_rows("calls", rows[4:], columns)


def _clients(rows: list[tuple[bytes, bytes, int, int]]) -> dict[str, tuple[str, int, int]]:
    return {RING.decrypt(n): (RING.decrypt(m), calls, total) for n, m, calls, total in rows}


async def _old_answers(db: Database) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    clients = await db.query(_OLD_CLIENTS, {"t": TENANT}, binary=["number_enc", "name_enc"])
    history = await db.query(_OLD_HISTORY, {"t": TENANT}, binary=["number_enc", "name_enc"])
    return (
        _clients([(bytes(n), bytes(m), int(c), int(d)) for n, m, c, d in clients]),
        {(d, c): (RING.decrypt(bytes(n)), RING.decrypt(bytes(m))) for d, c, n, m in history},
    )


async def _new_answers(db: Database) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    clients = await listings.unique_clients(db, FILTER, SNAPSHOT_MS, None, 100)
    history = await listings.call_history(db, FILTER, SNAPSHOT_MS, None, 100)
    return (
        _clients([(r.number_enc, r.name_enc, r.total_calls, r.total_duration_s) for r in clients]),
        {
            (r.device_id, r.call_id): (RING.decrypt(r.number_enc), RING.decrypt(r.name_enc))
            for r in history
        },
    )


async def test_reports_answer_the_same_after_the_parties_migrations(db: Database) -> None:
    assert await migrate(db, until=5) == [1, 2, 3, 4, 5]
    await _write_old_calls(db)
    clients, history = await _old_answers(db)
    assert clients == {
        "+919876543210": ("Ravi Kumar", 4, 42),
        "+918888888888": ("", 2, 0),
        "+917777777777": ("Asha", 1, 40),
    }
    summary = await summaries.call_summary(db, FILTER, use_rollups=False)

    # Each may die half-way and run again on start-up: 0006 before 0007 runs, 0007 after.
    for version in (6, 7):
        assert await migrate(db, until=version) == [version]
        await db.command("DELETE FROM schema_migrations WHERE version = {v:UInt32}", {"v": version})
        assert await migrate(db, until=version) == [version]
    # Then the later ones, 0009 (no plaintext recording_uri / sim_id) run twice too.
    later = [m.version for m in available() if m.version >= 8]
    assert await migrate(db) == later
    await db.command("DELETE FROM schema_migrations WHERE version = 9")
    assert await migrate(db) == [9]
    columns = await db.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'calls'"
    )
    names = {str(c[0]) for c in columns}
    assert {"client_key", "name_key", "sim_id_enc", "recording_uri_enc"} <= names
    assert not names & {"number_bidx", "number_enc", "name_enc", "sim_id", "recording_uri"}
    assert await _new_answers(db) == (clients, history)
    assert await summaries.call_summary(db, FILTER, use_rollups=False) == summary
    never = await listings.never_attended(db, FILTER, SNAPSHOT_MS, None, 100)
    assert [RING.decrypt(r.number_enc) for r in never] == ["+918888888888"]
    # One party per client and name ciphertext: client 1 has three (one without a name).
    (parties,) = await db.query("SELECT count() FROM parties FINAL")
    assert parties[0] == 5


async def test_new_calls_join_migrated_ones(db: Database) -> None:
    await migrate(db, until=5)
    await _write_old_calls(db)
    await migrate(db)
    # A newer call of client 1, written by today's writer, renames it; erasing client 3 leaves
    # neither its calls nor its party.
    number = "+919876543210"
    bidx = CIPHER.blind_index(number)
    row = {
        "tenant_id": TENANT, "device_id": "d3", "call_id": "9", "employee_id": "e1",
        "number_bidx": bidx, "number_enc": RING.encrypt(number),
        "name_enc": RING.encrypt("Ravi K."), "type": 2, "started_at": START_MS + 7_000,
        "duration_s": 5, "sim_slot": 0, "sim_id_enc": b"", "note_enc": b"",
        "recording_uri_enc": b"",
        "version": START_MS + 7_000, "synced_at": START_MS + 8_000,
        "client_key": int.from_bytes(bidx[:8], "little"),
        "name_key": CIPHER.name_keys(["Ravi K."])[0],
    }  # fmt: skip
    table = pa.Table.from_pylist([row], schema=CALLS_SCHEMA)
    await Writer(db).write("calls", table, "migration-test")
    clients, history = await _new_answers(db)
    assert clients[number] == ("Ravi K.", 5, 47)
    assert history[("d3", "9")] == (number, "Ravi K.")
    assert history[("d2", "1")] == (number, "Ravi Kumar")

    erased = await privacy.erase_number(db, TENANT, CIPHER.blind_index("+917777777777"))
    assert erased.calls == 1
    clients, history = await _new_answers(db)
    assert "+917777777777" not in clients and ("d1", "4") not in history
    (left,) = await db.query(
        "SELECT count() FROM parties WHERE number_bidx = {b:FixedString(32)}",
        {"b": CIPHER.blind_index("+917777777777")},
    )
    assert left[0] == 0
