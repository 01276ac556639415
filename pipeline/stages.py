"""Where a batch's time goes between arriving and being acked, summarised per interval.

Each stage a batch passes (waiting for its device's identity, for admission, for its decode
turn, decoding, loading dedup state, waiting for its rows to be written) adds its duration here,
and so does each flush (waiting for a writer, preparing, inserting);
``summary()`` gives count, p50, p99 and max per stage since the last summary, which the server
logs every few seconds while batches flow. It answers "why did this ack take 5 s" without a
profiler: a profiler shows where CPU goes, not where a batch waits.
"""

from __future__ import annotations

import numpy as np

# The stages in the order a batch passes them.
STAGES = (
    "source",  # resolving the device's identity and keys
    "admit",  # waiting for buffer space and the device's fair turn
    "decode_wait",  # from asking for its decode to having its rows (the loop turn's decode too)
    "decode",  # its share of its chunk's decode, validate, normalise, encrypt (loop or worker)
    "dedup_load",  # loading the device's stored versions (first batch of a device)
    "write",  # from buffering the rows to the insert holding them returning
    "flush_queue",  # per flush: from the buffer being full or old to a writer taking it
    "prepare",  # per flush: concatenating and hashing its rows (a thread)
    "insert",  # per flush: the insert, retries included
    "ack_wait",  # from the batch being durable to its ack being handed to gRPC
    "total",  # from the message arriving to its ack being handed to gRPC
    "loop_lag",  # how late the event loop ran a 100 ms timer (sampled by the server)
)


class StageTimes:
    """Durations per stage since the last ``summary()``; appends only, no locking (one loop)."""

    def __init__(self) -> None:
        self._seconds: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def add(self, stage: str, seconds: float) -> None:
        """Counts ``seconds`` spent in ``stage`` by one batch."""
        self._seconds[stage].append(seconds)

    def add_many(self, stage: str, seconds: float, batches: int) -> None:
        """Counts ``seconds`` spent in ``stage`` by each of ``batches`` batches."""
        self._seconds[stage].extend([seconds] * batches)

    def summary(self) -> dict[str, dict[str, float]]:
        """count, p50/p99/max in ms per stage that saw batches; resets the counts."""
        out: dict[str, dict[str, float]] = {}
        for stage, seconds in self._seconds.items():
            if not seconds:
                continue
            ms = np.asarray(seconds) * 1000.0
            p50, p99 = np.percentile(ms, [50, 99])
            out[stage] = {
                "n": len(seconds),
                "p50_ms": round(float(p50), 1),
                "p99_ms": round(float(p99), 1),
                "max_ms": round(float(ms.max()), 1),
            }
            seconds.clear()
        return out
