"""Column-oriented inserts of Arrow tables into ClickHouse, and the ``Sink`` the batcher writes to.

Every insert carries an ``insert_deduplication_token``: the ingest tables set
``non_replicated_deduplication_window``, so re-sending an insert with the same token after a
failure whose outcome is unknown is a no-op instead of a second copy. A write of call rows is two
inserts, its parties first (``storage.parties``), each deduplicated by its own token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from callsight.storage.database import Database
from callsight.storage.parties import stored_inserts


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
    """Writes Arrow tables to ClickHouse as column-oriented inserts (one per stored table)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.stats = WriterStats()

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        """Stores ``rows`` in ``table`` (and, for calls, their parties first), one insert per
        table; a retry with the same ``token`` repeats only the inserts that did not commit."""
        started = time.perf_counter()
        try:
            # Splitting 50,000 call rows takes a few milliseconds; keep it off the event loop.
            for target, part in await asyncio.to_thread(stored_inserts, table, rows):
                await self._insert(target, part, token if target == table else f"{token}-{target}")
        except BaseException:
            self.stats.failures += 1
            raise
        finally:
            self.stats.seconds += time.perf_counter() - started
        self.stats.rows += rows.num_rows

    async def _insert(self, table: str, rows: pa.Table, token: str) -> None:
        settings = {"insert_deduplication_token": token}
        await self._db.run(lambda c: c.insert_arrow(table, rows, settings=settings))
        self.stats.inserts += 1
