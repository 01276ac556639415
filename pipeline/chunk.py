"""Rows of one ClickHouse table as plain columns, turned into Arrow once per insert.

Building a pyarrow array costs tens of microseconds however few its rows, so a batch of a few
records spent most of its decode in Arrow. ``decode`` therefore hands its rows on as a
``RowChunk``: one numpy array or Python list per column, in the schema's order. The batcher
buffers the chunks of a flush, concatenates each column once and builds one Arrow table from
them, off the event loop (``concat(...).to_arrow()``).

How a column becomes Arrow follows its schema type: a timestamp column is an int64 array of
milliseconds wrapped as is, a list column is a Python list of lists (flattened with offsets),
anything else goes through ``pa.array`` with the field's type (numpy arrays must already have
the matching dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa

# One column: a numpy array of the field's dtype, or a Python list of str or bytes values (or,
# for a list field, of lists of them). Numbers always come as numpy arrays.
Column: TypeAlias = npt.NDArray[Any] | list[Any]

# Counted per value of a str/bytes column on top of its characters (an Arrow offset).
_OFFSET_BYTES = 4


@dataclass(frozen=True, slots=True)
class RowChunk:
    """``num_rows`` rows with ``schema``'s columns, one array or list per field, in order."""

    schema: pa.Schema
    num_rows: int
    columns: tuple[Column, ...]
    # ``nbytes()`` when already known (a slice's share of its whole chunk's), else -1.
    known_nbytes: int = -1

    def filter(self, mask: npt.NDArray[np.bool_]) -> RowChunk:
        """The rows where ``mask`` is true, in order; the chunk itself when all are kept."""
        if len(mask) != self.num_rows:
            raise ValueError(f"mask of {len(mask)} for {self.num_rows} rows")
        keep = np.flatnonzero(mask)
        if len(keep) == self.num_rows:
            return self
        picks = keep.tolist()
        columns = tuple(
            values[keep] if isinstance(values, np.ndarray) else [values[i] for i in picks]
            for values in self.columns
        )
        return RowChunk(self.schema, len(picks), columns)

    def slice(self, start: int, stop: int, nbytes: int = -1) -> RowChunk:
        """Rows ``start`` to ``stop`` (numpy slices are views, list slices shallow copies);
        ``nbytes``, when given, is what the slice's ``nbytes()`` answers."""
        rows = slice(start, stop)
        start, stop, _ = rows.indices(self.num_rows)
        # itemgetter in map slices every column in C: this runs for every batch of every phone.
        columns = tuple(map(itemgetter(rows), self.columns))
        return RowChunk(self.schema, max(stop - start, 0), columns, nbytes)

    def nbytes(self) -> int:
        """An estimate of the Arrow buffers these rows will take, cheap enough for every add.

        numpy columns count their ``nbytes``; str and bytes columns their characters (not UTF-8
        bytes: close for the ASCII ids and ciphertexts that fill them) plus an offset per value;
        list columns their items' sizes plus an offset per row.
        """
        if self.known_nbytes >= 0:
            return self.known_nbytes
        total = 0
        # By the values, not the schema: iterating a pa.Schema builds a Field per column.
        for values in self.columns:
            if isinstance(values, np.ndarray):
                total += values.nbytes
            elif values and isinstance(values[0], list):
                total += _OFFSET_BYTES * (len(values) + sum(map(len, values)))
                total += sum(sum(map(len, items)) for items in values)
            else:
                total += _OFFSET_BYTES * len(values) + sum(map(len, values))
        return total

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table with exactly ``schema``."""
        arrays = [
            _array(values, field.type)
            for field, values in zip(self.schema, self.columns, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def concat(chunks: Sequence[RowChunk]) -> RowChunk:
    """The rows of ``chunks`` one after another, as one chunk; all must share one schema."""
    if not chunks:
        raise ValueError("nothing to concatenate")
    first = chunks[0]
    if len(chunks) == 1:
        return first
    for chunk in chunks[1:]:
        if chunk.schema is not first.schema and not chunk.schema.equals(first.schema):
            raise ValueError("chunks with different columns cannot be concatenated")
    columns = tuple(
        _concat_column([chunk.columns[i] for chunk in chunks]) for i in range(len(first.columns))
    )
    return RowChunk(first.schema, sum(chunk.num_rows for chunk in chunks), columns)


def _concat_column(parts: list[Column]) -> Column:
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return list(chain.from_iterable(parts))


def _array(values: Column, type_: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(type_):
        # Wraps the int64 buffer as is (no conversion pass); the array keeps ``ms`` alive.
        ms = np.ascontiguousarray(values, dtype=np.int64)
        return pa.Array.from_buffers(type_, len(ms), [None, pa.py_buffer(ms)])
    if pa.types.is_list(type_):
        # One flat array of every item plus offsets: far cheaper than pa.array on nested lists.
        lengths = np.fromiter(map(len, values), dtype=np.int32, count=len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = [item for items in values for item in items]
        return pa.ListArray.from_arrays(
            pa.array(offsets), _array(flat, type_.value_type), type=type_
        )
    return pa.array(values, type_)
