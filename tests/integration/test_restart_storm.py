"""A restart storm: a fleet whose server is SIGKILLed and restarted mid-run loses nothing.

The fleet reconnects every device to the restarted server (same port, same data); the reports
then show every generated call exactly once, and each device's recovery is measured.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from callsight.loadtest.fleet import FleetOptions, run_fleet
from callsight.loadtest.harness import ServerProcess
from callsight.loadtest.workload import WorkloadSpec
from tests.conftest import OPERATOR_TOKEN, master_key_b64

DEVICES = 24


def test_a_fleet_survives_a_server_restart(tmp_path: Path) -> None:
    env = {"CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN, "CALLSIGHT_MASTER_KEY": master_key_b64()}
    server = ServerProcess(tmp_path / "server", env=env)
    server.start()
    first_pid = server.pid
    try:
        options = FleetOptions(
            target=server.address,
            operator_token=OPERATOR_TOKEN,
            devices=DEVICES,
            # Every device syncs each second, so every stream is open when the SIGKILL lands.
            spec=WorkloadSpec(
                mode="steady",
                duration_s=6.0,
                sync_interval_s=1.0,
                calls_per_hour=1800.0,
                contacts=False,
                seed=7,
            ),
            server_pid=server.pid,
            progress=False,
            restart_at_s=2.0,
        )
        result = asyncio.run(run_fleet(options, say=lambda _: None, server_process=server))
    finally:
        server.stop()
    assert server.pid != first_pid
    data = result.to_json()
    assert result.ok, data["verify"]
    assert data["verify"]["report"]["calls"] == data["generated"]["calls"] > 0
    restart = data["restart"]
    assert restart["error"] is None
    assert restart["devices_interrupted"] == DEVICES
    assert restart["devices_served_again"] == DEVICES
    assert 0 < restart["all_served_s"] < 30
    assert data["errors"].get("UNAVAILABLE", 0) >= DEVICES  # the streams did break
