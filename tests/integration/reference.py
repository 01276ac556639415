"""Pure-Python reference implementations of the summary reports (SPEC section 5), no SQL.

They read ``Truth.calls`` (each call once, newest version, E.164 numbers, ``PRIVATE`` for a
hidden caller), judge clients by their E.164 number rather than a blind index, and use zoneinfo
for local days and hours, so they share nothing with the ClickHouse queries they check.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from callsight.v1 import common_pb2, report_pb2
from tests.integration.dataset import PRIVATE, Call, Truth

DAY_MS = 86_400_000
T = common_pb2
MISSED_OR_REJECTED = (T.CALL_TYPE_MISSED, T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED)


def select(
    truth: Truth, f: report_pb2.ReportFilter, synced: tuple[int, int]
) -> tuple[list[Call], str]:
    """The calls ``f`` selects, and the time zone of its local days and hours.

    ``synced`` is the window in which every call of the data set reached the server: a
    SYNC_TIME range must cover it whole or miss it whole.
    """
    from_ms, to_ms = f.from_ms, f.to_ms
    if not from_ms and not to_ms:
        now = int(time.time() * 1000)
        from_ms, to_ms = now - 30 * DAY_MS, now + DAY_MS
    by_sync_time = f.time_field == report_pb2.TIME_FIELD_SYNC_TIME
    covers_sync = from_ms <= synced[0] and synced[1] < to_ms
    if by_sync_time and not covers_sync:
        assert to_ms <= synced[0] or synced[1] < from_ms, "SYNC_TIME range cuts the sync window"

    def in_range(c: Call) -> bool:
        return covers_sync if by_sync_time else from_ms <= c.started_at_ms < to_ms

    employees: set[str] | None = set(f.employee_ids) if f.employee_ids else None
    if f.employee_tags:
        tagged = {
            e.employee_id for e in truth.employees.values() if set(e.tags) & set(f.employee_tags)
        }
        employees = tagged if employees is None else employees & tagged
    max_duration = f.max_duration_s if f.HasField("max_duration_s") else None
    calls = [
        c
        for c in truth.visible(f.include_excluded_numbers)
        if in_range(c)
        and (employees is None or c.employee_id in employees)
        and (not f.call_types or c.type in f.call_types)
        and c.duration_s >= f.min_duration_s
        and (max_duration is None or c.duration_s <= max_duration)
        and not (f.exclude_private and c.number == PRIVATE)
        and (not f.call_methods or c.method in f.call_methods)
        and (not f.call_modes or c.mode in f.call_modes)
    ]
    return calls, f.timezone or truth.timezone


def _local(ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ms // 1000, ZoneInfo(tz))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _working_days(calls: Iterable[Call], tz: str) -> dict[tuple[str, str], list[Call]]:
    days: dict[tuple[str, str], list[Call]] = defaultdict(list)
    for c in calls:
        days[(c.employee_id, _local(c.started_at_ms, tz).date().isoformat())].append(c)
    return days


def _day_seconds(calls: list[Call]) -> int:
    first = min(c.started_at_ms for c in calls)
    end = max(c.started_at_ms + c.duration_s * 1000 for c in calls)
    return (end - first) // 1000


def summary(calls: list[Call], tz: str) -> report_pb2.Summary:
    """Summary over ``calls``; never attended and not picked judged per client number."""
    by_client: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_client[c.number].append(c)
    never_attended = not_picked = 0
    for client_calls in by_client.values():
        if any(c.duration_s > 0 for c in client_calls):
            continue
        never_attended += sum(c.type in MISSED_OR_REJECTED for c in client_calls)
        not_picked += sum(c.type == T.CALL_TYPE_OUTGOING for c in client_calls)
    return report_pb2.Summary(
        total_calls=len(calls),
        incoming_calls=sum(c.type == T.CALL_TYPE_INCOMING for c in calls),
        outgoing_calls=sum(c.type == T.CALL_TYPE_OUTGOING for c in calls),
        missed_calls=sum(c.type == T.CALL_TYPE_MISSED for c in calls),
        rejected_calls=sum(c.type in (T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED) for c in calls),
        connected_calls=sum(c.duration_s > 0 for c in calls),
        never_attended_calls=never_attended,
        not_picked_by_client_calls=not_picked,
        total_duration_s=sum(c.duration_s for c in calls),
        incoming_duration_s=sum(c.duration_s for c in calls if c.type == T.CALL_TYPE_INCOMING),
        outgoing_duration_s=sum(c.duration_s for c in calls if c.type == T.CALL_TYPE_OUTGOING),
        unique_clients=len(by_client),
        working_seconds=sum(_day_seconds(d) for d in _working_days(calls, tz).values()),
    )


def _connected_avg(calls: list[Call], kind: int | None) -> float:
    chosen = [c for c in calls if c.duration_s > 0 and (kind is None or c.type == kind)]
    return _ratio(sum(c.duration_s for c in chosen), len(chosen))


def employee_rows(
    calls: list[Call], tz: str, names: dict[str, str]
) -> list[report_pb2.EmployeeSummaryRow]:
    """One row per employee with calls, by employee_id."""
    by_employee: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_employee[c.employee_id].append(c)
    return [
        report_pb2.EmployeeSummaryRow(
            employee_id=employee_id,
            name=names[employee_id],
            summary=summary(mine, tz),
            avg_duration_s=_connected_avg(mine, None),
            avg_incoming_duration_s=_connected_avg(mine, T.CALL_TYPE_INCOMING),
            avg_outgoing_duration_s=_connected_avg(mine, T.CALL_TYPE_OUTGOING),
            last_call_at_ms=max(c.started_at_ms for c in mine),
        )
        for employee_id, mine in sorted(by_employee.items())
    ]


def _top(
    calls: list[Call], names: dict[str, str], figure: Callable[[list[Call]], int]
) -> report_pb2.TopPerformer:
    by_employee: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_employee[c.employee_id].append(c)
    best = min(
        ((figure(mine), employee_id) for employee_id, mine in by_employee.items()),
        key=lambda pair: (-pair[0], pair[1]),
        default=(0, ""),
    )
    if best[0] == 0:
        return report_pb2.TopPerformer()
    return report_pb2.TopPerformer(employee_id=best[1], name=names[best[1]], value=best[0])


def analysis(calls: list[Call], tz: str, names: dict[str, str]) -> report_pb2.CallAnalysisResponse:
    """Averages and top performers; ties go to the smallest employee_id, figure 0 to nobody."""
    days = {_local(c.started_at_ms, tz).date() for c in calls}
    return report_pb2.CallAnalysisResponse(
        avg_duration_per_call_s=_connected_avg(calls, None),
        avg_duration_per_day_s=_ratio(sum(c.duration_s for c in calls), len(days)),
        avg_incoming_duration_s=_connected_avg(calls, T.CALL_TYPE_INCOMING),
        avg_outgoing_duration_s=_connected_avg(calls, T.CALL_TYPE_OUTGOING),
        top_dialer=_top(calls, names, lambda m: sum(c.type == T.CALL_TYPE_OUTGOING for c in m)),
        top_answered=_top(
            calls,
            names,
            lambda m: sum(c.type == T.CALL_TYPE_INCOMING and c.duration_s > 0 for c in m),
        ),
        top_caller=_top(calls, names, len),
        longest_call=_top(calls, names, lambda m: max(c.duration_s for c in m)),
        highest_total_duration=_top(calls, names, lambda m: sum(c.duration_s for c in m)),
    )


def hourly(calls: list[Call], tz: str) -> list[report_pb2.HourSlot]:
    """24 slots, hour 0 first."""
    slots = [report_pb2.HourSlot(hour=h) for h in range(24)]
    for c in calls:
        slot = slots[_local(c.started_at_ms, tz).hour]
        slot.calls += 1
        slot.connected_calls += c.duration_s > 0
        slot.duration_s += c.duration_s
    return slots


def daywise(calls: list[Call], tz: str) -> list[report_pb2.DaySlot]:
    """One slot per local day with calls, oldest first."""
    slots: dict[str, report_pb2.DaySlot] = {}
    for c in calls:
        date = _local(c.started_at_ms, tz).date().isoformat()
        slot = slots.setdefault(date, report_pb2.DaySlot(date=date))
        slot.calls += 1
        slot.connected_calls += c.duration_s > 0
        slot.duration_s += c.duration_s
    return [slots[d] for d in sorted(slots)]


def working_days(calls: list[Call], tz: str) -> list[report_pb2.WorkingDay]:
    """One row per employee and local day, by employee then date."""
    rows = []
    for (employee_id, date), day in sorted(_working_days(calls, tz).items()):
        first = min(c.started_at_ms for c in day)
        end = max(c.started_at_ms + c.duration_s * 1000 for c in day)
        rows.append(
            report_pb2.WorkingDay(
                employee_id=employee_id,
                date=date,
                first_call_at_ms=first,
                last_call_end_ms=end,
                working_seconds=_day_seconds(day),
                calls=len(day),
                talk_seconds=sum(c.duration_s for c in day),
            )
        )
    return rows
