"""``python -m callsight.loadtest abuse``: replays the resource attacks against a server.

Each attack misbehaves in one way (a stream that never reads its acks, unknown tokens, huge
messages, a report flood, a device flooding its streams, garbage enrollment codes, hostile field
values, an erased number sent again) while a well-behaved device or caller measures what the
others still get. Per attack it prints the bound, the figure and whether the bound held, and
writes them to ``--out`` (``loadtest/results/abuse.json``). The server's RSS is read from its pid
(``--spawn-server``, or ``--server-pid`` for a local one). Black box: the contract only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callsight.loadtest.common import (
    MiB,
    add_flags,
    aligned,
    auth,
    num,
    patiently,
    say,
    write_json,
)
from callsight.loadtest.harness import ServerProcess
from callsight.loadtest.histogram import Histogram
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

DEFAULT_OUT = Path("loadtest/results/abuse.json")
DAY_MS = 86_400_000
STREAM = "/callsight.v1.IngestService/Stream"


@dataclass(slots=True)
class Finding:
    """One attack's outcome: the bound that should hold and what was measured."""

    attack: str
    bound: str
    figure: str
    held: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Target:
    """The server under attack, a tenant on it and a well-behaved device."""

    channel: grpc.aio.Channel
    operator_token: str
    pid: int | None
    tenant_id: str = ""
    admin_key: str = ""
    device_token: str = ""

    def rss_mib(self) -> float | None:
        """The server's resident memory now, if its pid is known."""
        if self.pid is None:
            return None
        try:
            return float(psutil.Process(self.pid).memory_info().rss) / MiB
        except psutil.Error:
            return None

    async def new_device(self, name: str) -> str:
        """An employee with an enrolled device; its token."""
        admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        number = f"98{secrets.randbelow(10**8):08d}"
        employee = await admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name=name, number=number), metadata=auth(self.admin_key)
        )
        code = await admin.CreateEnrollment(
            admin_pb2.CreateEnrollmentRequest(employee_id=employee.employee_id),
            metadata=auth(self.admin_key),
        )
        registered = await ingest_pb2_grpc.IngestServiceStub(self.channel).RegisterDevice(
            ingest_pb2.RegisterDeviceRequest(
                enrollment_code=code.enrollment_code,
                device=ingest_pb2.DeviceInfo(model="Pixel 8", app_version="3.2.1", region="IN"),
            )
        )
        return registered.device_token


def _calls(prefix: str, count: int, number: str = "", **fields: Any) -> ingest_pb2.UploadRequest:
    now = int(time.time() * 1000)
    records = [
        ingest_pb2.CallRecord(
            call_id=f"{prefix}-{i}",
            number=number or f"+9198{secrets.randbelow(10**8):08d}",
            type=common_pb2.CALL_TYPE_INCOMING,
            started_at_ms=now - 60_000 - i,
            duration_s=30,
            **fields,
        )
        for i in range(count)
    ]
    return ingest_pb2.UploadRequest(
        seq=secrets.randbelow(2**62),
        batch_id=f"{prefix}-{secrets.token_hex(4)}",
        calls=ingest_pb2.CallLogBatch(records=records),
    )


class Victim:
    """A well-behaved device uploading one-record batches on its own stream; ack latency."""

    def __init__(self, target: Target, token: str) -> None:
        self._target = target
        self._token = token
        self.latency_us = Histogram()
        self.errors: dict[str, int] = {}

    async def run(self, seconds: float, every_s: float = 0.1) -> None:
        """Uploads a one-call batch every ``every_s``; a refusal with a retry delay is retried
        after it, as an agent would, and the ack's latency includes those waits."""
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await _upload(self._target, _calls(f"victim{n}", 1), patience_s=30.0)
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.latency_us.record(int((time.monotonic() - started) * 1e6))
            n += 1
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))

    def summary(self) -> dict[str, Any]:
        return {"ack_ms": self.latency_us.summary(1e-3), "errors": self.errors}

    def ok(self) -> bool:
        """Every upload was acked (after retries), and there were some."""
        return self.latency_us.count > 0 and not self.errors


async def _health_ms(channel: grpc.aio.Channel, timeout_s: float = 10.0) -> float:
    """How long a health check took; ``timeout_s`` (in ms) when it did not answer in time."""
    started = time.monotonic()
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError:
        return timeout_s * 1000
    return (time.monotonic() - started) * 1000


async def _upload(
    target: Target, request: ingest_pb2.UploadRequest, patience_s: float = 60.0
) -> ingest_pb2.UploadAck:
    """``Upload`` as an agent does it: a refusal with a retry delay is retried after it."""
    ingest = ingest_pb2_grpc.IngestServiceStub(target.channel)
    ack: ingest_pb2.UploadAck = await patiently(
        functools.partial(ingest.Upload, request, metadata=auth(target.device_token), timeout=30),
        patience_s,
    )
    return ack


async def settle(target: Target) -> float:
    """Waits until the server acks a one-record batch again (what an attack queued is written);
    the seconds it took."""
    started = time.monotonic()
    await _upload(target, _calls(f"settle{secrets.token_hex(3)}", 1), patience_s=120.0)
    return time.monotonic() - started


async def _beside(
    target: Target, attack: Awaitable[Any], seconds: float
) -> tuple[Victim, list[float]]:
    """Runs ``attack`` while the victim device uploads and health checks run, for ``seconds``."""
    victim = Victim(target, target.device_token)
    health: list[float] = []

    async def checks() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            health.append(await _health_ms(target.channel))
            await asyncio.sleep(0.5)

    attacking = asyncio.ensure_future(attack)
    try:
        await asyncio.gather(victim.run(seconds), checks())
    finally:
        attacking.cancel()
        await asyncio.gather(attacking, return_exceptions=True)
    return victim, health


# --- the attacks --------------------------------------------------------------------------------


async def unread_acks(target: Target, seconds: float) -> Finding:
    """A device writes batches of 10,000 empty records (all rejected) and never reads an ack."""
    token = await target.new_device("never reads")
    stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = target.channel.stream_stream(
        STREAM, request_serializer=lambda b: b
    )
    empty = ingest_pb2.UploadRequest(
        seq=1,
        batch_id="empty",
        calls=ingest_pb2.CallLogBatch(records=[ingest_pb2.CallRecord() for _ in range(10_000)]),
    ).SerializeToString()
    before = target.rss_mib()
    written = 0

    async def write() -> None:
        nonlocal written
        call = stream(metadata=auth(token))
        with contextlib.suppress(Exception):
            while True:
                await call.write(empty)
                written += 1

    task = asyncio.ensure_future(write())
    await asyncio.sleep(seconds)
    after = target.rss_mib()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    growth = None if before is None or after is None else after - before
    return Finding(
        "unread acks",
        "RSS growth <= 200 MiB",
        f"{num(growth)} MiB after {written:,} batches written in {seconds:.0f} s",
        growth is not None and growth <= 200,
        {"rss_before_mib": before, "rss_after_mib": after, "batches_written": written},
    )


async def unknown_tokens(target: Target, seconds: float) -> Finding:
    """Callers with random 6 KB tokens, 64 at a time; a real report's latency beside them."""
    reports = report_pb2_grpc.ReportServiceStub(target.channel)
    now = int(time.time() * 1000)
    request = report_pb2.CallSummaryRequest(
        filter=report_pb2.ReportFilter(from_ms=now - 30 * DAY_MS, to_ms=now)
    )
    before = target.rss_mib()
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while True:
            token = f"csk_{secrets.token_urlsafe(4500)}_x"
            with contextlib.suppress(grpc.aio.AioRpcError):
                await reports.CallSummary(request, metadata=auth(token), timeout=30)
            sent += 1

    async def attack() -> None:
        await asyncio.gather(*(caller() for _ in range(64)))

    latency = Histogram()

    async def legit() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            await reports.CallSummary(request, metadata=auth(target.admin_key), timeout=30)
            latency.record(int((time.monotonic() - started) * 1e6))
            await asyncio.sleep(0.2)

    attacking = asyncio.ensure_future(attack())
    try:
        await legit()
    finally:
        attacking.cancel()
        await asyncio.gather(attacking, return_exceptions=True)
    after = target.rss_mib()
    growth = None if before is None or after is None else after - before
    p99 = latency.summary(1e-3)["p99"]
    return Finding(
        "unknown tokens",
        "RSS growth <= 100 MiB, a real CallSummary p99 <= 1,000 ms",
        f"{num(growth)} MiB after {sent:,} calls; CallSummary p99 {num(p99)} ms",
        growth is not None and growth <= 100 and p99 <= 1000,
        {"rss_before_mib": before, "rss_after_mib": after, "calls": sent, "p99_ms": p99},
    )


async def huge_messages(target: Target, seconds: float) -> Finding:
    """60 concurrent 15 MB Uploads (a call with a 15 MB note) from one device."""
    token = await target.new_device("huge messages")
    ingest = ingest_pb2_grpc.IngestServiceStub(target.channel)
    huge = _calls("huge", 1, note="x" * (15 * 1024 * 1024))
    before = target.rss_mib()
    peak = before or 0.0
    codes: dict[str, int] = {}

    async def one() -> None:
        try:
            await ingest.Upload(huge, metadata=auth(token), timeout=60)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, target.rss_mib() or 0.0)
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(one() for _ in range(60)))
    sampler.cancel()
    growth = None if before is None else peak - before
    return Finding(
        "huge messages",
        "RSS growth <= 300 MiB; refused as RESOURCE_EXHAUSTED or INVALID_ARGUMENT",
        f"{num(growth)} MiB peak growth; statuses {codes}",
        growth is not None
        and growth <= 300
        and set(codes) <= {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"},
        {"rss_before_mib": before, "rss_peak_mib": peak, "statuses": codes},
    )


async def report_flood(target: Target, seconds: float) -> Finding:
    """24 callers of 365-day CallSummary and UniqueClients; a device's uploads beside them."""
    reports = report_pb2_grpc.ReportServiceStub(target.channel)
    now = int(time.time() * 1000)
    year = report_pb2.ReportFilter(from_ms=now - 365 * DAY_MS, to_ms=now)
    codes: dict[str, int] = {}

    async def caller(i: int) -> None:
        while True:
            try:
                if i % 2:
                    await reports.CallSummary(
                        report_pb2.CallSummaryRequest(filter=year),
                        metadata=auth(target.admin_key),
                        timeout=60,
                    )
                else:
                    await reports.UniqueClients(
                        report_pb2.UniqueClientsRequest(filter=year, page_size=1000),
                        metadata=auth(target.admin_key),
                        timeout=60,
                    )
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.1)

    async def attack() -> None:
        await asyncio.gather(*(caller(i) for i in range(24)))

    before = target.rss_mib()
    victim, health = await _beside(target, attack(), seconds)
    after = target.rss_mib()
    ack = victim.summary()["ack_ms"]
    return Finding(
        "report flood",
        "a device's ack p99 <= 1,000 ms, health checks <= 500 ms",
        f"ack p99 {num(ack['p99'])} ms ({victim.latency_us.count} acked, failed"
        f" {victim.errors or 0}), health max {num(max(health, default=None))} ms; reports {codes}",
        victim.ok() and ack["p99"] <= 1000 and max(health, default=0) <= 500,
        {
            "victim": victim.summary(),
            "health_ms": health,
            "reports": codes,
            "rss_before_mib": before,
            "rss_after_mib": after,
        },
    )


async def device_flood(target: Target, seconds: float) -> Finding:
    """One device: 8 streams, each with 4 batches of 5,000 calls in flight; another uploads.

    The flood keeps the server at its write capacity, where admission by time holds every batch
    for up to ``admission_max_queue_ms`` (1 s) of queued writes: the bound on another device is
    that plus its own write, 2 s, not the sub-second ack of an idle server. Health checks share
    the event loop with parsing the flood's 5,000-call messages, hence 1 s for them here.
    """
    token = await target.new_device("flooder")
    stream = target.channel.stream_stream(
        STREAM,
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.UploadAck.FromString,
    )
    statuses: dict[str, int] = {}

    async def flood(s: int) -> None:
        sent = 0

        async def requests() -> AsyncIterator[bytes]:
            nonlocal sent
            while True:
                yield _calls(f"flood{s}-{sent}", 5000).SerializeToString()
                sent += 1

        while True:
            try:
                async for _ in stream(requests(), metadata=auth(token)):
                    pass
            except grpc.aio.AioRpcError as exc:
                statuses[exc.code().name] = statuses.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.2)

    async def attack() -> None:
        await asyncio.gather(*(flood(s) for s in range(8)))

    victim, health = await _beside(target, attack(), seconds)
    ack = victim.summary()["ack_ms"]
    return Finding(
        "device flood",
        "another device's ack p99 <= 2,000 ms, health checks <= 1,000 ms",
        f"ack p50 {num(ack['p50'])} ms, p99 {num(ack['p99'])} ms, max {num(ack['max'])} ms"
        f" ({victim.latency_us.count} acked, failed {victim.errors or 0});"
        f" health max {num(max(health, default=None))} ms",
        victim.ok() and ack["p99"] <= 2000 and max(health, default=0) <= 1000,
        {"victim": victim.summary(), "health_ms": health, "flooder_statuses": statuses},
    )


async def garbage_enrollment(target: Target, seconds: float) -> Finding:
    """64 callers redeeming garbage enrollment codes; a real enrollment's latency beside them."""
    ingest = ingest_pb2_grpc.IngestServiceStub(target.channel)
    tried = 0

    async def caller() -> None:
        nonlocal tried
        while True:
            code = f"cse_{secrets.token_urlsafe(16)}_{secrets.token_urlsafe(24)}"
            with contextlib.suppress(grpc.aio.AioRpcError):
                await ingest.RegisterDevice(
                    ingest_pb2.RegisterDeviceRequest(enrollment_code=code), timeout=30
                )
            tried += 1

    async def attack() -> None:
        await asyncio.gather(*(caller() for _ in range(64)))

    attacking = asyncio.ensure_future(attack())
    latency = Histogram()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            await target.new_device("legit")
            latency.record(int((time.monotonic() - started) * 1e6))
    finally:
        attacking.cancel()
        await asyncio.gather(attacking, return_exceptions=True)
    p99 = latency.summary(1e-3)["p99"]
    return Finding(
        "garbage enrollment codes",
        "a real CreateEmployee + CreateEnrollment + RegisterDevice p99 <= 1,000 ms",
        f"p99 {num(p99)} ms beside {tried:,} garbage redemptions",
        p99 <= 1000,
        {"enrollments": latency.count, "garbage": tried, "p99_ms": p99},
    )


async def hostile_fields(target: Target, seconds: float) -> Finding:
    """A 5,000-character time zone, Factory, a 1 MB name, 50,000 tags, INT64_MAX versions."""
    admin = admin_pb2_grpc.AdminServiceStub(target.channel)
    operator = auth(target.operator_token)
    outcomes: dict[str, str] = {}

    async def status(name: str, call: Awaitable[Any], want: grpc.StatusCode) -> None:
        try:
            await call
            outcomes[name] = "OK (accepted)"
        except grpc.aio.AioRpcError as exc:
            shown = (exc.details() or "")[:120]
            ok = exc.code() == want and len(exc.details() or "") <= 300
            outcomes[name] = f"{'held' if ok else 'FAILED'}: {exc.code().name}: {shown}"

    for name, zone in (("5,000-character timezone", "A" * 5000), ("timezone Factory", "Factory")):
        await status(
            name,
            admin.CreateTenant(
                admin_pb2.CreateTenantRequest(name="t", default_region="IN", timezone=zone),
                metadata=operator,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await status(
        "50,000 tags",
        admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="t", number="9876500000", tags=["x"] * 50_000),
            metadata=auth(target.admin_key),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for name, request in (
        ("1 MB name", _calls("bigname", 1, name="n" * 1_000_000)),
        ("updated_at_ms INT64_MAX", _calls("maxver", 1, updated_at_ms=2**63 - 1)),
    ):
        ack = await _upload(target, request)
        reason = ack.errors[0].reason[:120] if ack.errors else ""
        held = ack.rejected == 1 and bool(reason)
        outcomes[name] = f"{'held' if held else 'FAILED'}: rejected {ack.rejected}: {reason}"
    held = all(value.startswith("held") for value in outcomes.values())
    return Finding(
        "hostile fields",
        "each refused with INVALID_ARGUMENT or a per-record reject naming the limit",
        "; ".join(f"{k}: {v.split(':')[0]}" for k, v in outcomes.items()),
        held,
        outcomes,
    )


async def erasure_lasts(target: Target, seconds: float) -> Finding:
    """A call is erased with EraseNumber, then the device sends it again (and a newer version)."""
    admin = admin_pb2_grpc.AdminServiceStub(target.channel)
    reports = report_pb2_grpc.ReportServiceStub(target.channel)
    number = f"+9197{secrets.randbelow(10**8):08d}"
    request = _calls("erased", 3, number=number)
    await _upload(target, request)
    await admin.EraseNumber(
        admin_pb2.EraseNumberRequest(number=number), metadata=auth(target.admin_key)
    )
    await _upload(target, request)
    newer = ingest_pb2.UploadRequest()
    newer.CopyFrom(request)
    newer.batch_id += "-newer"
    for record in newer.calls.records:
        record.updated_at_ms = int(time.time() * 1000)
    await _upload(target, newer)
    now = int(time.time() * 1000)
    found = 0
    page = await reports.CallHistory(
        report_pb2.CallHistoryRequest(
            filter=report_pb2.ReportFilter(from_ms=now - DAY_MS, to_ms=now + 60_000),
            page_size=1000,
        ),
        metadata=auth(target.admin_key),
    )
    found = sum(1 for call in page.calls if call.number == number)
    return Finding(
        "erasure lasts",
        "an erased number's calls stay gone when the device sends them again",
        f"{found} of 3 calls back after the re-send",
        found == 0,
        {"calls_back": found},
    )


# In the order they run: the precise ones first, the floods last; the server settles between.
ATTACKS: dict[str, Callable[[Target, float], Awaitable[Finding]]] = {
    "hostile_fields": hostile_fields,
    "erasure_lasts": erasure_lasts,
    "unknown_tokens": unknown_tokens,
    "garbage_enrollment": garbage_enrollment,
    "unread_acks": unread_acks,
    "huge_messages": huge_messages,
    "report_flood": report_flood,
    "device_flood": device_flood,
}


async def _prepare(target: Target, calls: int) -> None:
    """A tenant, its admin key, a well-behaved device, and ``calls`` calls for the reports."""
    admin = admin_pb2_grpc.AdminServiceStub(target.channel)
    tenant = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(
            name=f"abuse {secrets.token_hex(3)}", default_region="IN", timezone="Asia/Kolkata"
        ),
        metadata=auth(target.operator_token),
    )
    target.tenant_id, target.admin_key = tenant.tenant_id, tenant.admin_api_key
    target.device_token = await target.new_device("well behaved")
    for start in range(0, calls, 5000):
        await _upload(target, _calls(f"seed{start}", min(5000, calls - start)))


async def run_attacks(
    address: str,
    operator_token: str,
    pid: int | None,
    names: list[str],
    seconds: float,
    seed_calls: int,
) -> list[Finding]:
    """Every chosen attack, one after another, on one tenant."""
    async with grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_receive_message_length", 64 * MiB),
        ],
    ) as channel:
        target = Target(channel, operator_token, pid)
        say(f"preparing a tenant with {seed_calls:,} calls")
        await _prepare(target, seed_calls)
        findings = []
        for name in sorted(names, key=list(ATTACKS).index):
            say(f"attack: {name}")
            try:
                finding = await ATTACKS[name](target, seconds)
            except Exception as exc:  # one broken attack is reported, the rest still run
                finding = Finding(
                    name, "-", f"the attack failed: {type(exc).__name__}: {exc}", False
                )
            try:
                finding.details["settle_s"] = await settle(target)
            except grpc.aio.AioRpcError as exc:
                finding.details["settle_s"] = None
                say(f"  the server did not settle: {exc.code().name}: {exc.details()}")
            say(f"  {'held' if finding.held else 'BROKEN'}: {finding.figure}")
            findings.append(finding)
        return findings


def table(findings: list[Finding]) -> str:
    """Attack, bound, figure, held."""
    return aligned(
        [
            (f.attack, f"{'held  ' if f.held else 'BROKEN'}  {f.bound}  |  {f.figure}")
            for f in findings
        ]
    )


def run(args: argparse.Namespace) -> int:
    """``python -m callsight.loadtest abuse``: exit 0 when every bound held."""
    names = args.attacks or list(ATTACKS)
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown or not (args.spawn_server or args.target):
        print(
            f"error: unknown attacks {unknown}; choose from {', '.join(ATTACKS)}"
            if unknown
            else "error: give --spawn-server or --target (with $CALLSIGHT_OPERATOR_TOKEN)",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="callsight-abuse-")) if args.spawn_server else None
    server = ServerProcess(work / "server") if work is not None else None
    try:
        if server is not None:
            server.start()
            address, token, pid = server.address, server.operator_token, server.pid
        else:
            address, token, pid = args.target, args.operator_token, args.server_pid
        findings = uvloop.run(run_attacks(address, token, pid, names, args.seconds, args.calls))
    finally:
        if server is not None:
            server.kill()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(findings))
    write_json(args.out, {"target": address, "findings": [asdict(f) for f in findings]})
    return 0 if all(f.held for f in findings) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m callsight.loadtest abuse``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", metavar="HOST:PORT", help="a running callsight server")
    where.add_argument("--spawn-server", action="store_true", help="start one on a temp dir")
    add_flags(
        parser,
        (
            "--operator-token",
            str,
            "the target's operator token (default $CALLSIGHT_OPERATOR_TOKEN)",
            {"default": os.environ.get("CALLSIGHT_OPERATOR_TOKEN")},
        ),
        ("--server-pid", int, "with --target: the local server's pid, to read its RSS"),
        (
            "--attacks",
            lambda text: [a.strip() for a in text.split(",") if a.strip()],
            "comma-separated attacks (default: all): " + ", ".join(ATTACKS),
        ),
        ("--seconds", 10.0, "how long each timed attack runs"),
        ("--calls", 20_000, "calls uploaded first, so the reports have work"),
        ("--out", DEFAULT_OUT, "JSON result file"),
    )
