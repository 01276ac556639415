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
    retry_max_elapsed_s: float  # a flush still failing this long after its first try fails
    admission_max_queue_ms: int  # admit while the queued work drains within this at the rate
    stream_max_unacked: int  # acks a stream may have outstanding before it stops being read
    # while other devices hold or wait for budget, one may hold max(limit / devices, this)
    device_min_share_bytes: int
    # processes that decode and encode large chunks of batches (0: all on the event loop)
    decode_workers: int = 0

    def __post_init__(self) -> None:
        sizes = (
            self.max_rows,
            self.max_bytes,
            self.max_age_ms,
            self.max_in_flight,
            self.admission_max_queue_ms,
            self.stream_max_unacked,
            self.device_min_share_bytes,
        )
        if self.decode_workers < 0:
            raise ValueError("decode_workers must be 0 or more")
        if min(sizes) <= 0:
            raise ValueError(
                "max_rows, max_bytes, max_age_ms, max_in_flight, admission_max_queue_ms, "
                "stream_max_unacked and device_min_share_bytes must be positive"
            )
