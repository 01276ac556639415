"""Summary-shaped reports: totals, per-employee totals, analysis, hourly, daily, working days.

The figures come from ``storage/summaries.py``, aggregated in ClickHouse; this module only pages
(EmployeeSummary, through ``report_call.paged`` like every paged report), decrypts employee names
and builds the responses.
"""

from __future__ import annotations

from dataclasses import asdict

from callsight.server.report_call import ReportCall, paged, text_cursor
from callsight.storage import summaries
from callsight.v1 import report_pb2


def _summary(totals: summaries.Totals) -> report_pb2.Summary:
    return report_pb2.Summary(**asdict(totals))


async def _names(call: ReportCall, employee_ids: set[str]) -> dict[str, str]:
    # Decrypts only the names a response shows.
    return {
        e.employee_id: call.keyring.decrypt(e.name_enc)
        for e in await call.directory.employees(call.tenant.tenant_id)
        if e.employee_id in employee_ids
    }


async def call_summary(
    call: ReportCall, request: report_pb2.CallSummaryRequest
) -> report_pb2.CallSummaryResponse:
    """Totals over the filtered calls."""
    totals = await summaries.call_summary(
        call.db, call.filter, rollups=call.rollups, home_timezone=call.tenant.timezone
    )
    return report_pb2.CallSummaryResponse(summary=_summary(totals))


async def employee_summary(
    call: ReportCall, request: report_pb2.EmployeeSummaryRequest
) -> report_pb2.EmployeeSummaryResponse:
    """Totals per employee with calls in the filter, by employee_id, keyset-paged."""
    rows, token = await paged(
        call,
        "EmployeeSummary",
        request,
        summaries.employee_summary,
        text_cursor,
        lambda r: [r.employee_id],
    )
    names = await _names(call, {r.employee_id for r in rows})
    return report_pb2.EmployeeSummaryResponse(
        employees=[
            report_pb2.EmployeeSummaryRow(
                employee_id=r.employee_id,
                name=names.get(r.employee_id, ""),
                summary=_summary(r.totals),
                avg_duration_s=r.avg_duration_s,
                avg_incoming_duration_s=r.avg_incoming_duration_s,
                avg_outgoing_duration_s=r.avg_outgoing_duration_s,
                last_call_at_ms=r.last_call_at_ms,
            )
            for r in rows
        ],
        next_page_token=token,
    )


async def call_analysis(
    call: ReportCall, request: report_pb2.CallAnalysisRequest
) -> report_pb2.CallAnalysisResponse:
    """Averages and top performers."""
    analysis = await summaries.call_analysis(call.db, call.filter)
    leaders = {
        "top_dialer": analysis.top_dialer,
        "top_answered": analysis.top_answered,
        "top_caller": analysis.top_caller,
        "longest_call": analysis.longest_call,
        "highest_total_duration": analysis.highest_total_duration,
    }
    names = await _names(call, {leader.employee_id for leader in leaders.values()})
    return report_pb2.CallAnalysisResponse(
        avg_duration_per_call_s=analysis.avg_duration_per_call_s,
        avg_duration_per_day_s=analysis.avg_duration_per_day_s,
        avg_incoming_duration_s=analysis.avg_incoming_duration_s,
        avg_outgoing_duration_s=analysis.avg_outgoing_duration_s,
        **{
            field: report_pb2.TopPerformer(
                employee_id=leader.employee_id,
                name=names.get(leader.employee_id, ""),
                value=leader.value,
            )
            for field, leader in leaders.items()
        },
    )


async def hourly_analytics(
    call: ReportCall, request: report_pb2.HourlyAnalyticsRequest
) -> report_pb2.HourlyAnalyticsResponse:
    """24 slots, hour 0 first, in the filter's time zone; hours without calls are zeros."""
    slots = {s.key: s for s in await summaries.hourly(call.db, call.filter)}
    hours = []
    for hour in range(24):
        slot = slots.get(hour, summaries.Slot(hour, 0, 0, 0))
        hours.append(
            report_pb2.HourSlot(
                hour=hour,
                calls=slot.calls,
                connected_calls=slot.connected_calls,
                duration_s=slot.duration_s,
            )
        )
    return report_pb2.HourlyAnalyticsResponse(hours=hours)


async def daywise_analytics(
    call: ReportCall, request: report_pb2.DaywiseAnalyticsRequest
) -> report_pb2.DaywiseAnalyticsResponse:
    """One slot per local day with calls, oldest first."""
    return report_pb2.DaywiseAnalyticsResponse(
        days=[
            report_pb2.DaySlot(
                date=str(s.key),
                calls=s.calls,
                connected_calls=s.connected_calls,
                duration_s=s.duration_s,
            )
            for s in await summaries.daywise(call.db, call.filter)
        ]
    )


async def working_hours(
    call: ReportCall, request: report_pb2.WorkingHoursRequest
) -> report_pb2.WorkingHoursResponse:
    """One row per employee and local day with calls, by employee then date."""
    # Fields named one by one: asdict() deep-copies, which costs more than the query for a
    # month of 2,000 employees (60,000 rows).
    return report_pb2.WorkingHoursResponse(
        days=[
            report_pb2.WorkingDay(
                employee_id=day.employee_id,
                date=day.date,
                first_call_at_ms=day.first_call_at_ms,
                last_call_end_ms=day.last_call_end_ms,
                working_seconds=day.working_seconds,
                calls=day.calls,
                talk_seconds=day.talk_seconds,
            )
            for day in await summaries.working_hours(call.db, call.filter)
        ]
    )
