"""The Arrow schemas that decode() builds, as the writer stores them, match the migrated
ClickHouse tables column for column."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from callsight.pipeline.encode import SCHEMAS
from callsight.storage.database import Database
from callsight.storage.parties import stored_inserts

# Every table the writer inserts into, with the Arrow schema it inserts there.
STORED = {
    target: rows.schema
    for table, schema in SCHEMAS.items()
    for target, rows in stored_inserts(table, schema.empty_table())
}

_SCALARS = {
    pa.string(): "String",
    pa.binary(): "String",
    pa.bool_(): "Bool",
    pa.uint8(): "UInt8",
    pa.uint32(): "UInt32",
    pa.uint64(): "UInt64",
    pa.int32(): "Int32",
    pa.int64(): "Int64",
    pa.float32(): "Float32",
    pa.float64(): "Float64",
    pa.timestamp("ms", tz="UTC"): "DateTime64(3, 'UTC')",
}


def clickhouse_type(arrow: pa.DataType) -> str:
    """The ClickHouse type an Arrow column of this type is written to without conversion."""
    if pa.types.is_fixed_size_binary(arrow):
        return f"FixedString({arrow.byte_width})"
    if pa.types.is_list(arrow):
        return f"Array({clickhouse_type(arrow.value_type)})"
    return _SCALARS[arrow]


def _plain(ch_type: str) -> str:
    # LowCardinality is a storage choice; the values written are the same.
    return re.sub(r"LowCardinality\((.*)\)", r"\1", ch_type)


def test_every_arrow_type_has_a_clickhouse_type() -> None:
    assert clickhouse_type(pa.list_(pa.binary(32))) == "Array(FixedString(32))"
    with pytest.raises(KeyError):
        clickhouse_type(pa.float16())


def test_calls_are_stored_with_their_parties() -> None:
    assert sorted(STORED) == ["calls", "contacts", "parties", "telemetry"]
    assert "number_enc" in SCHEMAS["calls"].names and "number_enc" not in STORED["calls"].names


@pytest.mark.parametrize("table", sorted(STORED))
async def test_arrow_schema_matches_the_migrated_table(db: Database, table: str) -> None:
    rows = await db.query(
        "SELECT name, type, default_kind FROM system.columns"
        " WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        {"t": table},
    )
    assert rows, f"table {table} does not exist after migrations"
    # Columns ClickHouse computes itself are never written; DEFAULT ones may be left out.
    written = [(name, _plain(kind)) for name, kind, default in rows if default == ""]
    optional = {name for name, _, default in rows if default == "DEFAULT"}
    schema = STORED[table]
    arrow = [(f.name, clickhouse_type(f.type)) for f in schema if f.name not in optional]
    assert arrow == written
