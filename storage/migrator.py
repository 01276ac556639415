"""Applies the numbered SQL migrations in ``storage/migrations/`` in order, once each.

Each file ``NNNN_name.sql`` holds statements separated by ``;``. Applied versions are recorded in
``schema_migrations``; statements are written to be idempotent (``IF NOT EXISTS``), so a start-up
that died half-way through a migration simply runs it again. With a cluster name every statement
is rendered for the cluster first (``storage.cluster``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import structlog

from callsight.storage.cluster import render
from callsight.storage.database import Database
from callsight.storage.sql import Sql

log = structlog.get_logger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY tuple()
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _split(sql: str) -> tuple[str, ...]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())


def available() -> list[Migration]:
    """Every migration shipped with this build, in version order."""
    found = []
    for entry in resources.files("callsight.storage.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), _split(entry.read_text())))
    return sorted(found, key=lambda m: m.version)


async def applied(db: Database, cluster: str | None = None) -> set[int]:
    """Versions recorded as applied."""
    for statement in render(_LEDGER.strip(), cluster):
        await db.command(statement)
    rows = await db.named_rows(Sql("SELECT version FROM schema_migrations FINAL"))
    return {int(r["version"]) for r in rows}


async def migrate(db: Database, until: int | None = None, cluster: str | None = None) -> list[int]:
    """Applies every pending migration (up to version ``until``, when given), rendered for
    ``cluster`` when one is named; returns the versions applied now."""
    done = await applied(db, cluster)
    ran = []
    for migration in available():
        if migration.version in done or (until is not None and migration.version > until):
            continue
        started = time.monotonic()
        for statement in migration.statements:
            for rendered in render(statement, cluster):
                await db.command(rendered)
        await db.insert_rows(
            "schema_migrations",
            [(migration.version, migration.name, datetime.now(UTC))],
            ["version", "name", "applied_at"],
        )
        ran.append(migration.version)
        log.info(
            "migration applied",
            version=migration.version,
            name=migration.name,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
    return ran
