"""IngestService: device registration, and Stream and Upload adapted onto the ingest pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, TypeAlias

import grpc

from callsight.core.clock import Clock
from callsight.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    StorageRefused,
    StreamIdle,
    Unauthenticated,
)
from callsight.pipeline.budget import Owner
from callsight.pipeline.encode import Source
from callsight.pipeline.ingest import Ingestor, Ticket
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import (
    MAX_DEVICE_FIELD_BYTES,
    MAX_FCM_ID_BYTES,
    MAX_ID_BYTES,
    MAX_SIM_IDS,
    text_problem,
    too_many,
)
from callsight.pipeline.phone import valid_region
from callsight.pipeline.validate import BatchRejected
from callsight.server.auth import (
    DEVICE_PREFIX,
    ENROLLMENT_PREFIX,
    TokenHasher,
    current_caller,
    new_public_id,
    split_token,
)
from callsight.server.errors import client_message
from callsight.server.metrics import AckMetrics
from callsight.server.policy import PolicyMessages
from callsight.server.webhooks import WebhookEvents
from callsight.storage.activity import DeviceActivity
from callsight.storage.claims import EnrollmentClaims
from callsight.storage.directory import Device, Directory, Enrollment
from callsight.storage.identities import Identities
from callsight.v1 import ingest_pb2, ingest_pb2_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_USED = "this enrollment code was already used; ask an admin for a new one"
# When a refused stream may try again: a device's dead streams take keepalive to be found.
_SERVER_FULL_RETRY_S = 1.0
_DEVICE_FULL_RETRY_S = 5.0


@dataclass(frozen=True)
class StreamLimits:
    """Bounds on open ``Stream`` calls; ``callsight.server.config.Config`` holds the values."""

    max_streams: int  # open in this process
    max_per_device: int  # open for one device
    idle_timeout_s: float  # a stream sending nothing this long is ended
    # at max_streams, the longest-idle stream gives its slot to a new one if idle this long
    yield_idle_s: float = 10.0


class OpenStreams:
    """Counts open streams, in all and per device; refuses one over either limit."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self._per_device: dict[Owner, int] = {}
        self.open = 0

    def enter(self, owner: Owner, make_room: Callable[[], bool] | None = None) -> None:
        """Counts a new stream of ``owner``, or raises ``ResourceExhausted`` saying which limit.

        At the server's limit ``make_room`` may end an idle stream to admit this one (True if it
        did): ``open`` then exceeds the limit until that stream has ended.
        """
        limits = self._limits
        mine = self._per_device.get(owner, 0)
        if mine >= limits.max_per_device:
            raise ResourceExhausted(
                f"this device already has {mine} streams open, the most one device may have; "
                "send on one of them (a stream takes any number of batches) or close one",
                _DEVICE_FULL_RETRY_S,
            )
        if self.open >= limits.max_streams and (make_room is None or not make_room()):
            raise ResourceExhausted(
                f"the server has {self.open} streams open, its limit; retry shortly or use "
                "another server",
                _SERVER_FULL_RETRY_S,
            )
        self._per_device[owner] = mine + 1
        self.open += 1

    def leave(self, owner: Owner) -> None:
        """Uncounts a stream counted by ``enter``."""
        left = self._per_device[owner] - 1
        if left:
            self._per_device[owner] = left
        else:
            del self._per_device[owner]
        self.open -= 1

    @property
    def devices(self) -> int:
        """How many devices have a stream open."""
        return len(self._per_device)

    def of(self, owner: Owner) -> int:
        """How many streams ``owner`` has open."""
        return self._per_device.get(owner, 0)


class IdleStreams:
    """Ends streams that wait longer than ``idle_timeout_s`` for their next message, and on
    demand the one that has waited longest (``end_longest_idle``).

    One timer checks every waiting stream a few times per timeout, instead of a timeout armed and
    disarmed around every message read (about 20 us of event-loop time per message at 1,500
    messages/s). A stream is ended up to a quarter of the timeout (at most 1 s) late. Acks of
    batches already read are still sent before the stream ends.
    """

    def __init__(self, idle_timeout_s: float) -> None:
        self._timeout_s = idle_timeout_s
        # reader -> since (loop time); a reader re-enters on every message, so the longest
        # waiting come first.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], str] = {}  # reader -> why it is being ended
        self._sweeper: asyncio.TimerHandle | None = None
        self.yielded = 0  # streams ended by end_longest_idle

    def end_longest_idle(self, min_idle_s: float) -> bool:
        """Ends the stream that has waited longest for its next message if that is at least
        ``min_idle_s``, so that its slot goes to a stream with something to send; True if so."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, since in self._waiting.items():
            if now - since < min_idle_s:
                return False
            if task not in self._expired:
                self._end(
                    task,
                    f"this stream sent nothing for {now - since:.0f} s and the server, at its "
                    "limit of open streams, gave its slot to a device with something to send; "
                    "open a new stream when there is something to send",
                )
                self.yielded += 1
                return True
        return False

    def _end(self, task: asyncio.Task[Any], why: str) -> None:
        self._expired[task] = why
        task.cancel()

    async def next_message(self, messages: AsyncIterator[Any]) -> Any:
        """``anext(messages)``; raises ``Unavailable`` once the stream sent nothing for too long."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = loop.time()
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._period_s, self._sweep)
        try:
            return await anext(messages)
        except asyncio.CancelledError:
            why = self._expired.pop(task, None)
            if why is None:
                raise
            task.uncancel()
            raise StreamIdle(why) from None
        finally:
            self._waiting.pop(task, None)

    @property
    def _period_s(self) -> float:
        return min(1.0, self._timeout_s / 4)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self._timeout_s
        # Waiting since the oldest first (see ``_waiting``): the walk stops at the first stream
        # still within its timeout, so a sweep costs the streams it ends, not all that wait.
        expired = list(takewhile(lambda item: item[1] <= oldest, self._waiting.items()))
        for task, _ in expired:
            if task not in self._expired:
                self._end(
                    task,
                    f"no message on this stream for {self._timeout_s:g} s, so the server ended"
                    " it to free its slot; open a new stream when there is something to send",
                )
        self._sweeper = loop.call_later(self._period_s, self._sweep) if self._waiting else None


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """What devices call."""

    def __init__(
        self,
        directory: Directory,
        hasher: TokenHasher,
        keys: TenantKeys,
        ingestor: Ingestor,
        clock: Clock,
        identities: Identities,
        claims: EnrollmentClaims,
        limits: StreamLimits,
        *,
        policies: PolicyMessages,
        activity: DeviceActivity,
        webhooks: WebhookEvents | None = None,
        metrics: AckMetrics,
    ) -> None:
        # Every ack (and batch refused whole) is counted once, where it is made.
        self._acks = metrics
        self._clock = clock
        # Batches refused whole raise batch.rejected webhook events.
        self._webhooks = webhooks
        # Each device's last call and last batch, in memory (ListDevices, DeviceHealth).
        self._activity = activity
        self._policies = policies
        self._limits = limits
        self.streams = OpenStreams(limits)
        self._idle = IdleStreams(limits.idle_timeout_s)
        self._directory = directory
        self._hasher = hasher
        self._keys = keys
        self._ingestor = ingestor
        self._identities = identities
        # Claims keep an enrollment code single-use across processes, without a lock.
        self._claims = claims

    async def RegisterDevice(
        self, request: ingest_pb2.RegisterDeviceRequest, context: Context
    ) -> ingest_pb2.RegisterDeviceResponse:
        info = request.device
        _check_device(info)
        region = valid_region(info.region, "device.region") if info.region else ""
        code = request.enrollment_code.strip()
        shape = split_token(code)
        if shape is None or shape[0] != ENROLLMENT_PREFIX:
            raise Unauthenticated("enrollment_code is not a callsight enrollment code")
        enrollment_id = shape[1]
        # Ids are looked up in memory: a garbage code costs no query of its own.
        enrollment = await self._identities.find(lambda: self._identities.enrollment(enrollment_id))
        if enrollment is None or not self._hasher.matches(code, enrollment.code_hash):
            raise Unauthenticated("unknown enrollment code")
        if enrollment.used:
            raise Unauthenticated(_USED)
        now = self._clock.now_ms()
        if now >= enrollment.expires_at_ms:
            raise Unauthenticated("this enrollment code has expired; ask an admin for a new one")
        if self._identities.employee_active(enrollment.tenant_id, enrollment.employee_id) is False:
            raise FailedPrecondition(
                "the employee of this enrollment code was deactivated; ask an admin to reactivate"
                " them and issue a new code"
            )
        # Before the claim: a missing key must not leave the code used and no device.
        keyring = await self._keys.keyring(enrollment.tenant_id)
        device_id = new_public_id()
        token, token_hash = self._hasher.issue(DEVICE_PREFIX, device_id)
        # Claimed first and only the winner writes its device: a crash between leaves a dead
        # code, never a reusable one, and a losing claimant's token never exists.
        if not await self._claims.claim(enrollment.tenant_id, enrollment_id, device_id, now):
            raise Unauthenticated(_USED)
        device = Device(
            tenant_id=enrollment.tenant_id,
            device_id=device_id,
            employee_id=enrollment.employee_id,
            token_hash=token_hash,
            registered_at_ms=now,
            model=info.model,
            manufacturer=info.manufacturer,
            android_version=info.android_version,
            sdk_int=info.sdk_int,
            app_version=info.app_version,
            version_code=info.version_code,
            fcm_id_enc=keyring.encrypt(info.fcm_id),
            sim_ids_enc=tuple(map(keyring.encrypt, info.sim_ids)),
            region=region,
        )
        used = Enrollment(
            tenant_id=enrollment.tenant_id,
            enrollment_id=enrollment_id,
            employee_id=enrollment.employee_id,
            code_hash=enrollment.code_hash,
            created_at_ms=enrollment.created_at_ms,
            expires_at_ms=enrollment.expires_at_ms,
            used_at_ms=now,
            device_id=device_id,
        )
        await asyncio.gather(
            self._directory.put_enrollment(used), self._directory.put_device(device)
        )
        return ingest_pb2.RegisterDeviceResponse(
            device_id=device_id,
            device_token=token,
            employee_id=enrollment.employee_id,
            policy=await self._policies.for_employee(enrollment.tenant_id, enrollment.employee_id),
        )

    async def GetPolicy(
        self, request: ingest_pb2.GetPolicyRequest, context: Context
    ) -> ingest_pb2.GetPolicyResponse:
        source = await self._source()
        return ingest_pb2.GetPolicyResponse(
            policy=await self._policies.for_employee(source.tenant_id, source.employee_id)
        )

    async def _source(self) -> Source:
        """Who is sending, from the device token; refuses a device revoked since it connected."""
        caller = current_caller()
        # Memory only: the interceptor already authenticated the token.
        device = self._identities.device(caller.device_id)
        if device is None or device.revoked:
            raise Unauthenticated("this device was revoked; enroll it again")
        self._activity.seen((caller.tenant_id, caller.device_id), self._clock.now_ms())
        region = device.region
        if not region:
            tenant = self._identities.tenant(caller.tenant_id)
            if tenant is None:
                raise Unauthenticated("the device's tenant no longer exists")
            region = tenant.default_region
        return Source(
            tenant_id=caller.tenant_id,
            device_id=caller.device_id,
            employee_id=caller.employee_id,
            region=region,
            keyring=self._keys.cached(caller.tenant_id)
            or await self._keys.keyring(caller.tenant_id),
        )

    async def Upload(
        self, request: ingest_pb2.UploadRequest, context: Context
    ) -> ingest_pb2.UploadAck:
        source = await self._source()
        owner = (source.tenant_id, source.device_id)
        ticket = await self._ingestor.admit_unary(request, owner)
        try:
            ack = await self._ingestor.ingest(request, source, ticket)
        except BatchRejected as exc:
            self._activity.acked(owner, ingest_pb2.UPLOAD_RESULT_REJECTED, self._clock.now_ms())
            self._acks.rejected()
            await self._tell_rejected(source, request, str(exc))
            raise
        self._activity.acked(owner, ack.result, ack.server_time_ms)
        self._acks.acked(request, ack)
        return ack

    async def Stream(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest | InvalidArgument],
        context: Context,
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        caller = current_caller()
        owner = (caller.tenant_id, caller.device_id)
        # Counted before any message is read; uncounted once, when the call ends however it ends.
        self.streams.enter(owner, self._make_room)
        counted = True
        self._activity.seen(owner, self._clock.now_ms())

        def leave(_: object = None) -> None:
            nonlocal counted
            if counted:
                counted = False
                self.streams.leave(owner)

        # The stubs want their own callback class; any callable of the context is what grpc takes.
        context.add_done_callback(leave)  # type: ignore[arg-type]
        try:
            async for ack in self._stream(request_iterator):
                yield ack
        finally:
            leave()

    def _make_room(self) -> bool:
        return self._idle.end_longest_idle(self._limits.yield_idle_s)

    async def _stream(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest | InvalidArgument]
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        # A reader task admits batches (waiting for buffer space stops reading, so HTTP/2 flow
        # control holds the device) while this generator sends acks in request order. Each
        # batch holds an ack slot until its ack is sent, so a client that does not read its
        # acks stops being read instead of piling them up here.
        slots = asyncio.Semaphore(self._ingestor.settings.stream_max_unacked)
        # Bounded by the slots (plus the end marker).
        acks: asyncio.Queue[_Pending | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, acks, slots))
        stages = self._ingestor.stages
        try:
            while (pending := await acks.get()) is not None:
                ack, done_s = await pending.future
                now = time.perf_counter()
                stages.add("ack_wait", now - done_s)
                stages.add("total", now - pending.arrived_s)
                yield ack
                slots.release()
            await reader  # surfaces a reader failure (e.g. revoked device) as the status
        finally:
            reader.cancel()
            # Batches whose acks can no longer be sent still finish writing; nobody awaits them.
            while not acks.empty():
                left = acks.get_nowait()
                if left is not None:
                    left.future.add_done_callback(_consume)

    async def _read(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest | InvalidArgument],
        acks: asyncio.Queue[_Pending | None],
        slots: asyncio.Semaphore,
    ) -> None:
        loop = asyncio.get_running_loop()
        stages = self._ingestor.stages
        requests = aiter(request_iterator)
        try:
            while True:
                # A free ack slot before the next message is read off the wire.
                await slots.acquire()
                try:
                    request = await self._idle.next_message(requests)
                except StopAsyncIteration:
                    return
                arrived = time.perf_counter()
                source = await self._source()
                resolved = time.perf_counter()
                stages.add("source", resolved - arrived)
                if isinstance(request, InvalidArgument):
                    done = loop.create_future()
                    rejected = self._rejected(
                        ingest_pb2.UploadRequest(), str(request), source.tenant_id
                    )
                    await self._tell_rejected(source, ingest_pb2.UploadRequest(), str(request))
                    self._acks.rejected()
                    done.set_result((rejected, resolved))
                    acks.put_nowait(_Pending(arrived, done))
                    continue
                ticket = await self._ingestor.admit(request, (source.tenant_id, source.device_id))
                stages.add("admit", time.perf_counter() - resolved)
                future = asyncio.ensure_future(self._one(request, source, ticket))
                acks.put_nowait(_Pending(arrived, future))
        finally:
            acks.put_nowait(None)

    async def _one(
        self, request: ingest_pb2.UploadRequest, source: Source, ticket: Ticket
    ) -> tuple[ingest_pb2.UploadAck, float]:
        """The batch's ack and when it was ready (perf_counter seconds)."""
        try:
            ack = await self._ingestor.ingest(request, source, ticket)
        except BatchRejected as exc:
            ack = self._rejected(request, str(exc), source.tenant_id)
        except StorageRefused as exc:
            # Sending it again cannot succeed: answer it so the device moves on.
            ack = self._rejected(request, client_message(exc), source.tenant_id)
        self._activity.acked((source.tenant_id, source.device_id), ack.result, ack.server_time_ms)
        self._acks.acked(request, ack)
        if ack.result == ingest_pb2.UPLOAD_RESULT_REJECTED:
            await self._tell_rejected(source, request, ack.errors[0].reason)
        return ack, time.perf_counter()

    async def _tell_rejected(
        self, source: Source, request: ingest_pb2.UploadRequest, reason: str
    ) -> None:
        """Appends batch.rejected for the tenant's webhooks (a dict lookup when none wants it)."""
        if self._webhooks is not None:
            batch_id = request.batch_id if len(request.batch_id) <= MAX_ID_BYTES else ""
            await self._webhooks.batch_rejected(
                source.tenant_id,
                source.device_id,
                source.employee_id,
                batch_id,
                request.seq,
                reason,
            )

    def _rejected(
        self, request: ingest_pb2.UploadRequest, reason: str, tenant_id: str
    ) -> ingest_pb2.UploadAck:
        """The ack of a batch refused whole; the stream stays open."""
        # An oversized batch_id (one reason to refuse the batch) is not echoed back.
        batch_id = request.batch_id if len(request.batch_id) <= MAX_ID_BYTES else ""
        return ingest_pb2.UploadAck(
            seq=request.seq,
            batch_id=batch_id,
            result=ingest_pb2.UPLOAD_RESULT_REJECTED,
            errors=[ingest_pb2.RecordError(index=0, reason=reason)],
            server_time_ms=self._clock.now_ms(),
            policy_version=self._policies.policies.version(tenant_id),
        )


def _check_device(info: ingest_pb2.DeviceInfo) -> None:
    """InvalidArgument naming every DeviceInfo field over its cap (pipeline/limits.py)."""
    fields = [
        (f"device.{name}", getattr(info, name), MAX_DEVICE_FIELD_BYTES)
        for name in ("model", "manufacturer", "android_version", "app_version")
    ]
    fields.append(("device.fcm_id", info.fcm_id, MAX_FCM_ID_BYTES))
    problems = []
    if len(info.sim_ids) > MAX_SIM_IDS:
        problems.append(too_many("device.sim_ids", len(info.sim_ids), MAX_SIM_IDS))
    else:
        fields.extend((f"device.sim_ids[{i}]", v, MAX_ID_BYTES) for i, v in enumerate(info.sim_ids))
    problems.extend(p for f, v, limit in fields if (p := text_problem(v, f, limit)) is not None)
    if problems:
        raise InvalidArgument("; ".join(problems))


@dataclass(frozen=True)
class _Pending:
    """A stream's batch whose ack is owed: when its message arrived, and its ack when ready."""

    arrived_s: float
    future: asyncio.Future[tuple[ingest_pb2.UploadAck, float]]


def _consume(future: asyncio.Future[tuple[ingest_pb2.UploadAck, float]]) -> None:
    if not future.cancelled():
        future.exception()
