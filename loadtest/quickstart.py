"""``python -m callsight.loadtest.quickstart``: the README's first steps as one script.

Against a running server (``make serve``) it creates a tenant with the operator token, an
employee, an enrollment and a device; streams one batch of three calls as the Android agent
would; and prints the CallSummary of today. Every step prints what it did, so it doubles as a
walk-through of the API for machines without grpcurl. It uses only the generated stubs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from callsight.loadtest.common import auth
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

DAY_MS = 86_400_000


def _operator_token(given: str | None, data_dir: Path) -> str:
    """The flag, else CALLSIGHT_OPERATOR_TOKEN, else the first line of the generated file."""
    if given:
        return given
    if token := os.environ.get("CALLSIGHT_OPERATOR_TOKEN", "").strip():
        return token
    path = data_dir / "operator.token"
    try:
        return path.read_text().split()[0]
    except (OSError, IndexError):
        raise SystemExit(
            f"quickstart: no operator token: pass --operator-token, set "
            f"CALLSIGHT_OPERATOR_TOKEN, or run next to the server's {path}"
        ) from None


def _calls(now_ms: int) -> list[ingest_pb2.CallRecord]:
    minute = 60_000
    return [
        ingest_pb2.CallRecord(
            call_id="1",
            number="+91 98450 12345",
            name="Ravi (client)",
            type=common_pb2.CALL_TYPE_OUTGOING,
            started_at_ms=now_ms - 30 * minute,
            duration_s=185,
            sim_slot=0,
        ),
        ingest_pb2.CallRecord(
            call_id="2",
            number="080 4567 8901",
            type=common_pb2.CALL_TYPE_MISSED,
            started_at_ms=now_ms - 20 * minute,
            sim_slot=0,
        ),
        ingest_pb2.CallRecord(
            call_id="3",
            number="+91 98450 12345",
            name="Ravi (client)",
            type=common_pb2.CALL_TYPE_INCOMING,
            started_at_ms=now_ms - 10 * minute,
            duration_s=62,
            sim_slot=0,
        ),
    ]


async def walk_through(target: str, operator_token: str) -> report_pb2.Summary:
    """Runs every step against ``target``; returns the summary it printed."""
    async with grpc.aio.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        reports = report_pb2_grpc.ReportServiceStub(channel)

        name = f"Quickstart {uuid.uuid4().hex[:6]}"
        tenant = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name=name, default_region="IN", timezone="Asia/Kolkata"),
            metadata=auth(operator_token),
        )
        print(f"1. CreateTenant {name!r}: tenant_id {tenant.tenant_id}, an ADMIN key (csk_...)")
        admin_key = tenant.admin_api_key

        employee = await admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="Asha", number="098765 43210", tags=["sales"]),
            metadata=auth(admin_key),
        )
        print(f"2. CreateEmployee 'Asha': employee_id {employee.employee_id}")

        enrollment = await admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=employee.employee_id),
            metadata=auth(admin_key),
        )
        print("3. CreateEnrollment: a one-time code (cse_...) for the agent")

        device = await ingest.RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(
                enrollment_code=enrollment.enrollment_code,
                device=ingest_pb2.DeviceInfo(
                    model="Pixel 8", manufacturer="Google", app_version="1.0.0", region="IN"
                ),
            )
        )
        print(f"4. RegisterDevice: device_id {device.device_id}, a device token (csd_...)")

        now_ms = int(time.time() * 1000)
        batch = ingest_pb2.UploadRequest(
            seq=1,
            batch_id=uuid.uuid4().hex,
            calls=ingest_pb2.CallLogBatch(records=_calls(now_ms)),
        )

        async def one_batch() -> AsyncIterator[ingest_pb2.UploadRequest]:
            yield batch

        async for ack in ingest.Stream(one_batch(), metadata=auth(device.device_token)):
            result = ingest_pb2.UploadResult.Name(ack.result)
            print(
                f"5. Stream: batch {ack.seq} {result}: {ack.accepted} accepted, "
                f"{ack.duplicates} duplicates, {ack.rejected} rejected (durable when acked)"
            )

        summary = (
            await reports.CallSummary(
                report_pb2.CallSummaryRequest(
                    filter=report_pb2.ReportFilter(from_ms=now_ms - DAY_MS, to_ms=now_ms + 60_000)
                ),
                metadata=auth(admin_key),
            )
        ).summary
        print("6. CallSummary of the last day:")
        for field in report_pb2.Summary.DESCRIPTOR.fields_by_name:
            print(f"     {field:<28} {getattr(summary, field)}")
        print(
            "Next: keep the ADMIN key (export ADMIN_KEY=...) for AdminService and ReportService;"
            " see README.md."
        )
        print(f"ADMIN_KEY={admin_key}")
        return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callsight.loadtest.quickstart",
        description="Walk through the first steps against a running callsight server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="the server's HOST:PORT")
    parser.add_argument(
        "--operator-token",
        help="operator token (default: $CALLSIGHT_OPERATOR_TOKEN, else DATA_DIR/operator.token)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the server's data directory"
    )
    args = parser.parse_args(argv)
    token = _operator_token(args.operator_token, args.data_dir)
    try:
        asyncio.run(walk_through(args.target, token))
    except grpc.aio.AioRpcError as exc:
        print(f"quickstart: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(
                f"quickstart: is the server running at {args.target}? `make serve`", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
