"""IngestService: device registration, and (with the ingest pipeline) Stream and Upload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeAlias

import grpc

from proto.callsight.v1 import ingest_pb2, ingest_pb2_grpc
from server.admin import valid_region
from server.auth import DEVICE_PREFIX, ENROLLMENT_PREFIX, TokenHasher, new_public_id, split_token
from server.errors import Unimplemented
from storage.directory import Device, Directory, now_ms
from storage.errors import Unauthenticated

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """What devices call."""

    def __init__(self, directory: Directory, hasher: TokenHasher) -> None:
        self._directory = directory
        self._hasher = hasher
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
            now = now_ms()
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

    async def Upload(self, request: ingest_pb2.UploadRequest, context: Context) -> Any:
        raise Unimplemented("Upload is not built yet (the ingest pipeline)")

    async def Stream(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest], context: Context
    ) -> AsyncIterator[ingest_pb2.UploadAck]:
        raise Unimplemented("Stream is not built yet (the ingest pipeline)")
        yield  # pragma: no cover - makes this an async generator
