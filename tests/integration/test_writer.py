"""Writer against the embedded ClickHouse: Arrow inserts deduplicated by their token."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest

from callsight.core.errors import StorageError
from callsight.storage.database import Database
from callsight.storage.writer import Writer
from tests.faults import FaultInjectingWriter

TABLE = "writer_events"


@pytest.fixture
async def db(data_dir: Path) -> AsyncIterator[Database]:
    database = Database(f"chdb://{data_dir / 'clickhouse'}", f"writer_test_{secrets.token_hex(4)}")
    await database.command(
        f"""
        CREATE TABLE {TABLE}
        (
            id      UInt64,
            name    String,
            tags    Array(String),
            version UInt64
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY id
        SETTINGS non_replicated_deduplication_window = 100
        """
    )
    # Re-inserted rows share keys; a background merge would collapse them mid-test.
    await database.command(f"SYSTEM STOP MERGES {TABLE}")
    yield database
    await database.command(f"DROP DATABASE IF EXISTS {database.name}")
    database.close()


def events(count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(count), pa.uint64()),
            "name": pa.array([f"event {i}" for i in range(count)], pa.string()),
            "tags": pa.array([["a", str(i)] for i in range(count)], pa.list_(pa.string())),
            "version": pa.array([1] * count, pa.uint64()),
        }
    )


async def count(db: Database) -> int:
    rows = await db.query(f"SELECT count() FROM {TABLE}")
    return int(rows[0][0])


async def test_a_retried_insert_with_the_same_token_is_a_no_op(db: Database) -> None:
    writer = Writer(db)
    await writer.write(TABLE, events(50), "token-a")
    assert await count(db) == 50
    await writer.write(TABLE, events(50), "token-a")
    assert await count(db) == 50
    await writer.write(TABLE, events(50), "token-b")
    assert await count(db) == 100
    assert (writer.stats.inserts, writer.stats.rows, writer.stats.failures) == (3, 150, 0)
    assert writer.stats.seconds > 0
    rows = await db.query(f"SELECT id, name, tags FROM {TABLE} FINAL ORDER BY id LIMIT 2")
    assert rows == [(0, "event 0", ["a", "0"]), (1, "event 1", ["a", "1"])]


async def test_injected_failures_never_reach_the_database(db: Database) -> None:
    writer = FaultInjectingWriter(Writer(db))
    writer.fail_next(2)
    for _ in range(2):
        with pytest.raises(StorageError, match="injected insert failure"):
            await writer.write(TABLE, events(10), "token-c")
        assert await count(db) == 0
    await writer.write(TABLE, events(10), "token-c")
    assert await count(db) == 10
    assert (writer.attempts, writer.failures) == (3, 2)


async def test_a_rejected_insert_raises_storage_error(db: Database) -> None:
    writer = Writer(db)
    with pytest.raises(StorageError):
        await writer.write("no_such_table", events(1), "token-d")
    assert writer.stats.failures == 1
