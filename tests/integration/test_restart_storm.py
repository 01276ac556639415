"""Restart storms and crash loops: a fleet whose server is SIGKILLed mid-run loses nothing.

The fleet reconnects every device to the restarted server (same port, same data); the reports
and the rows in chDB then hold every generated call exactly once, and each device's recovery
is measured.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from callsight.loadtest.fleet import FleetOptions, FleetResult, crash_times, run_fleet
from callsight.loadtest.harness import ServerProcess
from callsight.loadtest.suite import add_direct_counts
from callsight.loadtest.workload import WorkloadSpec
from tests.conftest import OPERATOR_TOKEN, master_key_b64

DEVICES = 24


def _run(data_dir: Path, duration_s: float, restart_at_s: tuple[float, ...]) -> FleetResult:
    """A steady fleet against a spawned server that is SIGKILLed at ``restart_at_s``; verified
    through the reports and then, once the server has stopped, against the rows in its chDB."""
    # The server's default report quotas: the verification waits out their retry delays.
    env = {"CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN, "CALLSIGHT_MASTER_KEY": master_key_b64()}
    server = ServerProcess(data_dir, env=env)
    server.start()
    try:
        options = FleetOptions(
            target=server.address,
            operator_token=OPERATOR_TOKEN,
            devices=DEVICES,
            # Every device syncs each second, so every stream is open when a SIGKILL lands.
            spec=WorkloadSpec(
                mode="steady",
                duration_s=duration_s,
                sync_interval_s=1.0,
                calls_per_hour=1800.0,
                contacts=False,
                seed=7,
            ),
            server_pid=server.pid,
            progress=False,
            restart_at_s=restart_at_s,
        )
        result = asyncio.run(run_fleet(options, say=lambda _: None, server_process=server))
    finally:
        server.stop()
    add_direct_counts(result, f"chdb://{(data_dir / 'clickhouse').resolve()}", "callsight")
    return result


def test_a_fleet_survives_a_server_restart(tmp_path: Path) -> None:
    result = _run(tmp_path / "server", 6.0, (2.0,))
    data = result.to_json()
    assert result.ok, data["verify"]
    assert data["verify"]["database"]["calls"] == data["generated"]["calls"]
    assert data["verify"]["report"]["calls"] == data["generated"]["calls"] > 0
    restart = data["restart"]
    assert restart["error"] is None
    assert restart["devices_interrupted"] == DEVICES
    assert restart["devices_served_again"] == DEVICES
    assert 0 < restart["all_served_s"] < 30
    assert restart["client_loop_lag_max_ms_first_30_s"] >= 0
    assert data["errors"].get("UNAVAILABLE", 0) >= DEVICES  # the streams did break


def test_a_crash_loop_loses_and_doubles_nothing(tmp_path: Path) -> None:
    # Ten SIGKILLs at random moments of a 30 s run, on the same data directory: every acked
    # call is stored once (the direct counts read FINAL and raw rows), and the totals in the
    # reports equal the ground truth.
    moments = crash_times(10, 30.0, seed=11)
    result = _run(tmp_path / "server", 30.0, moments)
    data = result.to_json()
    assert result.ok, (data["verify"], data["failures"][:5])
    crashes = data["restart"]["crashes"]
    assert len(crashes) == 10
    assert all(crash["error"] is None for crash in crashes)
    assert data["verify"]["database"]["calls"] == data["generated"]["calls"] > 0
    assert data["verify"]["report"]["calls"] == data["generated"]["calls"]
