"""Report load against a fake ReportService: calls, pages walked and errors by status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from callsight.loadtest.report_load import is_paged, range_ms, run_reports
from callsight.v1 import report_pb2, report_pb2_grpc

API_KEY = "csk_test"
PAGES = 5  # the fake answers five pages of NeverAttended


class FakeReports(report_pb2_grpc.ReportServiceServicer):
    """CallSummary answers, NeverAttended pages, HourlyAnalytics is unavailable."""

    def __init__(self) -> None:
        self.filters: list[report_pb2.ReportFilter] = []
        self.tokens: list[str] = []
        self.keys: set[str] = set()

    def _seen(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.keys.update(v for k, v in context.invocation_metadata() or () if k == "authorization")

    async def CallSummary(
        self, request: report_pb2.CallSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> report_pb2.CallSummaryResponse:
        self._seen(context)
        self.filters.append(request.filter)
        return report_pb2.CallSummaryResponse(summary=report_pb2.Summary(total_calls=3))

    async def NeverAttended(
        self,
        request: report_pb2.NeverAttendedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> report_pb2.NeverAttendedResponse:
        self.tokens.append(request.page_token)
        page = int(request.page_token or "0") + 1
        return report_pb2.NeverAttendedResponse(
            clients=[report_pb2.ClientRow(number="+919876543210", calls=1)],
            next_page_token=str(page) if page < PAGES else "",
        )

    async def HourlyAnalytics(
        self,
        request: report_pb2.HourlyAnalyticsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> report_pb2.HourlyAnalyticsResponse:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[str, FakeReports]]:
    server = grpc.aio.server()
    servicer = FakeReports()
    report_pb2_grpc.add_ReportServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


def test_range_ms_reads_minutes_hours_and_days() -> None:
    assert range_ms("1d") == 86_400_000
    assert range_ms("12h") == 12 * 3_600_000
    assert range_ms("5m") == 300_000
    for bad in ("30", "d", "0d", "1w", "-1d"):
        with pytest.raises(ValueError):
            range_ms(bad)


def test_paged_rpcs_are_those_with_a_page_token() -> None:
    assert is_paged("NeverAttended") and is_paged("CallHistory") and is_paged("EmployeeSummary")
    assert not is_paged("CallSummary") and not is_paged("HourlyAnalytics")


async def test_calls_are_counted_per_rpc_and_range(fake: tuple[str, FakeReports]) -> None:
    target, servicer = fake
    result = await run_reports(target, API_KEY, ["CallSummary"], ["1d", "30d"], 2, 0.3)
    by_rpc = result["by_rpc"]
    assert set(by_rpc) == {"CallSummary/1d", "CallSummary/30d"}
    assert result["calls"] == sum(row["calls"] for row in by_rpc.values()) > 0
    assert all(row["calls"] > 0 for row in by_rpc.values())  # the callers take turns
    assert result["calls"] == len(servicer.filters)
    assert result["errors"] == {}
    assert result["latency_ms"]["count"] == result["calls"]
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    spans = {f.to_ms - f.from_ms for f in servicer.filters}
    assert spans == {86_400_000, 30 * 86_400_000}
    assert servicer.keys == {f"Bearer {API_KEY}"}


async def test_paged_rpcs_walk_their_pages(fake: tuple[str, FakeReports]) -> None:
    target, servicer = fake
    result = await run_reports(target, API_KEY, ["NeverAttended"], ["30d"], 1, 0.2, pages=3)
    # Each query is a walk of three pages: tokens "", "1", "2", then a fresh walk.
    assert servicer.tokens[:6] == ["", "1", "2", "", "1", "2"]
    assert "3" not in servicer.tokens
    assert result["by_rpc"]["NeverAttended/30d"]["calls"] == len(servicer.tokens)


async def test_failed_calls_are_counted_by_status(fake: tuple[str, FakeReports]) -> None:
    target, _ = fake
    result = await run_reports(target, API_KEY, ["CallSummary", "HourlyAnalytics"], ["1d"], 2, 0.3)
    failed = result["by_rpc"]["HourlyAnalytics/1d"]
    assert failed["ok"] == 0 and failed["errors"] == {"UNAVAILABLE": failed["calls"]} != {}
    assert result["errors"] == {"UNAVAILABLE": failed["calls"]}
    assert result["by_rpc"]["CallSummary/1d"]["errors"] == {}


async def test_unknown_rpcs_are_refused() -> None:
    with pytest.raises(ValueError, match="NoSuchReport"):
        await run_reports("127.0.0.1:1", API_KEY, ["NoSuchReport"], ["1d"], 1, 0.1)


async def test_min_rounds_asks_every_pair_past_the_duration(
    fake: tuple[str, FakeReports],
) -> None:
    target, servicer = fake
    ranges = [f"{n}d" for n in range(1, 11)]
    result = await run_reports(target, API_KEY, ["CallSummary"], ranges, 1, 0.0, min_rounds=2)
    assert all(row["calls"] >= 2 for row in result["by_rpc"].values())
    assert len(servicer.filters) == result["calls"] >= 20
