"""The README's first steps, as shipped in ``python -m callsight.loadtest.quickstart``, run
against a real server: the script's command line in a child process, the summary it prints."""

from __future__ import annotations

import asyncio
import sys

from callsight.server.app import Service
from tests.conftest import OPERATOR_TOKEN


async def test_the_quickstart_script_reaches_a_summary_with_numbers(service: Service) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callsight.loadtest.quickstart",
        "--target",
        f"127.0.0.1:{service.port}",
        "--operator-token",
        OPERATOR_TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, err.decode()
    text = out.decode()
    assert "5. Stream: batch 1 UPLOAD_RESULT_ACCEPTED: 3 accepted, 0 duplicates, 0 rejected" in text
    figures = dict(
        line.split() for line in text.splitlines() if line.startswith("     ") and line.split()
    )
    # Three calls with two clients: an outgoing call of 185 s, a missed call, an incoming one
    # of 62 s.
    assert figures["total_calls"] == "3"
    assert figures["outgoing_calls"] == "1"
    assert figures["incoming_calls"] == "1"
    assert figures["missed_calls"] == "1"
    assert figures["connected_calls"] == "2"
    assert figures["total_duration_s"] == "247"
    assert figures["unique_clients"] == "2"
    assert text.rstrip().splitlines()[-1].startswith("ADMIN_KEY=csk_")


async def test_the_quickstart_names_the_missing_server(service: Service) -> None:
    del service
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callsight.loadtest.quickstart",
        "--target",
        "127.0.0.1:1",
        "--operator-token",
        OPERATOR_TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 1
    assert "quickstart: UNAVAILABLE" in err.decode()
    assert "is the server running at 127.0.0.1:1?" in err.decode()
