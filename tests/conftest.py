"""Shared fixtures: one chDB path per test session, isolated by database name."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from callsight.server import logs
from callsight.server.app import Service
from callsight.server.config import Config, Secret
from callsight.storage.database import Database

MASTER_KEY = os.urandom(32)
OPERATOR_TOKEN = "op-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("callsight-data")


@pytest.fixture(scope="session")
def log_file(data_dir: Path) -> Iterator[Path]:
    """Every log line of the in-process servers, for tests that scan them."""
    path = data_dir / "server.log"
    with path.open("a", buffering=1) as stream:
        logs.configure("debug", stream)
        yield path


def make_config(data_dir: Path, database: str, **overrides: object) -> Config:
    """A config for an in-process server on a free port inside the session's chDB path."""
    settings: dict[str, object] = {
        "listen": "127.0.0.1:0",
        # Many servers at once: each serves its metrics on a free port (service.metrics_port).
        "metrics_listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "dsn": Secret(f"chdb://{data_dir / 'clickhouse'}"),
        "database": database,
        "operator_token": Secret(OPERATOR_TOKEN),
        "master_key": MASTER_KEY,
        "grace_period_s": 2.0,
        # Tests fire reports far faster than people do: no rate limit, and a long queue for
        # the running slots (tests/integration/test_report_quota.py sets the defaults back).
        "report_rate_per_tenant": 1e6,
        "report_burst_per_tenant": 1_000_000,
        "report_max_queue_ms": 600_000,
    }
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


def master_key_b64() -> str:
    return base64.b64encode(MASTER_KEY).decode()


@pytest.fixture(scope="session")
async def service(data_dir: Path, log_file: Path) -> AsyncIterator[Service]:
    svc = Service(make_config(data_dir, f"test_{secrets.token_hex(4)}"))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture(scope="session")
async def channel(service: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
async def db(service: Service) -> AsyncIterator[Database]:
    """A second connection to the session server's database, for direct counts."""
    database = Database(service.config.dsn.reveal(), service.config.database)
    yield database
    database.close()
