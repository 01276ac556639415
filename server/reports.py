"""ReportService: resolves the caller's tenant and filter, then hands each RPC to its family.

Summary-shaped reports live in ``server/report_summary.py``; paged listings (clients, call
history, lead activity) in ``server/report_pages.py``. The aggregation itself is SQL in
``storage/``; this layer only validates, decrypts the rows it returns and builds responses.

Every report runs inside its tenant's quota (``server/report_quota.py``) on the database the
service keeps for reports, whose queries are bounded in memory, threads and time: a report that
hits one of those bounds is told to ask for less (``RESOURCE_EXHAUSTED`` or
``DEADLINE_EXCEEDED``), never ``INTERNAL``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc

from callsight.core.clock import Clock
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.paging import PageTokens
from callsight.pipeline.watch import WatchHub
from callsight.server import report_pages, report_summary
from callsight.server.auth import caller_tenant
from callsight.server.filters import call_filter
from callsight.server.report_call import ReportCall, bounded
from callsight.server.report_calls import CallsReport
from callsight.server.report_export import ExportReport
from callsight.server.report_quota import ReportQuota
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.storage.rollups import Rollups
from callsight.v1 import report_pb2, report_pb2_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class _Filtered(Protocol):
    @property
    def filter(self) -> report_pb2.ReportFilter: ...


Request = TypeVar("Request", bound=_Filtered)
Response = TypeVar("Response")


class ReportServicer(CallsReport, ExportReport, report_pb2_grpc.ReportServiceServicer):
    """Reports over the caller's tenant."""

    def __init__(
        self,
        db: Database,
        directory: Directory,
        keys: TenantKeys,
        tokens: PageTokens,
        rollups: Rollups,
        clock: Clock,
        quota: ReportQuota,
        watch: WatchHub | None = None,
    ) -> None:
        """``db`` is the service's database for reports (bounded queries, a pool of its own);
        ``watch`` keeps WatchSummary's live totals (None: WatchSummary is unavailable)."""
        self._watch = watch
        self._db = db
        self._quota = quota
        self._directory = directory
        self._keys = keys
        self._tokens = tokens
        self._rollups = rollups
        self._clock = clock

    async def _call(self, request_filter: report_pb2.ReportFilter) -> ReportCall:
        tenant = await caller_tenant(self._directory)
        tenant_id = tenant.tenant_id
        # One instant per call: the filter's open range and a first page's snapshot agree.
        now_ms = self._clock.now_ms()
        return ReportCall(
            tenant=tenant,
            filter=await call_filter(request_filter, tenant, self._directory, now_ms),
            keyring=await self._keys.keyring(tenant_id),
            db=self._db,
            directory=self._directory,
            tokens=self._tokens,
            rollups=self._rollups,
            now_ms=now_ms,
        )

    async def _run(
        self,
        request: Request,
        report: Callable[[ReportCall, Request], Awaitable[Response]],
    ) -> Response:
        # Validated first, so a malformed request costs no token of the quota.
        call = await self._call(request.filter)
        return await bounded(
            self._quota, self._db, call.tenant.tenant_id, lambda: report(call, request)
        )

    async def CallSummary(
        self, request: report_pb2.CallSummaryRequest, context: Context
    ) -> report_pb2.CallSummaryResponse:
        return await self._run(request, report_summary.call_summary)

    async def EmployeeSummary(
        self, request: report_pb2.EmployeeSummaryRequest, context: Context
    ) -> report_pb2.EmployeeSummaryResponse:
        return await self._run(request, report_summary.employee_summary)

    async def CallAnalysis(
        self, request: report_pb2.CallAnalysisRequest, context: Context
    ) -> report_pb2.CallAnalysisResponse:
        return await self._run(request, report_summary.call_analysis)

    async def HourlyAnalytics(
        self, request: report_pb2.HourlyAnalyticsRequest, context: Context
    ) -> report_pb2.HourlyAnalyticsResponse:
        return await self._run(request, report_summary.hourly_analytics)

    async def DaywiseAnalytics(
        self, request: report_pb2.DaywiseAnalyticsRequest, context: Context
    ) -> report_pb2.DaywiseAnalyticsResponse:
        return await self._run(request, report_summary.daywise_analytics)

    async def WorkingHours(
        self, request: report_pb2.WorkingHoursRequest, context: Context
    ) -> report_pb2.WorkingHoursResponse:
        return await self._run(request, report_summary.working_hours)

    async def NeverAttended(
        self, request: report_pb2.NeverAttendedRequest, context: Context
    ) -> report_pb2.NeverAttendedResponse:
        return await self._run(request, report_pages.never_attended)

    async def NotPickedByClient(
        self, request: report_pb2.NotPickedByClientRequest, context: Context
    ) -> report_pb2.NotPickedByClientResponse:
        return await self._run(request, report_pages.not_picked_by_client)

    async def UniqueClients(
        self, request: report_pb2.UniqueClientsRequest, context: Context
    ) -> report_pb2.UniqueClientsResponse:
        return await self._run(request, report_pages.unique_clients)

    async def CallHistory(
        self, request: report_pb2.CallHistoryRequest, context: Context
    ) -> report_pb2.CallHistoryResponse:
        return await self._run(request, report_pages.call_history)

    async def LeadActivity(
        self, request: report_pb2.LeadActivityRequest, context: Context
    ) -> report_pb2.LeadActivityResponse:
        return await self._run(request, report_pages.lead_activity)
