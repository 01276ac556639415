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

from storage.database import Database
from storage.errors import StorageError


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


class FaultInjectingWriter:
    """Test-only: a ``Sink`` that fails on demand, for tests and the load tester.

    A failed write never reaches the wrapped sink, like an insert refused by ClickHouse.
    """

    def __init__(self, inner: Sink) -> None:
        self._inner = inner
        self._fail_next = 0
        self._failing = False
        self.attempts = 0
        self.failures = 0

    def fail_next(self, n: int) -> None:
        """Makes the next ``n`` writes raise ``StorageError``."""
        self._fail_next = n

    def fail_until_cleared(self) -> None:
        """Makes every write raise ``StorageError`` until ``clear()``."""
        self._failing = True

    def clear(self) -> None:
        """Lets every write through again."""
        self._failing = False
        self._fail_next = 0

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        """Raises an injected ``StorageError`` or passes the write on to the wrapped sink."""
        self.attempts += 1
        if self._failing or self._fail_next > 0:
            self._fail_next = max(0, self._fail_next - 1)
            self.failures += 1
            raise StorageError("injected insert failure")
        await self._inner.write(table, rows, token)
