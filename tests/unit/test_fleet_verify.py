"""The load tester's comparison of ground truth with report and database counts (no server)."""

from __future__ import annotations

from collections import Counter

from callsight.loadtest.verify import (
    DAY_MS,
    WINDOW_MS,
    Counts,
    TenantTruth,
    Verification,
    compare_database,
    compare_reports,
    windows,
)
from callsight.v1 import common_pb2 as c


def _truth() -> TenantTruth:
    truth = TenantTruth("t1", "csk_x", from_ms=1_000, to_ms=5 * DAY_MS)
    truth.by_employee["e1"] = Counter({c.CALL_TYPE_INCOMING: 3, c.CALL_TYPE_BLOCKED: 1})
    truth.by_employee["e2"] = Counter({c.CALL_TYPE_OUTGOING: 2, c.CALL_TYPE_REJECTED: 1})
    truth.contacts, truth.telemetry = 10, 20
    return truth


def _reports(truth: TenantTruth) -> Counts:
    found = Counts(calls=truth.calls, by_type=Counter(truth.by_type))
    found.by_employee = {
        "e1": {"total_calls": 4, "incoming_calls": 3, "rejected_calls": 1},
        "e2": {"total_calls": 3, "outgoing_calls": 2, "rejected_calls": 1},
    }
    return found


def _database(truth: TenantTruth) -> Counts:
    found = Counts(calls=truth.calls, by_type=Counter(truth.by_type), contacts=10, telemetry=20)
    found.by_employee = {
        "e1": {"incoming": 3, "blocked": 1},
        "e2": {"outgoing": 2, "rejected": 1},
    }
    return found


def test_windows_cover_the_range_within_the_report_limit() -> None:
    assert list(windows(0, 10)) == [(0, 10)]
    spans = list(windows(5, 5 + 2 * WINDOW_MS + 7))
    assert [b - a for a, b in spans] == [WINDOW_MS, WINDOW_MS, 7]
    assert spans[0][0] == 5 and spans[-1][1] == 5 + 2 * WINDOW_MS + 7
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert WINDOW_MS == 400 * DAY_MS


def test_matching_counts_verify() -> None:
    truth = _truth()
    verification = Verification([truth])
    verification.add_reports({"t1": _reports(truth)})
    verification.add_database({"t1": _database(truth)})
    assert verification.ok, verification.differences
    data = verification.to_json()
    assert data["ok"] and data["expected"]["calls"] == 7 and data["database"]["contacts"] == 10


def test_a_missing_call_is_reported_everywhere_it_shows() -> None:
    truth = _truth()
    reports = _reports(truth)
    reports.calls -= 1
    reports.by_type[c.CALL_TYPE_BLOCKED] -= 1
    reports.by_employee["e1"] = {"total_calls": 3, "incoming_calls": 3}
    problems = compare_reports(truth, reports)
    assert any("total_calls: expected 7, found 6" in p for p in problems)
    assert any("blocked: expected 1, found 0" in p for p in problems)
    assert any("e1 rejected_calls: expected 1, found 0" in p for p in problems)
    database = _database(truth)
    database.telemetry = 19
    problems = compare_database(truth, database)
    assert problems == ["tenant t1 database telemetry FINAL: expected 20, found 19"]


def test_unknown_employee_and_double_counts_fail() -> None:
    truth = _truth()
    reports = _reports(truth)
    reports.by_employee["stranger"] = {"total_calls": 1}
    assert any("stranger" in p for p in compare_reports(truth, reports))
    database = _database(truth)
    database.calls += 1
    assert compare_database(truth, database)


def test_nothing_compared_is_not_ok() -> None:
    verification = Verification([_truth()])
    assert not verification.ok
    verification.add_acks({"accepted": 5}, {"accepted": 5})
    assert not verification.checked and not verification.differences
    verification.add_acks({"accepted": 4}, {"accepted": 5})
    assert verification.differences == ["acks accepted: expected 5, the server acked 4"]
