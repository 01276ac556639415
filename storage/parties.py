"""The numbers and names of calls, stored once per (tenant, client, name) instead of once per call.

``calls`` is sorted by time, so a per-call ciphertext or blind index sits among unrelated rows and
does not compress (measured on 20M calls: 143 bytes a call, ~100 of them ciphertexts and blind
indexes). A call keeps only two small keys: ``client_key`` (the first 8 bytes of its number's
blind index) and ``name_key`` (a keyed 32-bit hash of its name, 0 for none). ``parties`` holds,
per (tenant, client_key, name_key), the blind index and the ciphertexts of the number and name.
Every party row of a key decrypts to the same number and name, so readers take any one of them.

The ingest writer hands over call rows with the number and name columns still in them;
``stored_inserts`` turns one such write into an insert into ``parties`` (one row per distinct key
of the flush) followed by the insert into ``calls``, so an acknowledged call always has its party
row. Readers look up only the parties of the rows they return (``lookup``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from callsight.storage.database import Database
from callsight.storage.sql import Sql
from callsight.storage.tables import DEFAULT_TABLES, Tables

CALLS = "calls"
PARTIES = "parties"
# Columns of the call rows the writer gets that are stored in ``parties``, not in ``calls``.
PARTY_COLUMNS = ("number_bidx", "number_enc", "name_enc")

PARTIES_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("client_key", pa.uint64()),
        ("name_key", pa.uint32()),
        ("number_bidx", pa.binary(32)),
        ("number_enc", pa.binary()),
        ("name_enc", pa.binary()),
        ("version", pa.uint64()),
    ]
)


def split_calls(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(party rows, call rows) of call rows that still hold the number and name columns.

    One party row per distinct (tenant, client_key, name_key), from the first call row with it;
    its version is that row's ``synced_at`` (any version would do: the rows of a key are equal
    but for their nonces).
    """
    keys = rows.select(["tenant_id", "client_key", "name_key"]).append_column(
        "row", pa.array(np.arange(rows.num_rows, dtype=np.int64))
    )
    first = keys.group_by(keys.column_names[:3], use_threads=False).aggregate([("row", "min")])
    picked = rows.take(first["row_min"])
    synced = pc.cast(picked["synced_at"], pa.int64())
    parties = pa.Table.from_arrays(
        [
            *(picked[name] for name in PARTIES_SCHEMA.names[:-1]),
            pc.cast(synced, pa.uint64()),
        ],
        schema=PARTIES_SCHEMA,
    )
    return parties, rows.drop_columns(list(PARTY_COLUMNS))


def stored_inserts(table: str, rows: pa.Table) -> list[tuple[str, pa.Table]]:
    """The inserts, in order, that store the rows the writer got for ``table``."""
    if table != CALLS:
        return [(table, rows)]
    parties, calls = split_calls(rows)
    return [(PARTIES, parties), (CALLS, calls)]


@dataclass(frozen=True)
class Party:
    """A client's number and, per name key, its names, still encrypted."""

    number_enc: bytes
    names_enc: dict[int, bytes]

    def name_enc(self, name_key: int) -> bytes:
        """The name of ``name_key`` (``b""`` for 0, no name, or a key no party row has)."""
        return self.names_enc.get(name_key, b"")


NO_PARTY = Party(b"", {})


async def lookup(
    db: Database,
    tenant_id: str,
    client_keys: Iterable[int],
    *,
    tables: Tables = DEFAULT_TABLES,
) -> dict[int, Party]:
    """The parties of ``client_keys``, read from the primary index (a page's worth of keys)."""
    wanted = sorted(set(client_keys))
    if not wanted:
        return {}
    rows = await db.named_rows(
        Sql(
            "SELECT client_key, name_key, number_enc, name_enc"
            f" FROM {tables.parties} WHERE tenant_id = {{tenant:String}}"
            " AND client_key IN {keys:Array(UInt64)} LIMIT 1 BY client_key, name_key",
            {"tenant": tenant_id, "keys": wanted},
        ),
        binary=["number_enc", "name_enc"],
    )
    found: dict[int, Party] = {}
    for r in rows:
        client_key = int(r["client_key"])
        party = found.get(client_key)
        if party is None:
            party = found[client_key] = Party(bytes(r["number_enc"]), {})
        party.names_enc[int(r["name_key"])] = bytes(r["name_enc"])
    return found
