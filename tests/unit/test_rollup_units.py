"""How a range is cut into rollup units: whole UTC months, and stretches of whole UTC days."""

from __future__ import annotations

from datetime import UTC, datetime

from storage.rollups import Unit, units

HOUR_MS = 3_600_000


def _ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def _shape(found: list[Unit]) -> list[tuple[str, int]]:
    return [(u.kind, u.code) for u in found]


def test_thirty_days_across_a_month_end_are_two_stretches() -> None:
    found = units(_ms(2026, 10, 29, 18) + HOUR_MS // 2, _ms(2026, 11, 25, 21))
    assert _shape(found) == [("days", 20261030), ("days", 20261101)]
    assert found[0].start_ms == _ms(2026, 10, 30) and found[0].end_ms == _ms(2026, 11, 1)
    assert found[1].end_ms == _ms(2026, 11, 25)


def test_whole_months_between_stretches_without_gaps() -> None:
    found = units(_ms(2025, 11, 28, 18), _ms(2026, 2, 3, 5))
    assert _shape(found) == [
        ("days", 20251129),
        ("month", 202512),
        ("month", 202601),
        ("days", 20260201),
    ]
    assert all(a.end_ms == b.start_ms for a, b in zip(found, found[1:], strict=False))
    assert found[0].start_ms == _ms(2025, 11, 29) and found[-1].end_ms == _ms(2026, 2, 3)


def test_a_range_on_month_edges_is_whole_months_only() -> None:
    found = units(_ms(2026, 1, 1), _ms(2026, 3, 1))
    assert _shape(found) == [("month", 202601), ("month", 202602)]


def test_no_whole_day_no_units() -> None:
    assert units(_ms(2026, 5, 3, 1), _ms(2026, 5, 3, 23)) == []
    assert units(_ms(2026, 5, 3, 1), _ms(2026, 5, 4, 23)) == []
    assert _shape(units(_ms(2026, 5, 3), _ms(2026, 5, 4))) == [("days", 20260503)]
