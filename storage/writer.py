"""Column-oriented inserts of Arrow tables into ClickHouse, and the ``Sink`` the batcher writes to.

Every insert carries an ``insert_deduplication_token``: the ingest tables set
``non_replicated_deduplication_window``, so re-sending an insert with the same token after a
failure whose outcome is unknown is a no-op instead of a second copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from callsight.storage.database import Database


class Sink(Protocol):
    """Where a batch of rows goes; ``write`` returns only once the rows are committed."""

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        """Inserts ``rows`` (columns named and typed as ``table``'s) deduplicated by ``token``."""
        ...


@dataclass
class WriterStats:
    """Running totals for progress output and metrics."""

    inserts: int = 0
    rows: int = 0
    failures: int = 0
    seconds: float = 0.0


class Writer:
    """Writes Arrow tables to ClickHouse as one column-oriented insert each."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.stats = WriterStats()

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        """One insert of ``rows`` into ``table``; a retry with the same ``token`` is a no-op."""
        settings = {"insert_deduplication_token": token}
        started = time.perf_counter()
        try:
            await self._db.run(lambda c: c.insert_arrow(table, rows, settings=settings))
        except BaseException:
            self.stats.failures += 1
            raise
        finally:
            self.stats.seconds += time.perf_counter() - started
        self.stats.inserts += 1
        self.stats.rows += rows.num_rows
