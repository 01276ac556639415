"""Paged listings: placeholder until built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proto.callsight.v1 import report_pb2
from server.errors import Unimplemented

if TYPE_CHECKING:
    from server.reports import ReportCall


async def never_attended(
    call: ReportCall, request: report_pb2.NeverAttendedRequest
) -> report_pb2.NeverAttendedResponse:
    """NeverAttended."""
    raise Unimplemented("NeverAttended is not built yet (reports computed in ClickHouse)")


async def not_picked_by_client(
    call: ReportCall, request: report_pb2.NotPickedByClientRequest
) -> report_pb2.NotPickedByClientResponse:
    """NotPickedByClient."""
    raise Unimplemented("NotPickedByClient is not built yet (reports computed in ClickHouse)")


async def unique_clients(
    call: ReportCall, request: report_pb2.UniqueClientsRequest
) -> report_pb2.UniqueClientsResponse:
    """UniqueClients."""
    raise Unimplemented("UniqueClients is not built yet (reports computed in ClickHouse)")


async def call_history(
    call: ReportCall, request: report_pb2.CallHistoryRequest
) -> report_pb2.CallHistoryResponse:
    """CallHistory."""
    raise Unimplemented("CallHistory is not built yet (reports computed in ClickHouse)")


async def lead_activity(
    call: ReportCall, request: report_pb2.LeadActivityRequest
) -> report_pb2.LeadActivityResponse:
    """LeadActivity."""
    raise Unimplemented("LeadActivity is not built yet (reports computed in ClickHouse)")
