"""Summary-shaped reports: placeholder until built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proto.callsight.v1 import report_pb2
from server.errors import Unimplemented

if TYPE_CHECKING:
    from server.reports import ReportCall


async def call_summary(
    call: ReportCall, request: report_pb2.CallSummaryRequest
) -> report_pb2.CallSummaryResponse:
    """CallSummary."""
    raise Unimplemented("CallSummary is not built yet (reports computed in ClickHouse)")


async def employee_summary(
    call: ReportCall, request: report_pb2.EmployeeSummaryRequest
) -> report_pb2.EmployeeSummaryResponse:
    """EmployeeSummary."""
    raise Unimplemented("EmployeeSummary is not built yet (reports computed in ClickHouse)")


async def call_analysis(
    call: ReportCall, request: report_pb2.CallAnalysisRequest
) -> report_pb2.CallAnalysisResponse:
    """CallAnalysis."""
    raise Unimplemented("CallAnalysis is not built yet (reports computed in ClickHouse)")


async def hourly_analytics(
    call: ReportCall, request: report_pb2.HourlyAnalyticsRequest
) -> report_pb2.HourlyAnalyticsResponse:
    """HourlyAnalytics."""
    raise Unimplemented("HourlyAnalytics is not built yet (reports computed in ClickHouse)")


async def daywise_analytics(
    call: ReportCall, request: report_pb2.DaywiseAnalyticsRequest
) -> report_pb2.DaywiseAnalyticsResponse:
    """DaywiseAnalytics."""
    raise Unimplemented("DaywiseAnalytics is not built yet (reports computed in ClickHouse)")


async def working_hours(
    call: ReportCall, request: report_pb2.WorkingHoursRequest
) -> report_pb2.WorkingHoursResponse:
    """WorkingHours."""
    raise Unimplemented("WorkingHours is not built yet (reports computed in ClickHouse)")
