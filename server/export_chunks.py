"""How an export is streamed: rows read in chunks, encoded as Arrow IPC or CSV, resumable.

Every export (ExportCalls, ExportContacts, ExportLeads) is a walk over keyset chunks: ``fetch``
reads and decrypts the rows after a cursor (under the report quota, on the report database) and
the walk sends them. While a chunk is being sent the next one is already being read, so the
database and the network work at the same time; reading never runs further ahead than that one
chunk, so a slow client holds one chunk in memory, and HTTP/2 flow control (each message is
awaited before the next) holds the rest.

A message holds at most ``chunk_rows`` rows and at most ``MAX_MESSAGE_BYTES`` (a read that
encodes larger is sent as several messages), so it fits gRPC's default 4 MiB receive limit; a read
may hold more rows than a message (ExportCalls reads ``READ_ROWS`` at a time: each read has a fixed
cost in ClickHouse).
Every message carries a resume token: the key of its last row and the rows sent so far, signed
with the page-token key and bound to the RPC, the tenant, the filter and the format, under the
export's first snapshot (rows received later are not in a resumed export either).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from callsight.core.errors import InvalidArgument, ResourceExhausted
from callsight.pipeline.paging import Page, PageTokens, fingerprint
from callsight.v1 import common_pb2

DEFAULT_CHUNK_ROWS = 50_000
MAX_CHUNK_ROWS = 100_000
# Under gRPC's default 4 MiB receive limit, with room for the message's other fields.
MAX_MESSAGE_BYTES = 4 * 2**20 - 64 * 2**10
# Messages are cut to about this share of MAX_MESSAGE_BYTES, from the rows' measured size.
_FILL = 0.9
# A chunk refused by the tenant's report rate waits this long in all before the export fails.
MAX_QUOTA_WAIT_S = 60.0
_FORMATS = {
    common_pb2.EXPORT_FORMAT_UNSPECIFIED: "arrow",
    common_pb2.EXPORT_FORMAT_ARROW: "arrow",
    common_pb2.EXPORT_FORMAT_CSV: "csv",
}


def chunk_rows(requested: int) -> int:
    """Rows per chunk to read: 0 means the default; over the maximum is refused."""
    if requested == 0:
        return DEFAULT_CHUNK_ROWS
    if requested > MAX_CHUNK_ROWS:
        raise InvalidArgument(
            f"chunk_rows {requested} is over the maximum of {MAX_CHUNK_ROWS:,}; ask for fewer"
        )
    return requested


def export_format(value: int) -> str:
    """``arrow`` or ``csv`` for an ExportFormat number."""
    name = _FORMATS.get(value)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument(f"format {value} is not an ExportFormat value (1 ARROW, 2 CSV)")
    return str(name)


@dataclass(frozen=True)
class Resume:
    """Where an export starts: after ``cursor`` (None: the beginning), ``rows_so_far`` sent."""

    bound_to: str
    snapshot_ms: int
    cursor: list[Any] | None
    rows_so_far: int


def open_export(
    tokens: PageTokens, rpc: str, tenant_id: str, request_key: bytes, token: str, now_ms: int
) -> Resume:
    """Checks a resume token against the RPC, tenant and request (filter and format)."""
    bound_to = fingerprint(rpc, tenant_id, request_key)
    page: Page = tokens.open(token, bound_to, 0, now_ms)
    if page.cursor is None:
        return Resume(bound_to, page.snapshot_ms, None, 0)
    match page.cursor:
        case [int(rows_so_far), *key] if rows_so_far >= 0 and key:
            return Resume(bound_to, page.snapshot_ms, key, rows_so_far)
    raise malformed()


def malformed() -> InvalidArgument:
    """The error for a signed token whose cursor does not fit the export."""
    return InvalidArgument(
        "resume_token does not belong to this export; start again without a token"
    )


@dataclass(frozen=True)
class Rows:
    """One read of an export: its rows (decrypted, in the export's columns) and the key of each
    row's end (``key_of(i)``: the cursor after row ``i``); ``last`` when nothing follows."""

    table: pa.Table
    key_of: Callable[[int], list[Any]]
    last: bool


@dataclass(frozen=True)
class _Message:
    data: bytes
    rows: int
    key: list[Any]


def _csv_time(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # Arrow writes a zoned timestamp twenty times slower than a naive one (124 against 6 ms per
    # 50,000 values; two such columns were about 40% of a CSV export's CPU): the same text,
    # "2026-01-02 03:04:05.006Z", made from the naive UTC time. As text the cell is quoted; a
    # CSV reader gets the same value.
    naive = pc.cast(column, pa.timestamp(column.type.unit))
    text = pc.binary_join_element_wise(pc.cast(naive, pa.string()), "Z", "")
    return pc.if_else(pc.is_null(column), pa.scalar(None, pa.string()), text)


def encode(table: pa.Table, fmt: str, header: bool) -> bytes:
    """A table as one complete Arrow IPC stream (schema + one batch) or as CSV."""
    if fmt == "csv":
        for i, field in enumerate(table.schema):
            if pa.types.is_list(field.type):
                # CSV has no lists: a list of texts (a contact's numbers, a lead's tags) is one
                # cell, its items separated by "; ".
                joined = pc.binary_join(table.column(i), "; ")
                table = table.set_column(i, field.name, joined)
            elif pa.types.is_timestamp(field.type) and field.type.tz in ("UTC", "+00:00"):
                table = table.set_column(i, field.name, _csv_time(table.column(i)))
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header))
        return bytes(sink.getvalue())
    sink = pa.BufferOutputStream()
    batches = table.combine_chunks().to_batches()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_batch(batches[0] if batches else pa.RecordBatch.from_pylist([], table.schema))
    return bytes(sink.getvalue())


def _rows_that_fit(rows: int, size: int, max_rows: int) -> int:
    """Rows per message for rows that encoded as ``size`` bytes: about _FILL of the limit."""
    return max(1, min(max_rows, int(MAX_MESSAGE_BYTES * _FILL * rows / max(1, size))))


def _messages(rows: Rows, fmt: str, header: bool, max_rows: int) -> list[_Message]:
    """The rows as messages of at most ``max_rows`` rows and MAX_MESSAGE_BYTES each (the first
    with the CSV header)."""
    table = rows.table.combine_chunks()
    if table.num_rows == 0:
        return [_Message(encode(table, fmt, header), 0, [])]
    # The first message's size is estimated (the IPC size of all rows; CSV text is about twice
    # Arrow's); each later one's from the message before it.
    batches = table.to_batches()
    size = sum(pa.ipc.get_record_batch_size(b) for b in batches) * (2 if fmt == "csv" else 1)
    step = _rows_that_fit(table.num_rows, size, max_rows)
    out: list[_Message] = []
    start = 0
    while start < table.num_rows:
        piece = table.slice(start, step)
        data = encode(piece, fmt, header and start == 0)
        if len(data) > MAX_MESSAGE_BYTES and step > 1:
            step //= 2  # larger than estimated: the same rows again, halved
            continue
        start += piece.num_rows
        out.append(_Message(data, piece.num_rows, rows.key_of(start - 1)))
        step = _rows_that_fit(piece.num_rows, len(data), max_rows)
    return out


async def quota_waits(read: Callable[[], Awaitable[Rows]]) -> Rows:
    """``read`` again while the tenant's report rate refuses it, up to MAX_QUOTA_WAIT_S: an
    export waits its turn between chunks instead of failing half-way."""
    waited = 0.0
    while True:
        try:
            return await read()
        except ResourceExhausted as exc:
            delay = exc.retry_after_s
            if delay is None or waited + delay > MAX_QUOTA_WAIT_S:
                raise
            waited += delay
            await asyncio.sleep(delay)


async def stream(
    tokens: PageTokens,
    resume: Resume,
    fmt: str,
    fetch: Callable[[list[Any] | None], Awaitable[Rows]],
    max_rows: int,
) -> AsyncIterator[common_pb2.ExportChunk]:
    """The chunks of an export from ``resume`` on, at most ``max_rows`` rows each;
    ``fetch(cursor)`` reads the rows after it.

    The read of the next rows runs while the current ones are sent; it is cancelled when the
    client goes away. A message's ``last`` is known once the read after it came back (an export
    ending exactly on a read's edge ends with an empty message).
    """
    sent = resume.rows_so_far
    header = resume.cursor is None

    async def read(cursor: list[Any] | None, header: bool) -> tuple[Rows, list[_Message]]:
        rows = await quota_waits(lambda: fetch(cursor))
        return rows, await asyncio.to_thread(_messages, rows, fmt, header, max_rows)

    pending: asyncio.Task[tuple[Rows, list[_Message]]] | None = asyncio.ensure_future(
        read(resume.cursor, header)
    )

    def chunk(message: _Message, last: bool) -> common_pb2.ExportChunk:
        nonlocal sent
        sent += message.rows
        token = (
            "" if last else tokens.issue(resume.bound_to, [sent, *message.key], resume.snapshot_ms)
        )
        return common_pb2.ExportChunk(
            data=message.data, rows=message.rows, resume_token=token, rows_so_far=sent, last=last
        )

    try:
        # The newest read's last message waits for the read after it, which says whether it is
        # the export's last.
        held: _Message | None = None
        while pending is not None:
            rows, messages = await pending
            pending = None
            if not rows.last and rows.table.num_rows:
                pending = asyncio.ensure_future(read(messages[-1].key, False))
            if rows.table.num_rows == 0 and held is not None:
                messages = []  # the empty read only says that the held message is the last
            if held is not None:
                yield chunk(held, last=pending is None and not messages)
                held = None
            for message in messages[:-1]:
                yield chunk(message, last=False)
            if messages:
                if pending is None:
                    yield chunk(messages[-1], last=True)
                else:
                    held = messages[-1]
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
