"""A seeded, realistic call-log generator for simulated fleets of Android agents.

Each device calls a pool of ~200 Indian mobile clients with a Zipf-like skew, spelled the ways
phones show them; a sales team's type mix (40% outgoing, 35% incoming, 15% missed, 7% rejected,
3% other); unanswered calls last 0 s, the rest lognormal around 60-120 s up to an hour; starts in
the last ``days`` days in Indian working hours, never in the future; call ids grow with time like
CallLog's ``_ID``; about 1% of the incoming, missed and rejected calls from a hidden number, 5% of
calls over WhatsApp, a fifth of those video. Drawn a device at a time in numpy columns, then cut
into serialised ``UploadRequest`` batches (batch ``i`` has ``seq == i + 1``); device ``d`` of seed
``s`` always gets the same calls, whatever the fleet's size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from callsight.v1 import common_pb2, ingest_pb2

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
IST_OFFSET_MS = 5 * HOUR_MS + 30 * 60_000  # India Standard Time is UTC+05:30
MAX_DURATION_S = 3600

# Call types and their shares; "other" is split over voicemail, blocked and answered elsewhere.
CALL_TYPES = np.array(
    [
        common_pb2.CALL_TYPE_OUTGOING,
        common_pb2.CALL_TYPE_INCOMING,
        common_pb2.CALL_TYPE_MISSED,
        common_pb2.CALL_TYPE_REJECTED,
        common_pb2.CALL_TYPE_VOICEMAIL,
        common_pb2.CALL_TYPE_BLOCKED,
        common_pb2.CALL_TYPE_ANSWERED_EXTERNALLY,
    ],
    dtype=np.int32,
)
CALL_TYPE_SHARES = np.array([0.40, 0.35, 0.15, 0.07, 0.01, 0.01, 0.01])
# How a phone shows the same number: with and without the space-separated country code, with the
# trunk prefix, bare.
FORMAT_SHARES = np.array([0.30, 0.25, 0.20, 0.25])
# Calls from a hidden number (incoming, missed or rejected ones; the phone logs "" and a
# presentation, here RESTRICTED), and calls over WhatsApp, some of them video: a sales team's
# phone is mostly its dialer. Drawn from a stream of their own, so every other column is what it
# was before they were added.
HIDDEN_SHARE = 0.01
HIDDEN_TYPES = (
    common_pb2.CALL_TYPE_INCOMING,
    common_pb2.CALL_TYPE_MISSED,
    common_pb2.CALL_TYPE_REJECTED,
)
WHATSAPP_SHARE = 0.05
VIDEO_SHARE = 0.2  # of the WhatsApp calls

# fmt: off
FIRST_NAMES = [
    "Aarav", "Aditi", "Amit", "Ananya", "Arjun", "Deepak", "Divya", "Gaurav", "Isha", "Karan",
    "Kavya", "Manoj", "Meera", "Neha", "Nikhil", "Pooja", "Priya", "Rahul", "Rajesh", "Ravi",
    "Rohit", "Sanjay", "Shreya", "Sneha", "Suresh", "Vikram", "Vivek",
]
SURNAMES = [
    "Sharma", "Patel", "Iyer", "Khan", "Reddy", "Nair", "Gupta", "Singh", "Mehta", "Rao", "Das",
    "Joshi", "Kulkarni", "Menon", "Verma",
]
# fmt: on
NOTES = (
    "Asked for a quote, call back Monday",
    "Interested in the premium plan",
    "Wrong number",
    "Send brochure on WhatsApp",
    "Follow up after the demo",
    "Payment pending, reminded",
    "Not interested",
    "Meeting fixed for Thursday 11 am",
)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to generate: ``devices`` devices of one tenant, each sending whole batches."""

    devices: int
    batches_per_device: int
    batch_size: int = 500
    days: int = 30
    pool_size: int = 200
    zipf_s: float = 1.0  # skew of client popularity: weight of rank r is 1 / r**s
    named_share: float = 0.6  # clients saved as a contact
    note_share: float = 0.05  # connected calls with a note
    seed: int = 1
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def calls_per_device(self) -> int:
        return self.batches_per_device * self.batch_size


@dataclass(frozen=True, slots=True)
class ClientPool:
    """A device's clients: ``spellings[i, f]`` is client ``i`` in format ``f``."""

    spellings: npt.NDArray[np.object_]
    names: npt.NDArray[np.object_]
    weights: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CallLog:
    """A device's calls, one column per CallRecord field, in call-id (and time) order."""

    call_id: list[str]
    number: list[str]
    name: list[str]
    type: list[int]
    started_at_ms: list[int]
    duration_s: list[int]
    sim_slot: list[int]
    sim_id: list[str]
    note: list[str]
    presentation: list[int]
    method: list[int]
    mode: list[int]

    def __len__(self) -> int:
        return len(self.call_id)


def ist_midnight_ms(now_ms: int) -> int:
    """The start of the IST day holding ``now_ms``, as epoch ms."""
    return (now_ms + IST_OFFSET_MS) // DAY_MS * DAY_MS - IST_OFFSET_MS


CALL_FIELDS = [f.name for f in fields(CallLog)]  # named as CallRecord's fields


def device_rng(seed: int, device: int) -> np.random.Generator:
    """The random stream of one device: independent of the fleet's size."""
    return np.random.default_rng([seed, device])


def zipf_weights(n: int, s: float) -> npt.NDArray[np.float64]:
    """Probabilities proportional to 1 / rank**s for ranks 1..n."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def mobile_numbers(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 10-digit Indian mobile numbers, mostly starting with 9 or 8."""
    leads = rng.choice(np.array([9, 8, 7, 6]), size=4 * n, p=[0.55, 0.25, 0.15, 0.05])
    numbers = leads * 1_000_000_000 + rng.integers(0, 1_000_000_000, size=4 * n)
    distinct = list(dict.fromkeys(numbers.tolist()))[:n]
    return [str(number) for number in distinct]


def spellings(national: str) -> list[str]:
    """One number in each of the formats weighted by FORMAT_SHARES."""
    return [f"+91 {national[:5]} {national[5:]}", f"+91{national}", f"0{national}", national]


def contact_names(rng: np.random.Generator, n: int, named_share: float) -> list[str]:
    """Contact names for ``n`` clients, ``""`` for those not saved."""
    first = rng.choice(FIRST_NAMES, size=n)
    last = rng.choice(SURNAMES, size=n)
    named = rng.random(n) < named_share
    return [f"{f} {s}" if keep else "" for f, s, keep in zip(first, last, named, strict=True)]


def client_pool(rng: np.random.Generator, spec: FleetSpec) -> ClientPool:
    """A device's clients with their spellings, contact names and call weights."""
    numbers = mobile_numbers(rng, spec.pool_size)
    table = np.empty((spec.pool_size, len(FORMAT_SHARES)), dtype=object)
    for i, national in enumerate(numbers):
        table[i, :] = spellings(national)
    names = np.array(contact_names(rng, spec.pool_size, spec.named_share), dtype=object)
    return ClientPool(table, names, zipf_weights(spec.pool_size, spec.zipf_s))


def start_times(rng: np.random.Generator, n: int, now_ms: int, days: int) -> npt.NDArray[np.int64]:
    """Sorted call start times in the last ``days`` days, in IST working hours, none in future."""
    today_ist = ist_midnight_ms(now_ms)
    day = rng.integers(0, days, size=n)
    hour = np.clip(rng.normal(14.0, 3.0, size=n), 8.0, 21.5)
    started = today_ist - day * DAY_MS + (hour * HOUR_MS).astype(np.int64)
    # Today's calls that would lie ahead of now move back by a day.
    started = np.where(started > now_ms - 60_000, started - DAY_MS, started)
    return np.sort(started).astype(np.int64)


def durations(rng: np.random.Generator, types: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """Talk time per call: 0 when the call did not connect, else lognormal, capped at an hour."""
    talk = np.minimum(np.ceil(rng.lognormal(np.log(90.0), 1.0, size=len(types))), MAX_DURATION_S)
    unanswered = rng.random(len(types)) < 0.3
    connected = (types == common_pb2.CALL_TYPE_INCOMING) | (
        (types == common_pb2.CALL_TYPE_OUTGOING) & ~unanswered
    )
    connected |= (types == common_pb2.CALL_TYPE_VOICEMAIL) | (
        types == common_pb2.CALL_TYPE_ANSWERED_EXTERNALLY
    )
    return np.where(connected, talk, 0).astype(np.int64)


def device_calls(device: int, spec: FleetSpec) -> CallLog:
    """All calls of one device, drawn in columns."""
    rng = device_rng(spec.seed, device)
    pool = client_pool(rng, spec)
    n = spec.calls_per_device
    client = rng.choice(spec.pool_size, size=n, p=pool.weights)
    spelled = rng.choice(len(FORMAT_SHARES), size=n, p=FORMAT_SHARES)
    types = rng.choice(CALL_TYPES, size=n, p=CALL_TYPE_SHARES)
    talk = durations(rng, types)
    # Android's _ID: increasing with time, with the odd gap left by a deleted entry.
    first_id = int(rng.integers(1_000, 50_000))
    ids = first_id + np.cumsum(1 + (rng.random(n) < 0.02))
    sim_slot = (rng.random(n) < 0.15).astype(np.int64)
    sims = [f"8991{rng.integers(10**14, 10**15)}{slot}" for slot in range(2)]
    noted = (talk > 0) & (rng.random(n) < spec.note_share)
    note_pick = rng.integers(0, len(NOTES), size=n)
    channel = np.random.default_rng([spec.seed, device, 0xCA11])
    hidden = (channel.random(n) < HIDDEN_SHARE) & np.isin(types, HIDDEN_TYPES)
    whatsapp = channel.random(n) < WHATSAPP_SHARE
    video = whatsapp & (channel.random(n) < VIDEO_SHARE)
    numbers = np.where(hidden, "", pool.spellings[client, spelled].astype(str))
    names = np.where(hidden, "", pool.names[client].astype(str))
    return CallLog(
        call_id=[str(i) for i in ids.tolist()],
        number=numbers.tolist(),
        name=names.tolist(),
        type=types.tolist(),
        started_at_ms=start_times(rng, n, spec.now_ms, spec.days).tolist(),
        duration_s=talk.tolist(),
        sim_slot=sim_slot.tolist(),
        sim_id=[sims[slot] for slot in sim_slot.tolist()],
        note=[NOTES[k] if keep else "" for k, keep in zip(note_pick, noted, strict=True)],
        presentation=np.where(
            hidden,
            common_pb2.NUMBER_PRESENTATION_RESTRICTED,
            common_pb2.NUMBER_PRESENTATION_ALLOWED,
        ).tolist(),
        method=np.where(
            whatsapp, common_pb2.CALL_METHOD_WHATSAPP, common_pb2.CALL_METHOD_PHONE
        ).tolist(),
        mode=np.where(video, common_pb2.CALL_MODE_VIDEO, common_pb2.CALL_MODE_VOICE).tolist(),
    )


def upload_request(
    log: CallLog, start: int, stop: int, seq: int, batch_id: str
) -> ingest_pb2.UploadRequest:
    """The calls ``start:stop`` of ``log`` as one UploadRequest."""
    columns = [getattr(log, name)[start:stop] for name in CALL_FIELDS]
    records = [
        ingest_pb2.CallRecord(**dict(zip(CALL_FIELDS, values, strict=True)))
        for values in zip(*columns, strict=True)
    ]
    return ingest_pb2.UploadRequest(
        seq=seq, batch_id=batch_id, calls=ingest_pb2.CallLogBatch(records=records)
    )


def fleet_batches(spec: FleetSpec) -> list[list[bytes]]:
    """Every device's serialised batches, indexed by device; batch ``i`` has ``seq == i + 1``."""
    out = []
    for device in range(spec.devices):
        log, size = device_calls(device, spec), spec.batch_size
        requests = (
            upload_request(log, i * size, (i + 1) * size, i + 1, f"d{device}-b{i + 1}")
            for i in range(spec.batches_per_device)
        )
        out.append([request.SerializeToString() for request in requests])
    return out


def interleave(per_device: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Every device's batches in one list, in the order they would arrive: round by round."""
    rounds = max(map(len, per_device), default=0)
    return [batches[i] for i in range(rounds) for batches in per_device if i < len(batches)]
