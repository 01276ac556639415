"""Day states from per-part maxima: each part of calls is read once, and what a read sees counts."""

from __future__ import annotations

from typing import Any

from callsight.storage.rollups import _PartDays
from callsight.storage.sql import Sql


class Calls:
    """Stands in for the one query _PartDays makes: rows of part, day (yyyymmdd), max block."""

    def __init__(self, parts: dict[str, dict[int, int]]) -> None:
        self.parts = parts  # what a read sees now, by part name
        self.reads: list[list[str]] = []

    async def named_rows(self, query: Sql) -> list[dict[str, Any]]:
        assert "_part NOT IN {known:Array(String)}" in query.text
        seen = [name for name in sorted(self.parts) if name not in query.params["known"]]
        self.reads.append(seen)
        return [
            {"part": name, "day": day, "block": block}
            for name in seen
            for day, block in self.parts[name].items()
        ]


def _listed(*names: str) -> list[tuple[str, str]]:
    return [(name, f"/store/t/{name}/") for name in names]


async def test_each_part_is_read_once_and_days_take_the_highest_block() -> None:
    calls = Calls({"202611_1_1_0": {20261101: 1, 20261102: 1}, "202611_2_2_0": {20261102: 2}})
    part_days = _PartDays()
    maxima = await part_days.day_maxima(calls, "t1", _listed("202611_1_1_0", "202611_2_2_0"))
    assert maxima == {20261101: 1, 20261102: 2}
    assert calls.reads == [["202611_1_1_0", "202611_2_2_0"]]
    again = await part_days.day_maxima(calls, "t1", _listed("202611_1_1_0", "202611_2_2_0"))
    assert again == maxima and len(calls.reads) == 1  # nothing read the second time
    # Another tenant's rows of the same parts are read for that tenant.
    await part_days.day_maxima(calls, "t2", _listed("202611_1_1_0"))
    assert len(calls.reads) == 2


async def test_a_new_part_is_read_and_a_merge_seen_by_the_read_counts() -> None:
    calls = Calls({"202611_1_1_0": {20261101: 1}})
    part_days = _PartDays()
    await part_days.day_maxima(calls, "t1", _listed("202611_1_1_0"))
    # An insert lands (block 3), then the listed new part is merged away before the read: the
    # merged part is read instead, so day 2's block 3 still counts.
    calls.parts = {"202611_1_1_0": {20261101: 1}, "202611_2_3_1": {20261102: 3}}
    maxima = await part_days.day_maxima(calls, "t1", _listed("202611_1_1_0", "202611_3_3_0"))
    assert maxima == {20261101: 1, 20261102: 3}
    # Only listed parts are remembered: the merged one is read again until it is listed.
    calls.reads.clear()
    await part_days.day_maxima(calls, "t1", _listed("202611_2_3_1"))
    assert calls.reads == [["202611_1_1_0", "202611_2_3_1"]]


async def test_remembers_a_bounded_number_of_parts() -> None:
    calls = Calls({f"202611_{i}_{i}_0": {20261101: i} for i in range(1, 6)})
    part_days = _PartDays(max_entries=2)
    for i in range(1, 6):
        await part_days.day_maxima(calls, "t1", _listed(f"202611_{i}_{i}_0"))
    calls.reads.clear()
    await part_days.day_maxima(calls, "t1", _listed("202611_1_1_0"))
    assert calls.reads, "the oldest part was forgotten and is read again"
