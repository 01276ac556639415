"""Client-side helpers for integration tests: stubs, auth metadata, a tenant with a device."""

from __future__ import annotations

import asyncio
import secrets
import socket
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from callsight.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests.conftest import OPERATOR_TOKEN

Metadata = tuple[tuple[str, str], ...]


def auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


OPERATOR = auth(OPERATOR_TOKEN)


@dataclass
class Tenant:
    tenant_id: str
    admin_key: str

    @property
    def admin(self) -> Metadata:
        return auth(self.admin_key)


async def new_tenant(
    channel: grpc.aio.Channel, region: str = "IN", timezone: str = "Asia/Kolkata"
) -> Tenant:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    response = await admin.CreateTenant(
        admin_pb2.CreateTenantRequest(
            name=f"acme-{secrets.token_hex(3)}", default_region=region, timezone=timezone
        ),
        metadata=OPERATOR,
    )
    return Tenant(response.tenant_id, response.admin_api_key)


async def new_employee(
    channel: grpc.aio.Channel, tenant: Tenant, name: str, number: str, tags: tuple[str, ...] = ()
) -> str:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    response = await admin.CreateEmployee(
        admin_pb2.CreateEmployeeRequest(name=name, number=number, tags=tags),
        metadata=tenant.admin,
    )
    return response.employee_id


async def enroll(
    channel: grpc.aio.Channel, tenant: Tenant, employee_id: str, region: str = ""
) -> ingest_pb2.RegisterDeviceResponse:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    code = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=employee_id), metadata=tenant.admin
    )
    return await ingest.RegisterDevice(
        ingest_pb2.RegisterDeviceRequest(
            enrollment_code=code.enrollment_code,
            device=ingest_pb2.DeviceInfo(
                model="Pixel 8", manufacturer="Google", sdk_int=34, region=region
            ),
        )
    )


async def expect_status(awaitable: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits an RPC that must fail with ``code``; returns the error for message checks."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Prometheus scrapes of a server's /metrics: (name, labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(port: int) -> Samples:
    return await asyncio.to_thread(_scrape, port)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; KeyError (the test fails) when the series is not exported."""
    return samples[(name, frozenset(labels.items()))]
