"""Setting a fleet up the way an operator and admins would: tenants, employees, enrolled devices.

``bootstrap`` creates tenants (operator token), employees and one enrollment per device (ADMIN
key), and registers each device; ``warm_up`` sends every device one empty batch per kind so the
server's first load of its stored versions happens before the measurement.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from callsight.loadtest.common import Say, auth, retry_delay_s
from callsight.loadtest.generate import FIRST_NAMES, SURNAMES
from callsight.loadtest.workload import KINDS
from callsight.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc

TAGS = ("sales", "support", "collections")
KICKERS = 8  # warm-up batches held back to restart stuck loads (see warm_up)
WARM_UP_ATTEMPTS = 30  # tries of one warm-up batch a server at capacity refuses
IMPORT_CHUNK = 10_000  # employees per ImportEmployees call, the server's limit


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A tenant created for the run and its ADMIN key."""

    index: int
    tenant_id: str
    admin_key: str


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """An enrolled device: who it belongs to and the token it streams with."""

    index: int
    tenant: int  # index into the run's tenants
    tenant_id: str
    employee: int  # index of the employee within the fleet
    employee_id: str
    device_id: str
    token: str


async def _limited(limit: int, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Runs ``jobs`` with at most ``limit`` at once; the first failure cancels the rest."""
    queue = list(reversed(jobs))

    async def lane() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(lane() for _ in range(min(limit, len(jobs)))))


async def bootstrap(
    channel: grpc.aio.Channel,
    operator_token: str,
    *,
    tenants: int,
    employees: int,
    devices: int,
    run_label: str,
    # Enrollment of a fleet is many phones at once; the server group-commits their writes a few
    # times a second, so throughput follows the lanes: on a shared 2-core machine 10,000 devices
    # took 48 s with 256, 22-24 s with 1,024, 22 s with 2,048 (the server's event loop limits).
    concurrency: int = 1024,
    say: Say | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[list[TenantInfo], list[DeviceIdentity]]:
    """Creates the tenants, employees and devices of a fleet through the public API; the
    seconds each step took go into ``timings`` (``employees_s``, ``enrollment_s``)."""
    timings = {} if timings is None else timings
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    report = say or (lambda _: None)
    created: list[TenantInfo] = []
    for t in range(tenants):
        response = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(
                name=f"loadtest {run_label} #{t}", default_region="IN", timezone="Asia/Kolkata"
            ),
            metadata=auth(operator_token),
        )
        created.append(TenantInfo(t, response.tenant_id, response.admin_api_key))

    employee_ids = [""] * employees

    def employee_request(e: int) -> admin_pb2.CreateEmployeeRequest:
        first = FIRST_NAMES[e % len(FIRST_NAMES)]
        last = SURNAMES[(e // len(FIRST_NAMES)) % len(SURNAMES)]
        return admin_pb2.CreateEmployeeRequest(
            name=f"{first} {last} {e}", number=f"+9170{e:08d}", tags=[TAGS[e % len(TAGS)]]
        )

    async def employee(e: int) -> None:
        tenant = created[e % tenants]  # employees are dealt to tenants in turn
        response = await admin.CreateEmployee(employee_request(e), metadata=auth(tenant.admin_key))
        employee_ids[e] = response.employee_id

    async def import_employees(tenant: TenantInfo) -> None:
        """The tenant's employees in ImportEmployees calls of at most IMPORT_CHUNK."""
        mine = list(range(tenant.index, employees, tenants))
        for start in range(0, len(mine), IMPORT_CHUNK):
            chunk = mine[start : start + IMPORT_CHUNK]
            response = await admin.ImportEmployees(
                admin_pb2.ImportEmployeesRequest(employees=[employee_request(e) for e in chunk]),
                metadata=auth(tenant.admin_key),
            )
            for e, imported in zip(chunk, response.employees, strict=True):
                if imported.error:
                    raise RuntimeError(f"employee {e} was not imported: {imported.error}")
                employee_ids[e] = imported.employee_id

    started = time.monotonic()
    try:
        await asyncio.gather(*(import_employees(t) for t in created))
    except grpc.aio.AioRpcError as exc:
        # A server without ImportEmployees: one CreateEmployee each.
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        await _limited(concurrency, [functools.partial(employee, e) for e in range(employees)])
    timings["employees_s"] = time.monotonic() - started
    report(f"created {tenants} tenants, {employees:,} employees in {timings['employees_s']:.1f} s")

    identities: list[DeviceIdentity | None] = [None] * devices
    done = 0
    last_said = time.monotonic()

    async def device(d: int) -> None:
        nonlocal done, last_said
        e = d % employees  # devices are dealt to employees in turn
        tenant = created[e % tenants]
        code = await admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=employee_ids[e]),
            metadata=auth(tenant.admin_key),
        )
        registered = await ingest.RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(
                enrollment_code=code.enrollment_code,
                device=ingest_pb2.DeviceInfo(
                    model="Pixel 8",
                    manufacturer="Google",
                    android_version="14",
                    sdk_int=34,
                    app_version="3.2.1",
                    version_code=321,
                    region="IN",
                ),
            )
        )
        identities[d] = DeviceIdentity(
            d,
            tenant.index,
            tenant.tenant_id,
            e,
            registered.employee_id,
            registered.device_id,
            registered.device_token,
        )
        done += 1
        if time.monotonic() - last_said > 10:
            last_said = time.monotonic()
            report(f"  enrolled {done:,} of {devices:,} devices")

    started = time.monotonic()
    await _limited(concurrency, [functools.partial(device, d) for d in range(devices)])
    timings["enrollment_s"] = time.monotonic() - started
    report(f"enrolled {devices:,} devices in {timings['enrollment_s']:.1f} s")
    return created, [identity for identity in identities if identity is not None]


async def warm_up(
    channel: grpc.aio.Channel,
    devices: Sequence[DeviceIdentity],
    kinds: Sequence[str] = KINDS,
    *,
    concurrency: int = 256,
    quiet_s: float = 1.0,
    stuck_s: float = 60.0,
    say: Say | None = None,
) -> float:
    """Sends every device an empty batch of each kind; returns the seconds it took.

    A device arriving while the server loads others' stored versions waits for the next arrival
    (the Deduplicator starts a load only then), so the last of a burst could wait forever: a few
    batches are held back and sent one at a time whenever nothing completed for ``quiet_s``.
    """
    upload = ingest_pb2_grpc.IngestServiceStub(channel).Upload
    report = say or (lambda _: None)
    jobs = [(device, kind) for kind in kinds for device in devices]
    held, jobs = jobs[-KICKERS:], jobs[:-KICKERS]
    limit = asyncio.Semaphore(concurrency)

    async def one(device: DeviceIdentity, kind: str) -> None:
        empty = ingest_pb2.UploadRequest(seq=0, batch_id="warm-up")
        getattr(empty, kind).SetInParent()
        async with limit:
            # A server at capacity answers UNAVAILABLE with a delay; a real agent waits and retries.
            for attempt in range(WARM_UP_ATTEMPTS):
                try:
                    ack = await upload(empty, metadata=auth(device.token))
                    break
                except grpc.aio.AioRpcError as error:
                    delay = retry_delay_s(error)
                    if delay is None or attempt == WARM_UP_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(delay * random.uniform(1.0, 1.5))
        if ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED:
            raise RuntimeError(f"warm-up {kind} batch of device {device.device_id} refused: {ack}")

    started = time.monotonic()
    pending = {asyncio.ensure_future(one(device, kind)) for device, kind in jobs}
    kicks = 0
    quiet_since = time.monotonic()
    try:
        while pending or held:
            if not pending:
                pending.add(asyncio.ensure_future(one(*held.pop(0))))
            done, pending = await asyncio.wait(
                pending, timeout=quiet_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()
            if done:
                quiet_since = time.monotonic()
            elif held:
                kicks += 1
                pending.add(asyncio.ensure_future(one(*held.pop(0))))
            elif time.monotonic() - quiet_since > stuck_s:
                raise RuntimeError(
                    f"warm-up: {len(pending)} empty batches got no ack in {stuck_s:.0f} s"
                )
    finally:
        for task in pending:
            task.cancel()
    elapsed = time.monotonic() - started
    report(
        f"warmed up {len(devices):,} devices x {len(kinds)} tables in {elapsed:.1f} s"
        + (f" ({kicks} stuck loads restarted)" if kicks else "")
    )
    return elapsed
