"""Fixtures integration tests share: a webhook receiver per test, a webhook server per module, and
an empty database of its own per test (migration tests)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
from callsight.storage.database import Database
from tests.conftest import make_config
from tests.integration.receiver import SETTINGS, Receiver, serve


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve() as r:
        yield r


@pytest.fixture(scope="module")
async def hooks_channel(data_dir: Path, log_file: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A server of its own, for the module, with short webhook delivery settings."""
    svc = Service(make_config(data_dir, f"test_{secrets.token_hex(4)}", **SETTINGS))
    await svc.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
        yield ch
    await svc.stop()


@pytest.fixture
async def empty_db(data_dir: Path) -> AsyncIterator[Database]:
    """A database of its own in the session's chDB, with no table (migrate it as the test needs),
    dropped after the test."""
    database = Database(f"chdb://{data_dir / 'clickhouse'}", f"scratch_{secrets.token_hex(4)}")
    yield database
    await database.command(f"DROP DATABASE IF EXISTS {database.name}")
    database.close()
