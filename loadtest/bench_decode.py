"""Micro-benchmark of pipeline.encode.decode: records/s with a cold and a warm NumberCodec.

Run ``python -m callsight.loadtest.bench_decode [--batches 200] [--records 500] [--devices 10]``.
Each device calls a pool of ~200 client numbers, written the way Android shows them in India
(international, trunk-prefixed, bare, spaced), so numbers and names repeat as they do in the
field; about 1 call in 20 carries a note. Requests are parsed before timing: only decode() counts.

* cold: a fresh codec for every batch, so each batch normalises and encrypts all its numbers;
* warm: one codec that has already seen every batch once, the steady state of a server.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections.abc import Callable

from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.encode import NumberCodec, Source, decode

from callsight.v1 import ingest_pb2

POOL_SIZE = 200
NOTE_RATE = 0.05
NAMED_RATE = 0.6
BASE_MS = 1_700_000_000_000


def _formats(national: str) -> list[str]:
    """The same Indian mobile number as different phones show it."""
    return [
        f"+91{national}",
        f"+91 {national[:5]} {national[5:]}",
        f"0{national}",
        national,
        f"0{national[:5]}-{national[5:]}",
    ]


def make_pool(rng: random.Random) -> list[tuple[list[str], str]]:
    """~200 client numbers of one device, each with its raw spellings and a contact name."""
    pool = []
    for i in range(POOL_SIZE):
        national = str(rng.choice("6789")) + "".join(rng.choice("0123456789") for _ in range(9))
        name = (
            f"Client {i} {rng.choice(['Sharma', 'Patel', 'Iyer', 'Khan'])}"
            if rng.random() < NAMED_RATE
            else ""
        )
        pool.append((_formats(national), name))
    return pool


def make_batch(
    rng: random.Random, pool: list[tuple[list[str], str]], first_id: int, records: int
) -> ingest_pb2.UploadRequest:
    """One CallLogBatch of ``records`` calls to numbers drawn from ``pool``."""
    request = ingest_pb2.UploadRequest(seq=first_id, batch_id=f"b{first_id}")
    for i in range(records):
        spellings, name = rng.choice(pool)
        call_type = rng.choice([1, 1, 2, 2, 2, 3, 5])
        request.calls.records.add(
            call_id=str(first_id + i),
            number=rng.choice(spellings),
            name=name,
            type=call_type,
            started_at_ms=BASE_MS + (first_id + i) * 60_000,
            duration_s=rng.randrange(1, 600) if call_type in (1, 2) and rng.random() < 0.7 else 0,
            sim_slot=rng.choice([0, 1]),
            sim_id="8991000900000000001",
            note="Asked for a quote, call back Monday" if rng.random() < NOTE_RATE else "",
            recording_uri="",
        )
    return request


def build(
    batches: int, records: int, devices: int, seed: int
) -> list[tuple[Source, ingest_pb2.UploadRequest]]:
    """The work: ``batches`` requests spread over ``devices`` devices of one tenant."""
    rng = random.Random(seed)
    keyring = Keyring(TenantCipher(1, new_data_key()))
    sources = [
        Source("tenant-1", f"device-{d}", f"employee-{d}", "IN", keyring) for d in range(devices)
    ]
    pools = [make_pool(rng) for _ in range(devices)]
    work = []
    for b in range(batches):
        d = b % devices
        request = make_batch(rng, pools[d], b * records, records)
        # Parse from bytes, as the server gets it, so field access costs what it costs there.
        work.append((sources[d], ingest_pb2.UploadRequest.FromString(request.SerializeToString())))
    return work


def run(
    work: list[tuple[Source, ingest_pb2.UploadRequest]], codec_for: Callable[[], NumberCodec]
) -> float:
    """Seconds to decode every request; ``codec_for`` is called once per request."""
    now_ms = BASE_MS + 10**12
    start = time.perf_counter()
    for source, request in work:
        decode(request, source, codec_for(), now_ms)
    return time.perf_counter() - start


def main() -> None:
    """Print records/s for a cold and a warm codec."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is shown")
    parser.add_argument("--profile", action="store_true", help="cProfile the warm run")
    args = parser.parse_args()

    work = build(args.batches, args.records, args.devices, args.seed)
    total = args.batches * args.records

    # Best of several runs: the figure of interest is the code's speed, not the machine's noise.
    cold = min(run(work, NumberCodec) for _ in range(args.repeat))
    print(
        f"cold codec: {total / cold:>10,.0f} records/s ({cold * 1000 / args.batches:.2f} ms/batch)"
    )

    codec = NumberCodec()
    run(work, lambda: codec)  # warm every cache with each batch once
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    warm = min(run(work, lambda: codec) for _ in range(args.repeat))
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    print(
        f"warm codec: {total / warm:>10,.0f} records/s ({warm * 1000 / args.batches:.2f} ms/batch)"
    )


if __name__ == "__main__":
    main()
