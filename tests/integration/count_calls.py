"""Counts a tenant's calls in a chDB path from a separate process (one chDB path per process).

Usage: python -m tests.integration.count_calls DSN DATABASE TENANT_ID -> JSON on stdout.
"""

from __future__ import annotations

import json
import sys

from callsight.storage.database import connect


def main(dsn: str, database: str, tenant_id: str) -> None:
    client = connect(dsn, database)
    params = {"t": tenant_id}
    unique = client.query(
        "SELECT count() FROM calls FINAL WHERE tenant_id = {t:String}", parameters=params
    ).result_rows[0][0]
    ids = client.query(
        "SELECT call_id FROM calls FINAL WHERE tenant_id = {t:String}", parameters=params
    ).result_rows
    client.close()
    print(json.dumps({"unique": unique, "call_ids": [r[0] for r in ids]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
