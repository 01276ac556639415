"""A realistic multi-device data set, ingested through the real Stream, and its ground truth.

The generator produces calls with duplicates, re-sends, updated versions (notes added later),
numbers in mixed local and international formats, clients shared between employees, excluded
(personal) numbers, and calls spread over several days and hours. ``Truth.calls`` holds each
call once, at its newest version, with its number in E.164: the input of the pure-Python
reference implementations that the report tests compare against.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from callsight.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc
from tests.integration.helpers import Tenant, auth, enroll, new_employee, new_tenant

DAY_MS = 86_400_000
T = common_pb2
# How reports show every call from a withheld, unknown or payphone number: one client.
PRIVATE = "private"


@dataclass(frozen=True)
class Call:
    """One call at its newest version, as the reports must see it."""

    device_id: str
    call_id: str
    employee_id: str
    number: str  # E.164
    name: str
    type: int
    started_at_ms: int
    duration_s: int
    note: str
    recording_uri: str
    version: int
    # CallMethod and CallMode; a call from a hidden number has number PRIVATE.
    method: int = T.CALL_METHOD_PHONE
    mode: int = T.CALL_MODE_VOICE


@dataclass
class Employee:
    employee_id: str
    name: str
    tags: tuple[str, ...]
    device_ids: list[str] = field(default_factory=list)


@dataclass
class Truth:
    """What was sent, reduced to what is stored."""

    tenant: Tenant
    timezone: str
    employees: dict[str, Employee]
    calls: list[Call]
    excluded: set[str]  # E.164 numbers set as excluded
    start_ms: int
    end_ms: int

    def visible(self, include_excluded: bool = False) -> list[Call]:
        """The calls a report sees by default (excluded numbers left out)."""
        if include_excluded:
            return list(self.calls)
        return [c for c in self.calls if c.number not in self.excluded]


def _formats(e164: str, rng: random.Random) -> str:
    """The same Indian mobile number as a phone might show it."""
    national = e164[3:]
    return rng.choice([e164, f"+91 {national[:5]} {national[5:]}", f"0{national}", national])


_TYPES = (
    [T.CALL_TYPE_OUTGOING] * 40
    + [T.CALL_TYPE_INCOMING] * 35
    + [T.CALL_TYPE_MISSED] * 15
    + [T.CALL_TYPE_REJECTED] * 5
    + [T.CALL_TYPE_BLOCKED] * 2
    + [T.CALL_TYPE_VOICEMAIL] * 2
    + [T.CALL_TYPE_ANSWERED_EXTERNALLY]
)


def _duration(kind: int, rng: random.Random) -> int:
    if kind in (T.CALL_TYPE_MISSED, T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED):
        return 0
    if kind == T.CALL_TYPE_OUTGOING and rng.random() < 0.35:
        return 0  # the client did not pick up
    return min(3600, int(rng.lognormvariate(4.2, 1.0)))


async def build(
    channel: grpc.aio.Channel,
    *,
    seed: int = 7,
    employees: int = 6,
    devices_per_employee: int = 1,
    calls_per_device: int = 300,
    days: int = 5,
    timezone: str = "Asia/Kolkata",
) -> Truth:
    """Creates a tenant, its employees and devices, streams their calls, returns the truth."""
    rng = random.Random(seed)
    tenant = await new_tenant(channel, region="IN", timezone=timezone)
    tags = [("sales",), ("sales", "north"), ("support",)]
    staff: dict[str, Employee] = {}
    for e in range(employees):
        name = f"Employee {e:02d}"
        employee_id = await new_employee(channel, tenant, name, f"+9170000000{e:02d}", tags[e % 3])
        staff[employee_id] = Employee(employee_id, name, tags[e % 3])

    # A shared pool of clients (some called by several employees), plus personal numbers.
    pool = [f"+9198{rng.randrange(10**8):08d}" for _ in range(60)]
    personal = pool[:3]
    await admin_pb2_grpc.AdminServiceStub(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=[_formats(n, rng) for n in personal]),
        metadata=tenant.admin,
    )
    end_ms = (int(time.time() * 1000) // DAY_MS) * DAY_MS
    start_ms = end_ms - days * DAY_MS

    newest: dict[tuple[str, str], Call] = {}
    for employee in staff.values():
        clients = rng.sample(pool, 25)
        for _ in range(devices_per_employee):
            device = await enroll(channel, tenant, employee.employee_id, region="IN")
            employee.device_ids.append(device.device_id)
            records = []
            for i in range(calls_per_device):
                number = rng.choice(clients[:8]) if rng.random() < 0.6 else rng.choice(clients)
                kind = rng.choice(_TYPES)
                started = start_ms + rng.randrange(days * DAY_MS)
                record = ingest_pb2.CallRecord(
                    call_id=f"{i}",
                    number=_formats(number, rng),
                    name=f"Client {pool.index(number)}" if rng.random() < 0.7 else "",
                    type=kind,
                    started_at_ms=started,
                    duration_s=_duration(kind, rng),
                    sim_slot=rng.choice([0, 1]),
                    recording_uri=f"content://rec/{i}" if rng.random() < 0.1 else "",
                )
                records.append(record)
            # Later versions of some calls: a note added (newer version replaces the call).
            updates = []
            for record in rng.sample(records, len(records) // 10):
                newer = ingest_pb2.CallRecord()
                newer.CopyFrom(record)
                newer.note = "called back, sent quote"
                newer.updated_at_ms = record.started_at_ms + 3_600_000
                updates.append(newer)
            batches = [records[k : k + 100] for k in range(0, len(records), 100)]
            batches.append(rng.sample(records, 40))  # a re-send of old records in a new batch
            batches.append(updates)
            batches.append(batches[0])  # the same batch re-sent
            await _stream(channel, device.device_token, batches)
            for record in [*records, *updates]:
                version = record.updated_at_ms or record.started_at_ms
                key = (device.device_id, record.call_id)
                e164 = "+91" + record.number.replace(" ", "").removeprefix("+91").removeprefix("0")
                if key not in newest or version > newest[key].version:
                    newest[key] = Call(
                        device_id=device.device_id,
                        call_id=record.call_id,
                        employee_id=employee.employee_id,
                        number=e164,
                        name=record.name,
                        type=record.type,
                        started_at_ms=record.started_at_ms,
                        duration_s=record.duration_s,
                        note=record.note,
                        recording_uri=record.recording_uri,
                        version=version,
                    )
    return Truth(
        tenant=tenant,
        timezone=timezone,
        employees=staff,
        calls=sorted(newest.values(), key=lambda c: (c.started_at_ms, c.device_id, c.call_id)),
        excluded=set(personal),
        start_ms=start_ms,
        end_ms=end_ms,
    )


async def _stream(
    channel: grpc.aio.Channel, token: str, batches: list[list[ingest_pb2.CallRecord]]
) -> None:
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)

    async def send() -> AsyncIterator[ingest_pb2.UploadRequest]:
        for seq, records in enumerate(batches, 1):
            yield ingest_pb2.UploadRequest(
                seq=seq, batch_id=f"b{seq}", calls=ingest_pb2.CallLogBatch(records=records)
            )

    async for ack in ingest.Stream(send(), metadata=auth(token)):
        assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and ack.rejected == 0, ack
