"""Fixtures the webhook tests share: a receiver per test and a server per module."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callsight.server.app import Service
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
