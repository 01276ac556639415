"""The one way callsight reaches ClickHouse: a client factory from the DSN and an async facade.

``chdb:///path`` opens the embedded engine in this process; ``http(s)://...`` reaches a server or
cluster through the same clickhouse-connect ``Client`` API. chDB has no async client and one
client serializes its calls, so every call runs on a small thread pool that gives each worker
thread a client of its own: the engine releases the GIL and the workers run concurrently.

Two ``Database`` objects on the same DSN are two pools with clients of their own: the server gives
ingest and reports one each, so report queries never occupy a thread that an insert waits for,
and the reports' clients carry settings (memory, threads, time) that bound every query they run.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from callsight.core.errors import InvalidArgument, StorageError, StorageRefused
from callsight.storage.cluster import mutation
from callsight.storage.sql import Sql

T = TypeVar("T")

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CODE = re.compile(r"Code: (\d+)")


def connect(
    dsn: str, database: str | None = None, settings: Mapping[str, Any] | None = None
) -> Client:
    """Opens a clickhouse-connect client for ``dsn``; ``database`` overrides the DSN's own.

    ``settings`` (ClickHouse settings such as ``max_memory_usage``) apply to every query the
    client runs.
    """
    scheme = urlsplit(dsn).scheme
    if scheme not in ("chdb", "http", "https"):
        raise InvalidArgument(f"unknown DSN scheme {scheme!r}; use chdb:///path or http(s)://")
    try:
        client = clickhouse_connect.get_client(dsn=dsn, settings=dict(settings or {}))
        if database:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{_checked(database)}`")
            client.database = database
    except ClickHouseError as exc:
        raise _storage_error(exc) from exc
    return client


def _checked(database: str) -> str:
    # Identifiers cannot be bound as parameters, so they are validated instead.
    if not _DATABASE_NAME.match(database):
        raise InvalidArgument(f"database name {database!r} must match {_DATABASE_NAME.pattern}")
    return database


# ClickHouse error codes that say the request itself is wrong (its types, columns or SQL), so
# sending it again can never succeed. Every other error (timeouts, TOO_MANY_PARTS 252,
# MEMORY_LIMIT_EXCEEDED 241, network 209/210, Keeper 999, no code at all) may pass on a retry.
PERMANENT_CODES: Mapping[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    8: "THERE_IS_NO_COLUMN",
    10: "NOT_FOUND_COLUMN_IN_BLOCK",
    15: "DUPLICATE_COLUMN",
    16: "NO_SUCH_COLUMN_IN_TABLE",
    20: "NUMBER_OF_COLUMNS_DOESNT_MATCH",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    36: "BAD_ARGUMENTS",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    43: "ILLEGAL_TYPE_OF_ARGUMENT",
    44: "ILLEGAL_COLUMN",
    47: "UNKNOWN_IDENTIFIER",
    48: "NOT_IMPLEMENTED",
    49: "LOGICAL_ERROR",
    53: "TYPE_MISMATCH",
    60: "UNKNOWN_TABLE",
    62: "SYNTAX_ERROR",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    81: "UNKNOWN_DATABASE",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    190: "SIZES_OF_ARRAYS_DONT_MATCH",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
}


def _storage_error(exc: Exception) -> StorageError:
    # The driver parses the code (HTTP header or chDB message); the pattern is a fallback.
    code: int | None = getattr(exc, "code", None)
    if code is None:
        match = _CODE.search(str(exc))
        code = int(match.group(1)) if match else None
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = f"ClickHouse error: {first_line[:500]}"
    if code is not None and code in PERMANENT_CODES:
        name = getattr(exc, "name", None) or PERMANENT_CODES[code]
        return StorageRefused(message, code, name)
    return StorageError(message, code=code)


class Database:
    """Async access to one ClickHouse database through a pool of per-thread clients.

    At most ``pool_size`` calls run at once; more wait for a thread. ``settings`` apply to every
    query of this pool's clients; ``role`` names its threads (``clickhouse-reports-0``).
    """

    def __init__(
        self,
        dsn: str,
        database: str,
        pool_size: int = 4,
        settings: Mapping[str, Any] | None = None,
        role: str = "",
        cluster: str | None = None,
    ) -> None:
        self.dsn = dsn
        # With a cluster name, run-time mutations act on every shard's local table.
        self.cluster = cluster
        self.name = _checked(database)
        self.settings: Mapping[str, Any] = dict(settings or {})
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=pool_size,
            thread_name_prefix=f"clickhouse-{role}" if role else "clickhouse",
        )
        self._closed = False
        # Column types per (table, columns) for row inserts: without them clickhouse-connect asks
        # the server for the table's structure before every insert (a tenth of a directory write).
        self._insert_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        # Opening the first client here creates the database and fails fast on a bad DSN.
        self._clients.append(connect(dsn, database, self.settings))

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = connect(self.dsn, self.name, self.settings)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    async def run(self, fn: Callable[[Client], T]) -> T:
        """Runs ``fn(client)`` on a pool thread; ClickHouse errors become ``StorageError``."""
        if self._closed:
            raise StorageError("database is closed")

        def call() -> T:
            try:
                return fn(self._client())
            except ClickHouseError as exc:
                raise _storage_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        binary: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]:
        """Runs a SELECT with server-side bound parameters and returns its rows as tuples.

        For tests and tools that count; the product reads rows by name (``named_rows``).

        Columns named in ``binary`` (ciphertexts, wrapped keys) come back as ``bytes``.
        """
        formats: dict[str, str | dict[str, str]] = dict.fromkeys(binary, "bytes")
        params = dict(parameters or {})
        return await self.run(
            lambda c: [
                tuple(r)
                for r in c.query(sql, parameters=params, column_formats=formats).result_rows
            ]
        )

    async def named_rows(self, query: Sql, binary: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Runs a SELECT fragment with its bound parameters; each row maps column name -> value.

        Columns named in ``binary`` (ciphertexts) come back as ``bytes``.
        """
        formats: dict[str, str | dict[str, str]] = dict.fromkeys(binary, "bytes")
        params = dict(query.params)
        return await self.run(
            lambda c: list(
                c.query(query.text, parameters=params, column_formats=formats).named_results()
            )
        )

    async def command(self, sql: str | Sql, parameters: Mapping[str, Any] | None = None) -> Any:
        """Runs a statement that returns no rows (DDL, DELETE, ...); a fragment binds its own."""
        if isinstance(sql, Sql):
            sql = sql.bind(**(parameters or {}))
            text, params = sql.text, dict(sql.params)
        else:
            text, params = sql, dict(parameters or {})
        text = mutation(text, self.cluster)
        return await self.run(lambda c: c.command(text, parameters=params))

    async def insert_rows(
        self,
        table: str,
        rows: Sequence[tuple[Any, ...]],
        column_names: Sequence[str],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Inserts a few rows; the ingest path uses column-oriented inserts instead.

        The table's column types are read once per process (tables change only by migrations,
        which run before any write).
        """
        names = list(column_names)
        key = (table, tuple(names))

        def insert(c: Client) -> None:
            types = self._insert_types.get(key)
            if types is None:
                described = c.query(
                    "SELECT name, type FROM system.columns"
                    " WHERE database = currentDatabase() AND table = {t:String}",
                    parameters={"t": table},
                ).result_rows
                by_name = {str(name): str(kind) for name, kind in described}
                types = [by_name[name] for name in names]
                self._insert_types[key] = types
            c.insert(
                table,
                list(rows),
                column_names=names,
                column_type_names=types,
                settings=dict(settings or {}),
            )

        await self.run(insert)

    def close(self) -> None:
        """Closes every client; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
