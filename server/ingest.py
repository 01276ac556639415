"""IngestService: device registration, and Stream and Upload adapted onto the ingest pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeAlias

import grpc

from callsight.core.clock import Clock
from callsight.core.errors import InvalidArgument, Unauthenticated
from callsight.pipeline.encode import Source
from callsight.pipeline.ingest import Ingestor, Ticket
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.phone import valid_region
from callsight.pipeline.validate import BatchRejected
from callsight.server.auth import (
    DEVICE_PREFIX,
    ENROLLMENT_PREFIX,
    Authenticator,
    TokenHasher,
    current_caller,
    new_public_id,
    split_token,
)
from callsight.storage.directory import Device, Directory, Tenant
from callsight.v1 import ingest_pb2, ingest_pb2_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """What devices call."""

    def __init__(
        self,
        directory: Directory,
        hasher: TokenHasher,
        authenticator: Authenticator,
        keys: TenantKeys,
        ingestor: Ingestor,
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._directory = directory
        self._hasher = hasher
        self._auth = authenticator
        self._keys = keys
        self._ingestor = ingestor
        self._tenants: dict[str, Tenant] = {}
        # One registration at a time in this process keeps an enrollment code single-use.
        self._register_lock = asyncio.Lock()

    async def RegisterDevice(
        self, request: ingest_pb2.RegisterDeviceRequest, context: Context
    ) -> ingest_pb2.RegisterDeviceResponse:
        info = request.device
        region = valid_region(info.region, "device.region") if info.region else ""
        code = request.enrollment_code.strip()
        shape = split_token(code)
        if shape is None or shape[0] != ENROLLMENT_PREFIX:
            raise Unauthenticated("enrollment_code is not a callsight enrollment code")
        async with self._register_lock:
            enrollment = await self._directory.enrollment(shape[1])
            if enrollment is None or not self._hasher.matches(code, enrollment.code_hash):
                raise Unauthenticated("unknown enrollment code")
            if enrollment.used_at_ms is not None:
                raise Unauthenticated(
                    "this enrollment code was already used; ask an admin for a new one"
                )
            now = self._clock.now_ms()
            if now >= enrollment.expires_at_ms:
                raise Unauthenticated(
                    "this enrollment code has expired; ask an admin for a new one"
                )
            device_id = new_public_id()
            token, token_hash = self._hasher.issue(DEVICE_PREFIX, device_id)
            # Used first: a crash between the two writes leaves a dead code, never a reusable one.
            await self._directory.put_enrollment(
                replace(enrollment, used_at_ms=now, device_id=device_id)
            )
            await self._directory.put_device(
                Device(
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
                    fcm_id=info.fcm_id,
                    sim_ids=tuple(info.sim_ids),
                    region=region,
                )
            )
        return ingest_pb2.RegisterDeviceResponse(
            device_id=device_id, device_token=token, employee_id=enrollment.employee_id
        )

    async def _source(self) -> Source:
        """Who is sending, from the device token; refuses a device revoked since it connected."""
        caller = current_caller()
        device = await self._auth.device(caller.device_id)
        if device is None or device.revoked:
            raise Unauthenticated("this device was revoked; enroll it again")
        region = device.region
        if not region:
            tenant = self._tenants.get(caller.tenant_id)
            if tenant is None:
                tenant = await self._directory.tenant(caller.tenant_id)
                if tenant is None:
                    raise Unauthenticated("the device's tenant no longer exists")
                self._tenants[caller.tenant_id] = tenant
            region = tenant.default_region
        return Source(
            tenant_id=caller.tenant_id,
            device_id=caller.device_id,
            employee_id=caller.employee_id,
            region=region,
            keyring=await self._keys.keyring(caller.tenant_id),
        )

    async def Upload(
        self, request: ingest_pb2.UploadRequest, context: Context
    ) -> ingest_pb2.UploadAck:
        source = await self._source()
        ticket = self._ingestor.try_admit(request)
        return await self._ingestor.ingest(request, source, ticket)

    async def Stream(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest | InvalidArgument],
        context: Context,
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        # A reader task admits batches (waiting for buffer space stops reading, so HTTP/2 flow
        # control holds the device) while this generator sends acks in request order.
        acks: asyncio.Queue[asyncio.Future[ingest_pb2.UploadAck] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, acks))
        try:
            while (pending := await acks.get()) is not None:
                yield await pending
            await reader  # surfaces a reader failure (e.g. revoked device) as the status
        finally:
            reader.cancel()
            # Batches whose acks can no longer be sent still finish writing; nobody awaits them.
            while not acks.empty():
                left = acks.get_nowait()
                if left is not None:
                    left.add_done_callback(_consume)

    async def _read(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest | InvalidArgument],
        acks: asyncio.Queue[asyncio.Future[ingest_pb2.UploadAck] | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in request_iterator:
                source = await self._source()
                if isinstance(request, InvalidArgument):
                    done = loop.create_future()
                    done.set_result(self._rejected(ingest_pb2.UploadRequest(), str(request)))
                    await acks.put(done)
                    continue
                ticket = await self._ingestor.admit(request)
                await acks.put(asyncio.ensure_future(self._one(request, source, ticket)))
        finally:
            await acks.put(None)

    async def _one(
        self, request: ingest_pb2.UploadRequest, source: Source, ticket: Ticket
    ) -> ingest_pb2.UploadAck:
        try:
            return await self._ingestor.ingest(request, source, ticket)
        except BatchRejected as exc:
            return self._rejected(request, str(exc))

    def _rejected(self, request: ingest_pb2.UploadRequest, reason: str) -> ingest_pb2.UploadAck:
        """The ack of a batch refused whole; the stream stays open."""
        return ingest_pb2.UploadAck(
            seq=request.seq,
            batch_id=request.batch_id,
            result=ingest_pb2.UPLOAD_RESULT_REJECTED,
            errors=[ingest_pb2.RecordError(index=0, reason=reason)],
            server_time_ms=self._clock.now_ms(),
        )


def _consume(future: asyncio.Future[ingest_pb2.UploadAck]) -> None:
    if not future.cancelled():
        future.exception()
