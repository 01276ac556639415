"""ReportService.GetCalls: calls by their ids (issue 12), Callyzer's ``call-log/get``.

Runs like every report, inside the tenant's report quota on the report database
(``report_call.bounded``), and shows each call the way CallHistory does
(``report_pages.history_entry``).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from callsight.core.errors import InvalidArgument
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_ID_BYTES, text_problem
from callsight.pipeline.paging import MAX_PAGE_SIZE
from callsight.server.auth import caller_tenant, current_caller
from callsight.server.report_call import bounded
from callsight.server.report_pages import history_entry
from callsight.server.report_quota import ReportQuota
from callsight.storage import reads
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.v1 import report_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# As many calls as a CallHistory page holds, so a response fits the same size bound.
MAX_CALL_REFS = MAX_PAGE_SIZE


def _refs(request: report_pb2.GetCallsRequest) -> list[reads.CallRef]:
    """The request's refs, or InvalidArgument naming every bad one (the first few)."""
    if not request.calls:
        raise InvalidArgument("calls is empty; name at least one call (device_id and call_id)")
    if len(request.calls) > MAX_CALL_REFS:
        raise InvalidArgument(
            f"calls has {len(request.calls)} entries; the limit is {MAX_CALL_REFS}, split the"
            " ids into several requests"
        )
    problems = []
    for i, ref in enumerate(request.calls):
        for field in ("device_id", "call_id"):
            value = getattr(ref, field)
            where = f"calls[{i}].{field}"
            problem = (
                f"{where} is required" if not value else text_problem(value, where, MAX_ID_BYTES)
            )
            if problem is not None:
                problems.append(problem)
    if problems:
        shown = problems[:5]
        if len(problems) > len(shown):
            shown.append(f"and {len(problems) - len(shown)} more problems")
        raise InvalidArgument("; ".join(shown))
    return [reads.CallRef(r.device_id, r.call_id) for r in request.calls]


class CallsReport:
    """GetCalls, mixed into the ReportService servicer."""

    _db: Database
    _directory: Directory
    _keys: TenantKeys
    _quota: ReportQuota

    async def GetCalls(
        self, request: report_pb2.GetCallsRequest, context: Context
    ) -> report_pb2.GetCallsResponse:
        # Validated first, so a malformed request costs no token of the quota.
        refs = _refs(request)
        tenant_id = current_caller().tenant_id
        await caller_tenant(self._directory)
        keyring = await self._keys.keyring(tenant_id)
        found = await bounded(
            self._quota,
            self._db,
            tenant_id,
            lambda: reads.calls_by_ref(self._db, tenant_id, refs),
        )
        response = report_pb2.GetCallsResponse()
        for ref, wanted in zip(refs, request.calls, strict=True):
            row = found.get(ref)
            if row is None:
                response.missing.append(wanted)
            else:
                response.calls.append(history_entry(keyring, row))
        return response
