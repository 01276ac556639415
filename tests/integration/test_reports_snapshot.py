"""EmployeeSummary pages form one snapshot: the first page's received calls and open range.

A server with a clock the test sets: between two pages time moves on by days and newer calls
arrive, some inside the first page's range. Every page must still count exactly the calls the
first page saw, over the range the first page had.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.core.clock import Clock
from callsight.server.app import Service
from callsight.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, report_pb2, report_pb2_grpc
from tests.conftest import make_config
from tests.integration import reference
from tests.integration.dataset import Call
from tests.integration.helpers import Tenant, auth, enroll, new_employee, new_tenant

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T = common_pb2
TIMEZONE = "Asia/Kolkata"


class SetClock(Clock):
    """A clock that stands still until the test moves it."""

    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms

    def now_ns(self) -> int:
        return self.ms * 1_000_000


@pytest.fixture(scope="module")
def clock() -> SetClock:
    return SetClock(Clock().now_ms())


@pytest.fixture(scope="module")
async def server(clock: SetClock, data_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    svc = Service(make_config(data_dir, f"snapshot_{secrets.token_hex(4)}"), clock=clock)
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        yield channel
    await svc.stop()


class Staff:
    """One tenant's employees, each with a device, and every call they sent."""

    def __init__(self, channel: grpc.aio.Channel, tenant: Tenant) -> None:
        self.channel = channel
        self.tenant = tenant
        self.names: dict[str, str] = {}
        self.devices: dict[str, tuple[str, str]] = {}  # employee -> (device id, token)
        self.seq = 0

    async def hire(self, name: str, number: str) -> str:
        employee_id = await new_employee(self.channel, self.tenant, name, number)
        device = await enroll(self.channel, self.tenant, employee_id, region="IN")
        self.names[employee_id] = name
        self.devices[employee_id] = (device.device_id, device.device_token)
        return employee_id

    async def send(self, employee_id: str, started: list[int], tag: str) -> list[Call]:
        """Sends one call per start time; returns them as the reports must see them."""
        device_id, token = self.devices[employee_id]
        kinds = [T.CALL_TYPE_OUTGOING, T.CALL_TYPE_INCOMING, T.CALL_TYPE_MISSED]
        calls = [
            Call(
                device_id=device_id,
                call_id=f"{tag}-{k}",
                employee_id=employee_id,
                number=f"+9198{(k * 7919) % 10**8:08d}",
                name="",
                type=kinds[k % 3],
                started_at_ms=at,
                duration_s=0 if kinds[k % 3] == T.CALL_TYPE_MISSED else 20 + k,
                note="",
                recording_uri="",
                version=at,
            )
            for k, at in enumerate(started)
        ]
        self.seq += 1
        ack = await ingest_pb2_grpc.IngestServiceStub(self.channel).Upload(
            ingest_pb2.UploadRequest(
                seq=self.seq,
                batch_id=f"{tag}-{self.seq}",
                calls=ingest_pb2.CallLogBatch(
                    records=[
                        ingest_pb2.CallRecord(
                            call_id=c.call_id,
                            number=c.number,
                            type=c.type,  # type: ignore[arg-type]
                            started_at_ms=c.started_at_ms,
                            duration_s=c.duration_s,
                        )
                        for c in calls
                    ]
                ),
            ),
            metadata=auth(token),
        )
        assert ack.accepted == len(calls), ack
        return calls


async def test_employee_summary_pages_are_one_snapshot_while_time_and_calls_move_on(
    server: grpc.aio.Channel, clock: SetClock
) -> None:
    staff = Staff(server, await new_tenant(server, region="IN", timezone=TIMEZONE))
    first_ms = clock.ms
    employees = [await staff.hire(f"Agent {e}", f"+9171000000{e:02d}") for e in range(5)]
    seen: list[Call] = []
    for e, employee_id in enumerate(sorted(employees)):
        # Calls near the start of the default 30-day range (which a range that moved on by
        # three days would lose) and in its middle; a different number per employee.
        edge = [first_ms - 30 * DAY_MS + (1 + k) * HOUR_MS for k in range(2 + e)]
        middle = [first_ms - (10 + k) * DAY_MS for k in range(3 + e)]
        seen += await staff.send(employee_id, edge + middle, "old")

    stub = report_pb2_grpc.ReportServiceStub(server)
    request_filter = report_pb2.ReportFilter()  # open range: the last 30 days
    first = await stub.EmployeeSummary(
        report_pb2.EmployeeSummaryRequest(filter=request_filter, page_size=2),
        metadata=staff.tenant.admin,
    )
    assert len(first.employees) == 2 and first.next_page_token

    # Three days later, newer calls arrive for every employee, inside the first page's range
    # and after it, and for an employee who had none.
    clock.ms += 3 * DAY_MS
    for employee_id in employees:
        await staff.send(employee_id, [first_ms + 2 * HOUR_MS, clock.ms - HOUR_MS], "new")
    newcomer = await staff.hire("Agent new", "+917100000099")
    await staff.send(newcomer, [clock.ms - 2 * HOUR_MS], "new")

    rows = list(first.employees)
    token = first.next_page_token
    while token:
        page = await stub.EmployeeSummary(
            report_pb2.EmployeeSummaryRequest(filter=request_filter, page_size=2, page_token=token),
            metadata=staff.tenant.admin,
        )
        assert len(page.employees) <= 2
        rows += page.employees
        token = page.next_page_token

    ids = [r.employee_id for r in rows]
    assert len(ids) == len(set(ids)), "an employee appears on two pages"
    assert ids == sorted(employees), "every employee of the snapshot, once, and nobody else"
    want = reference.employee_rows(seen, TIMEZONE, staff.names)
    assert str(rows) == str(want)
    assert rows == want
