"""Test doubles that inject faults into the product's seams."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from callsight.core.errors import StorageError, StorageRefused
from callsight.storage.database import PERMANENT_CODES
from callsight.storage.writer import Sink


class FaultInjectingWriter:
    """A ``Sink`` that fails on demand.

    A failed write never reaches the wrapped sink, like an insert refused by ClickHouse.
    """

    def __init__(self, inner: Sink) -> None:
        self._inner = inner
        self._fail_next = 0
        self._failing = False
        self._code: int | None = None
        self._tables: frozenset[str] | None = None
        self.attempts = 0
        self.failures = 0

    def fail_next(self, n: int, code: int | None = None, tables: Iterable[str] = ()) -> None:
        """Makes the next ``n`` writes (into ``tables``; none given: any) fail with ``code``."""
        self._fail_next = n
        self._aim(code, tables)

    def fail_until_cleared(self, code: int | None = None, tables: Iterable[str] = ()) -> None:
        """Makes every write (into ``tables``; none given: any) fail with ``code`` until
        ``clear()``."""
        self._failing = True
        self._aim(code, tables)

    def _aim(self, code: int | None, tables: Iterable[str]) -> None:
        self._code = code
        self._tables = frozenset(tables) or None

    def clear(self) -> None:
        """Lets every write through again."""
        self._failing = False
        self._fail_next = 0
        self._aim(None, ())

    def _error(self) -> StorageError:
        # Translated like storage.database does: a code ClickHouse refuses for good is a refusal.
        code = self._code
        if code is not None and code in PERMANENT_CODES:
            return StorageRefused(
                f"injected insert failure (Code: {code})", code, PERMANENT_CODES[code]
            )
        return StorageError(f"injected insert failure (Code: {self._code})", self._code)

    async def write(self, table: str, rows: pa.Table, token: str) -> None:
        """Raises an injected ``StorageError`` or passes the write on to the wrapped sink."""
        self.attempts += 1
        aimed = self._tables is None or table in self._tables
        if aimed and (self._failing or self._fail_next > 0):
            self._fail_next = max(0, self._fail_next - 1)
            self.failures += 1
            raise self._error()
        await self._inner.write(table, rows, token)
