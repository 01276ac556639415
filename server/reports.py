"""ReportService: every report, computed inside ClickHouse."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from proto.callsight.v1 import report_pb2, report_pb2_grpc
from server.errors import Unimplemented

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class ReportServicer(report_pb2_grpc.ReportServiceServicer):
    """Reports over the caller's tenant."""

    async def CallSummary(
        self, request: report_pb2.CallSummaryRequest, context: Context
    ) -> report_pb2.CallSummaryResponse:
        raise Unimplemented("CallSummary is not built yet (reports computed in ClickHouse)")

    async def EmployeeSummary(
        self, request: report_pb2.EmployeeSummaryRequest, context: Context
    ) -> report_pb2.EmployeeSummaryResponse:
        raise Unimplemented("EmployeeSummary is not built yet (reports computed in ClickHouse)")

    async def CallAnalysis(
        self, request: report_pb2.CallAnalysisRequest, context: Context
    ) -> report_pb2.CallAnalysisResponse:
        raise Unimplemented("CallAnalysis is not built yet (reports computed in ClickHouse)")

    async def NeverAttended(
        self, request: report_pb2.NeverAttendedRequest, context: Context
    ) -> report_pb2.NeverAttendedResponse:
        raise Unimplemented("NeverAttended is not built yet (reports computed in ClickHouse)")

    async def NotPickedByClient(
        self, request: report_pb2.NotPickedByClientRequest, context: Context
    ) -> report_pb2.NotPickedByClientResponse:
        raise Unimplemented("NotPickedByClient is not built yet (reports computed in ClickHouse)")

    async def UniqueClients(
        self, request: report_pb2.UniqueClientsRequest, context: Context
    ) -> report_pb2.UniqueClientsResponse:
        raise Unimplemented("UniqueClients is not built yet (reports computed in ClickHouse)")

    async def HourlyAnalytics(
        self, request: report_pb2.HourlyAnalyticsRequest, context: Context
    ) -> report_pb2.HourlyAnalyticsResponse:
        raise Unimplemented("HourlyAnalytics is not built yet (reports computed in ClickHouse)")

    async def DaywiseAnalytics(
        self, request: report_pb2.DaywiseAnalyticsRequest, context: Context
    ) -> report_pb2.DaywiseAnalyticsResponse:
        raise Unimplemented("DaywiseAnalytics is not built yet (reports computed in ClickHouse)")

    async def WorkingHours(
        self, request: report_pb2.WorkingHoursRequest, context: Context
    ) -> report_pb2.WorkingHoursResponse:
        raise Unimplemented("WorkingHours is not built yet (reports computed in ClickHouse)")

    async def CallHistory(
        self, request: report_pb2.CallHistoryRequest, context: Context
    ) -> report_pb2.CallHistoryResponse:
        raise Unimplemented("CallHistory is not built yet (reports computed in ClickHouse)")

    async def LeadActivity(
        self, request: report_pb2.LeadActivityRequest, context: Context
    ) -> report_pb2.LeadActivityResponse:
        raise Unimplemented("LeadActivity is not built yet (reports computed in ClickHouse)")
