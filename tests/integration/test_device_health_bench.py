"""The DeviceHealth benchmark times the same report both ways on the same rows."""

from __future__ import annotations

import secrets
from pathlib import Path

from callsight.loadtest.device_health import by_history, measure
from callsight.storage import device_status


def test_the_history_form_reads_telemetry_and_the_current_one_does_not() -> None:
    history = by_history(device_status._STATUS)
    assert "FROM telemetry\n" in history and "telemetry_latest" not in history
    assert "FROM telemetry_latest" in device_status._STATUS
    assert "FROM telemetry\n" not in device_status._STATUS


async def test_both_forms_list_the_same_devices(data_dir: Path) -> None:
    said: list[str] = []
    database = f"device_health_{secrets.token_hex(4)}"
    figures = await measure(data_dir / "clickhouse", 20, 3, said.append, database)
    assert figures["telemetry_rows"] == 60
    assert figures["listed"] == 20  # none synced: every device is SILENT
    assert figures["latest_table_ms"] > 0 and figures["history_argmax_ms"] > 0
    assert len(said) == 2
