"""EnrollmentClaims: concurrent read-backs share one query, bounded in keys per query."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from callsight.storage.claims import EnrollmentClaims
from callsight.storage.database import Database
from callsight.storage.group_writer import GroupWriter
from callsight.storage.sql import Sql


class ClaimsDb:
    """Keeps claims in insertion order; the first claim of an enrollment wins."""

    def __init__(self) -> None:
        self.claims: list[tuple[Any, ...]] = []
        self.queries: list[int] = []

    async def insert_rows(
        self, table: str, rows: Sequence[tuple[Any, ...]], column_names: Sequence[str]
    ) -> None:
        self.claims.extend(rows)

    async def named_rows(self, query: Sql, binary: Any = ()) -> list[dict[str, Any]]:
        await asyncio.sleep(0.001)
        ids = set(query.params["e"])
        self.queries.append(len(ids))
        winners: dict[tuple[str, str], str] = {}
        for tenant, enrollment, device, _ in self.claims:
            if enrollment in ids:
                winners.setdefault((tenant, enrollment), device)
        return [{"tenant_id": t, "enrollment_id": e, "winner": d} for (t, e), d in winners.items()]


def claims(db: ClaimsDb, max_batch: int = 1_000) -> EnrollmentClaims:
    database = cast(Database, db)
    return EnrollmentClaims(database, GroupWriter(database, linger_s=0.0), max_batch=max_batch)


async def test_one_winner_per_code_and_read_backs_share_queries() -> None:
    db = ClaimsDb()
    c = claims(db)
    won = await asyncio.gather(*(c.claim("t", f"e{i % 10}", f"d{i}", 0) for i in range(200)))
    assert sum(won) == 10
    assert [device for device, ok in zip(range(200), won, strict=True) if ok] == list(range(10))
    assert len(db.queries) <= 3


async def test_read_back_queries_are_bounded_in_keys() -> None:
    db = ClaimsDb()
    c = claims(db, max_batch=3)
    winners = await asyncio.gather(*(c.winner("t", f"e{i}") for i in range(10)))
    assert winners == [""] * 10
    assert max(db.queries) <= 3 and sum(db.queries) == 10
