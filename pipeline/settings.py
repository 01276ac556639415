"""The pipeline's tuning, handed to it by the server; the defaults live in the server's config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineSettings:
    """Every knob of the ingest pipeline; ``callsight.server.config.Config`` builds it."""

    max_rows: int  # a table's buffer is flushed at this many rows
    max_bytes: int  # ... or at this many Arrow bytes
    max_age_ms: int  # ... or when its oldest row has waited this long
    buffer_max_bytes: int  # bytes admitted but not yet written before ingest pushes back
    max_in_flight: int  # concurrent inserts into ClickHouse
    dedup_max_entries: int  # (device, record) versions remembered before evicting devices
    retry_initial_s: float  # first delay before a failed insert is retried
    retry_max_s: float  # the delay doubles up to this

    def __post_init__(self) -> None:
        if min(self.max_rows, self.max_bytes, self.max_age_ms, self.max_in_flight) <= 0:
            raise ValueError("max_rows, max_bytes, max_age_ms and max_in_flight must be positive")
