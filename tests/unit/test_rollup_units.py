"""How a range is cut into rollup units: settled whole UTC months, and settled whole UTC days."""

from __future__ import annotations

from datetime import UTC, datetime

from callsight.storage.rollups import RollupSettings, Unit, units

HOUR_MS = 3_600_000
LATER = 10**13  # long after every range here: everything is settled


def _ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def _shape(found: list[Unit]) -> list[tuple[str, int]]:
    return [(u.kind, u.code) for u in found]


def test_days_around_whole_months_without_gaps() -> None:
    found = units(_ms(2025, 11, 28, 18), _ms(2026, 2, 3, 5), LATER)
    assert _shape(found) == [
        ("day", 20251129),
        ("day", 20251130),
        ("month", 202512),
        ("month", 202601),
        ("day", 20260201),
        ("day", 20260202),
    ]
    assert all(a.end_ms == b.start_ms for a, b in zip(found, found[1:], strict=False))
    assert found[0].start_ms == _ms(2025, 11, 29) and found[-1].end_ms == _ms(2026, 2, 3)


def test_a_range_on_month_edges_is_whole_months_only() -> None:
    assert _shape(units(_ms(2026, 1, 1), _ms(2026, 3, 1), LATER)) == [
        ("month", 202601),
        ("month", 202602),
    ]


def test_the_latest_days_are_left_to_the_calls() -> None:
    now = _ms(2026, 11, 28, 21)
    found = units(_ms(2026, 10, 29, 18), _ms(2026, 11, 28, 18), now)
    # Days end a day before now; October ended four weeks ago but is not whole in the range.
    assert found[0].code == 20261030 and found[-1].code == 20261126
    assert len(found) == 28 and not any(u.is_month for u in found)
    # A month that ended less than three days ago is rolled up day by day.
    found = units(_ms(2026, 10, 1), _ms(2026, 11, 3), _ms(2026, 11, 3, 12))
    assert _shape(found)[0] == ("day", 20261001) and len(found) == 32
    found = units(_ms(2026, 10, 1), _ms(2026, 11, 3), _ms(2026, 11, 4, 12))
    assert _shape(found) == [("month", 202610), ("day", 20261101), ("day", 20261102)]


def test_no_settled_whole_day_no_units() -> None:
    assert units(_ms(2026, 5, 3, 1), _ms(2026, 5, 4, 23), LATER) == []
    assert units(_ms(2026, 5, 3), _ms(2026, 5, 6), _ms(2026, 5, 4, 12)) == []
    assert _shape(units(_ms(2026, 5, 3), _ms(2026, 5, 4), LATER)) == [("day", 20260503)]


def test_settle_times_come_from_the_settings() -> None:
    now = _ms(2026, 5, 6, 12)
    # By default a day is rolled up once it ended a day ago, a month three days after its end.
    assert _shape(units(_ms(2026, 5, 3), _ms(2026, 5, 7), now)) == [
        ("day", 20260503),
        ("day", 20260504),
    ]
    eager = RollupSettings(day_settle_ms=0, month_settle_ms=0)
    assert _shape(units(_ms(2026, 5, 3), _ms(2026, 5, 7), now, eager)) == [
        ("day", 20260503),
        ("day", 20260504),
        ("day", 20260505),
    ]
    found = units(_ms(2026, 4, 1), _ms(2026, 5, 2), _ms(2026, 5, 2), eager)
    assert _shape(found) == [("month", 202604), ("day", 20260501)]
    assert RollupSettings().read_days() == {"month": 30, "day": 2, "span": 2}
