"""What each simulated device sends, pre-serialised, and the ground truth it implies.

Around the calls of ``loadtest.generate`` (with a lognormal per-device rate) an agent sends its
address book (the named clients of its pool), telemetry (every 30 min of working hours, or one
per sync), newer versions of some connected calls with a note, injected duplicates (``duplicates``
is the share of calls sent twice: half as whole batches re-sent after their ack, half repeated in
later batches) and a per-device clock offset on every timestamp. Backfill is one tick; in steady
mode tick ``k`` is due ``phase + k * sync_interval_s`` after the start with the calls of the
interval before it, stamped from ``now_ms``, so nothing lies in a device's future. Everything is a
pure function of (spec, device): the parent can regenerate the same bytes for the ceilings.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from callsight.loadtest.generate import (
    CALL_FIELDS,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    NOTES,
    FleetSpec,
    client_pool,
    device_calls,
    device_rng,
    interleave,
    ist_midnight_ms,
    upload_request,
)
from callsight.v1 import ingest_pb2

TELEMETRY_EVERY_MS = 30 * MINUTE_MS
TELEMETRY_MAX_DAYS = 30  # telemetry expires after 90 days; recent samples are what agents send
MAX_SKEW_MS = 12 * HOUR_MS  # the server refuses timestamps over a day ahead of its clock
KINDS = ("calls", "contacts", "telemetry")


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """What to generate for every device of the fleet (see the module docstring)."""

    mode: str = "backfill"  # "backfill" or "steady"
    days: int = 3
    duration_s: float = 60.0
    sync_interval_s: float = 10.0
    calls_per_day: float = 60.0
    calls_per_hour: float = 120.0
    batch_size: int = 200
    duplicates: float = 0.0
    note_share: float = 0.03
    contacts: bool = True
    telemetry: bool = True
    clock_skew_ms: int = 0
    seed: int = 1
    now_ms: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("backfill", "steady"):
            raise ValueError(f"mode must be backfill or steady, not {self.mode!r}")
        if self.batch_size < 1 or self.batch_size > 10_000:
            raise ValueError("batch_size must be 1-10,000 (the server's per-batch limit)")
        if not 0.0 <= self.duplicates <= 1.0:
            raise ValueError("duplicates must be a fraction within 0-1")
        if abs(self.clock_skew_ms) > MAX_SKEW_MS:
            raise ValueError(f"clock skew must be within +-{MAX_SKEW_MS} ms (12 h)")
        if self.days < 1:
            raise ValueError("days must be at least 1")

    @property
    def ticks(self) -> int:
        """Syncs per device: 1 in backfill."""
        if self.mode == "backfill":
            return 1
        return max(1, math.ceil(self.duration_s / self.sync_interval_s))


@dataclass(frozen=True, slots=True)
class Batch:
    """One UploadRequest on the wire; a re-send entry shares the original's bytes and seq."""

    seq: int
    kind: str
    records: int
    payload: bytes
    tick: int = 0
    resend_of: int = -1  # index of the original in the device's batches, for injected re-sends
    duplicate_records: int = 0  # records of this batch that were already sent before


@dataclass(slots=True)
class DeviceTruth:
    """What a device's batches must leave in the database, and what was injected."""

    calls_by_type: Counter[int] = field(default_factory=Counter)
    contacts: int = 0
    telemetry: int = 0
    note_versions: int = 0
    duplicate_records: int = 0  # call records sent again at the same version
    resent_batches: int = 0
    records: int = 0  # every record of every batch, duplicates included
    batches: int = 0
    wire_bytes: int = 0
    min_started_ms: int = 0
    max_started_ms: int = 0
    skew_ms: int = 0

    @property
    def calls(self) -> int:
        """Unique calls."""
        return sum(self.calls_by_type.values())


@dataclass(frozen=True, slots=True)
class DeviceWorkload:
    """One device's batches in send order, with the tick (sync) each is due in."""

    device: int
    batches: list[Batch]
    truth: DeviceTruth
    phase_s: float  # steady mode: when tick 0 is due, after the start


def _calls(
    spec: WorkloadSpec, device: int, rng: np.random.Generator
) -> tuple[ingest_pb2.CallLogBatch, list[int], FleetSpec]:
    """The device's calls as records, with the tick each belongs to."""
    rate = rng.lognormal(0.0, 0.5)  # this employee's rate relative to the fleet's mean
    if spec.mode == "backfill":
        n = max(1, int(rng.poisson(spec.calls_per_day * spec.days * rate)))
        gen = FleetSpec(1, 1, batch_size=n, days=spec.days, seed=spec.seed, now_ms=spec.now_ms)
        log = device_calls(device, gen)
        ticks = [0] * n
    else:
        per_tick = spec.calls_per_hour * spec.sync_interval_s / 3600.0 * rate
        counts = rng.poisson(per_tick, size=spec.ticks)
        n = int(counts.sum())
        gen = FleetSpec(1, 1, batch_size=max(n, 1), days=1, seed=spec.seed, now_ms=spec.now_ms)
        log = device_calls(device, gen)
        ticks = np.repeat(np.arange(spec.ticks), counts).tolist()
        # Calls of tick k happened in the sync interval before it, in real time from the anchor.
        phase_ms = _phase_s(spec, device) * 1000
        interval_ms = spec.sync_interval_s * 1000
        offsets = (np.asarray(ticks, dtype=np.float64) - 1 + rng.random(n)) * interval_ms
        started = np.sort((spec.now_ms + phase_ms + offsets).astype(np.int64))
        cut = {name: getattr(log, name)[:n] for name in CALL_FIELDS}
        log = replace(log, **cut | {"started_at_ms": started.tolist()})
    records = upload_request(log, 0, len(log), 0, "").calls
    return records, ticks, gen


def _phase_s(spec: WorkloadSpec, device: int) -> float:
    # Devices sync at their own moments, spread over one interval.
    return float(np.random.default_rng([spec.seed, device, 0xFA5E]).random()) * (
        spec.sync_interval_s if spec.mode == "steady" else 0.0
    )


def _contacts(
    spec: WorkloadSpec, device: int, gen: FleetSpec, skew_ms: int
) -> list[ingest_pb2.Contact]:
    """The named clients of the device's pool, as its address book shows them."""
    pool = client_pool(device_rng(spec.seed, device), gen)  # the same pool its calls come from
    rng = np.random.default_rng([spec.seed, device, 0xC0C0])
    saved = rng.integers(DAY_MS, 30 * DAY_MS, size=len(pool.names))
    return [
        ingest_pb2.Contact(
            contact_id=f"{1000 + i}",
            name=name,
            numbers=[str(pool.spellings[i, int(rng.integers(0, pool.spellings.shape[1]))])],
            updated_at_ms=int(spec.now_ms - saved[i] + skew_ms),
        )
        for i, name in enumerate(pool.names.tolist())
        if name
    ]


def _telemetry_times(spec: WorkloadSpec, phase_s: float) -> list[list[int]]:
    """Sample times per tick: every 30 min of IST working hours (backfill), one per sync."""
    if spec.mode == "steady":
        return [
            [int(spec.now_ms + (phase_s + k * spec.sync_interval_s) * 1000)]
            for k in range(spec.ticks)
        ]
    days = min(spec.days, TELEMETRY_MAX_DAYS)
    today_ist = ist_midnight_ms(spec.now_ms)
    times = [
        today_ist - day * DAY_MS + minute * MINUTE_MS
        for day in range(days, -1, -1)
        for minute in range(8 * 60, 21 * 60, TELEMETRY_EVERY_MS // MINUTE_MS)
    ]
    # The last ``days`` days up to now, like the calls (early in an IST day: mostly yesterday).
    oldest = spec.now_ms - days * DAY_MS
    return [[t for t in times if oldest <= t < spec.now_ms - MINUTE_MS]]


def _telemetry(
    rng: np.random.Generator, times: list[int], skew_ms: int
) -> list[ingest_pb2.Telemetry]:
    battery = rng.integers(5, 101, size=len(times))
    lat = 12.9 + rng.normal(0.0, 0.05, size=len(times))
    lon = 77.6 + rng.normal(0.0, 0.05, size=len(times))
    return [
        ingest_pb2.Telemetry(
            captured_at_ms=t + skew_ms,
            battery_pct=int(b),
            charging=bool(b > 90),
            latitude=float(la),
            longitude=float(lo),
            accuracy_m=12.5,
            network=ingest_pb2.NETWORK_TYPE_CELLULAR,
            app_version="3.2.1",
            version_code=321,
            android_version="14",
            sdk_int=34,
            model="Pixel 8",
        )
        for t, b, la, lo in zip(times, battery.tolist(), lat.tolist(), lon.tolist(), strict=True)
    ]


class _Builder:
    """Cuts records into batches with increasing seqs; tracks the truth as it goes."""

    def __init__(self, device: int, truth: DeviceTruth) -> None:
        self.device = device
        self.truth = truth
        self.batches: list[Batch] = []

    def add(
        self, kind: str, records: Sequence[object], tick: int, duplicate_records: int = 0
    ) -> None:
        seq = len(self.batches) + 1
        request = ingest_pb2.UploadRequest(seq=seq, batch_id=f"d{self.device}-b{seq}")
        getattr(request, kind).records.extend(records)
        payload = request.SerializeToString()
        self.batches.append(
            Batch(seq, kind, len(records), payload, tick, duplicate_records=duplicate_records)
        )
        self.truth.records += len(records)
        self.truth.batches += 1
        self.truth.wire_bytes += len(payload)

    def add_calls(
        self, records: list[ingest_pb2.CallRecord], repeats: list[ingest_pb2.CallRecord], tick: int
    ) -> None:
        """A calls batch of ``records`` followed by ``repeats``, calls sent before."""
        self.add("calls", [*records, *repeats], tick, duplicate_records=len(repeats))
        self.truth.duplicate_records += len(repeats)

    def resend(self, index: int, tick: int) -> None:
        original = self.batches[index]
        self.batches.append(replace(original, tick=tick, resend_of=index))
        self.truth.records += original.records
        self.truth.batches += 1
        self.truth.wire_bytes += len(original.payload)
        self.truth.resent_batches += 1
        if original.kind == "calls":
            self.truth.duplicate_records += original.records


def device_workload(spec: WorkloadSpec, device: int) -> DeviceWorkload:
    """Every batch device ``device`` sends, serialised, in send order, and its ground truth."""
    # Independent of generate's stream for the same device, so its calls stay what they are.
    rng = np.random.default_rng([spec.seed, device, 0x5EED])
    skew = 0
    if spec.clock_skew_ms:
        skew = int(rng.integers(-spec.clock_skew_ms, spec.clock_skew_ms + 1))
    calls, call_ticks, gen = _calls(spec, device, rng)
    records = list(calls.records)
    truth = DeviceTruth(skew_ms=skew)
    for record in records:
        record.started_at_ms += skew
        truth.calls_by_type[int(record.type)] += 1
    if records:
        truth.min_started_ms = min(r.started_at_ms for r in records)
        truth.max_started_ms = max(r.started_at_ms for r in records)
    phase = _phase_s(spec, device)
    half = spec.duplicates / 2
    noted = (rng.random(len(records)) < spec.note_share).tolist()
    repeated = (rng.random(len(records)) < half).tolist()
    by_tick: list[list[int]] = [[] for _ in range(spec.ticks)]
    for i, tick in enumerate(call_ticks):
        by_tick[tick].append(i)
    telemetry_times = _telemetry_times(spec, phase) if spec.telemetry else []
    builder = _Builder(device, truth)
    carry_dups: list[ingest_pb2.CallRecord] = []  # calls repeated inside the next calls batch
    pending_notes: list[ingest_pb2.CallRecord] = []  # newer versions not sent yet
    for tick in range(spec.ticks):
        last = tick == spec.ticks - 1
        if tick == 0 and spec.contacts:
            contacts = _contacts(spec, device, gen, skew)
            truth.contacts = len(contacts)
            for start in range(0, len(contacts), spec.batch_size):
                builder.add("contacts", list(contacts[start : start + spec.batch_size]), tick)
        first_call_batch = len(builder.batches)
        fresh = by_tick[tick]
        for start in range(0, len(fresh), spec.batch_size):
            chunk = fresh[start : start + spec.batch_size]
            builder.add_calls([records[i] for i in chunk], carry_dups, tick)
            carry_dups = [records[i] for i in chunk if repeated[i]]
        call_batches = range(first_call_batch, len(builder.batches))
        if telemetry_times:
            samples = _telemetry(rng, telemetry_times[tick], skew)
            truth.telemetry += len(samples)
            for start in range(0, len(samples), spec.batch_size):
                builder.add("telemetry", list(samples[start : start + spec.batch_size]), tick)
        # Notes written on a sync's calls go out with the next sync (backfill: at the end).
        notes_now, pending_notes = (
            pending_notes,
            [_with_note(records[i], rng) for i in fresh if noted[i] and records[i].duration_s],
        )
        if spec.mode == "backfill" or last:
            notes_now, pending_notes = notes_now + pending_notes, []
        dups_now, carry_dups = (carry_dups, []) if last else ([], carry_dups)
        truth.note_versions += len(notes_now)
        for start in range(0, max(len(notes_now), 1 if dups_now else 0), spec.batch_size):
            builder.add_calls(notes_now[start : start + spec.batch_size], dups_now, tick)
            dups_now = []
        # Whole batches re-sent after their ack, as after a lost ack; due in the same tick.
        for index in call_batches:
            if rng.random() < half:
                builder.resend(index, tick)
    return DeviceWorkload(device, builder.batches, truth, phase)


def _with_note(record: ingest_pb2.CallRecord, rng: np.random.Generator) -> ingest_pb2.CallRecord:
    """A newer version of ``record`` with a note written some minutes after the call ended."""
    later = ingest_pb2.CallRecord()
    later.CopyFrom(record)
    later.note = NOTES[int(rng.integers(0, len(NOTES)))]
    end_ms = record.started_at_ms + record.duration_s * 1000
    later.updated_at_ms = end_ms + int(rng.integers(1, 120)) * MINUTE_MS
    return later


def fleet_payloads(spec: WorkloadSpec, devices: int) -> list[bytes]:
    """Every device's batches interleaved round by round, as they would arrive: for ceilings."""
    return interleave(
        [[b.payload for b in device_workload(spec, d).batches] for d in range(devices)]
    )
