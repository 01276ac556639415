"""Test doubles that inject faults into the product's seams."""

from __future__ import annotations

import pyarrow as pa

from callsight.core.errors import StorageError
from callsight.storage.writer import Sink


class FaultInjectingWriter:
    """A ``Sink`` that fails on demand.

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
