"""Numbers a tenant keeps out of reports (personal numbers), and erasure of a number's data."""

from __future__ import annotations

import time

from storage.database import Database


async def set_excluded(db: Database, tenant_id: str, numbers: dict[bytes, bytes]) -> int:
    """Replaces the tenant's excluded numbers with ``numbers`` (blind index -> ciphertext)."""
    current = {
        bytes(r[0])
        for r in await db.query(
            "SELECT number_bidx FROM excluded_numbers FINAL WHERE tenant_id = {t:String}",
            {"t": tenant_id},
        )
    }
    version = time.time_ns()
    rows = [(tenant_id, bidx, enc, version, 0) for bidx, enc in numbers.items()]
    # Numbers no longer listed get a deleted version, which FINAL leaves out.
    rows += [(tenant_id, bidx, b"", version, 1) for bidx in current - numbers.keys()]
    if rows:
        await db.insert_rows(
            "excluded_numbers",
            rows,
            ["tenant_id", "number_bidx", "number_enc", "version", "is_deleted"],
        )
    return len(numbers)
