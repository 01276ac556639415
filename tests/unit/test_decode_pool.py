"""The decode workers: same results as decoding in the server, in arrival order, and a lost worker
costs nothing but its time (real worker processes, started with spawn)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from callsight.core.clock import SYSTEM_CLOCK
from callsight.pipeline.crypto import Keyring, TenantCipher, new_data_key
from callsight.pipeline.decode_pool import DecodePool, PoolBroken
from callsight.pipeline.encode import Decoded, NumberCodec, Source, decode_many
from callsight.pipeline.ingest import POOL_MIN_RECORDS, DecodeQueue
from callsight.pipeline.stages import StageTimes
from callsight.pipeline.validate import BatchRejected
from callsight.v1 import common_pb2, ingest_pb2

NOW = 1_780_000_000_000
RING_A = Keyring(TenantCipher(1, new_data_key()))
RING_B = Keyring(TenantCipher(7, new_data_key(), index_key=new_data_key()))
SENDERS = [
    Source("tenant-a", "device-1", "employee-1", "IN", RING_A),
    Source("tenant-a", "device-2", "employee-2", "IN", RING_A),
    Source("tenant-a", "device-3", "employee-3", "US", RING_A),
    Source("tenant-b", "device-4", "employee-4", "IN", RING_B),
]
RINGS = {"tenant-a": RING_A, "tenant-b": RING_B}


def calls(n: int, first: int = 0) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=first, batch_id=f"calls-{first}")
    for i in range(first, first + n):
        request.calls.records.add(
            call_id=f"c{i}",
            # Some local, some international, one unusable: a rejection inside the batch.
            number=(
                "12" if i % 97 == 5 else f"98765{i % 300:05d}" if i % 2 else f"+1650555{i:04d}"
            ),
            name=f"Client {i % 40}" if i % 3 else "",
            type=common_pb2.CALL_TYPE_OUTGOING,
            started_at_ms=NOW - 3_600_000 + i,
            duration_s=i % 600,
            sim_slot=i % 2,
            note="follow up" if i % 11 == 0 else "",
        )
    return request


def contacts(n: int) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=1, batch_id="contacts")
    for i in range(n):
        request.contacts.records.add(
            contact_id=f"k{i}",
            name=f"Contact {i}",
            numbers=[f"+9198765{i:05d}", "x" if i == 3 else f"0{i % 7}0 5555 1234"],
            updated_at_ms=NOW - i,
        )
    return request


def telemetry(n: int) -> ingest_pb2.UploadRequest:
    request = ingest_pb2.UploadRequest(seq=2, batch_id="telemetry")
    for i in range(n):
        request.telemetry.records.add(
            captured_at_ms=NOW - 1000 * i, battery_pct=50, latitude=12.34567, sim_ids=["sim-1"]
        )
    return request


def plain(decoded: Decoded) -> list[dict[str, Any]]:
    """The rows with every ciphertext decrypted (fresh encryptions differ in their nonces)."""
    rows: list[dict[str, Any]] = decoded.rows.to_arrow().to_pylist()
    for row in rows:
        ring = RINGS[row["tenant_id"]]
        for name, value in row.items():
            if name.endswith("_enc"):
                many = isinstance(value, list)
                row[name] = [ring.decrypt(v) for v in value] if many else ring.decrypt(value)
    return rows


def same(left: Decoded | BatchRejected, right: Decoded | BatchRejected) -> None:
    if isinstance(right, BatchRejected):
        assert isinstance(left, BatchRejected) and str(left) == str(right)
        return
    assert isinstance(left, Decoded)
    assert (left.table, left.size, left.errors) == (right.table, right.size, right.errors)
    assert left.indices.tolist() == right.indices.tolist()
    assert left.keys == right.keys
    assert left.versions.tolist() == right.versions.tolist()
    assert plain(left) == plain(right)


def test_a_cipher_rebuilt_from_its_derived_keys_is_the_same_cipher() -> None:
    copy = TenantCipher.from_derived_keys(*RING_B.current.derived_keys())
    assert copy.key_id == 7
    assert RING_B.decrypt(copy.encrypt("+919876543210")) == "+919876543210"
    assert copy.blind_index("+919876543210") == RING_B.blind_index("+919876543210")
    with pytest.raises(ValueError, match="32 bytes"):
        TenantCipher.from_derived_keys(1, b"short", bytes(32))


async def test_workers_decode_exactly_what_the_server_would() -> None:
    uploads = [
        (calls(300), SENDERS[0]),
        (calls(40, first=1000), SENDERS[1]),  # grouped with the first
        (calls(25, first=2000), SENDERS[2]),  # another region: a group of its own
        (ingest_pb2.UploadRequest(seq=9, batch_id="empty"), SENDERS[0]),  # refused whole
        (contacts(30), SENDERS[3]),
        (telemetry(20), SENDERS[1]),
        (calls(60, first=3000), SENDERS[3]),  # another tenant and key
    ]
    pool = DecodePool(1)
    try:
        await asyncio.wait_for(pool.start(), 60)
        assert pool.ready
        pooled, seconds = await pool.decode(uploads, NOW)
    finally:
        pool.close()
    here = decode_many(uploads, NumberCodec(), NOW)
    assert len(pooled) == len(here) == len(uploads)
    for left, right in zip(pooled, here, strict=True):
        same(left, right)
    assert seconds > 0
    stats = pool.stats()
    assert stats is not None and stats.number_misses > 0


async def test_a_lost_worker_fails_only_the_pool_and_a_new_start_serves_again() -> None:
    pool = DecodePool(1)
    try:
        await asyncio.wait_for(pool.start(), 60)
        (pid,) = pool._stats  # the worker that answered
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(PoolBroken):
            for _ in range(50):  # until the executor notices the death
                await pool.decode([(calls(10), SENDERS[0])], NOW)
                await asyncio.sleep(0.1)
        assert not pool.started and pool.restarts == 1
        await asyncio.wait_for(pool.start(), 60)
        (result,), _ = await pool.decode([(calls(10), SENDERS[0])], NOW)
        assert isinstance(result, Decoded) and result.rows.num_rows + len(result.errors) == 10
    finally:
        pool.close()
    with pytest.raises(PoolBroken):
        pool.start()


async def test_results_are_handed_out_in_arrival_order_wherever_decoded() -> None:
    """A large chunk goes to the worker, a small one after it is decoded on the loop at once:
    the small one still waits for the large one, so a device's batches reach dedup in order."""
    pool = DecodePool(1)
    queue = DecodeQueue(NumberCodec(), SYSTEM_CLOCK, StageTimes(), pool)
    try:
        await asyncio.wait_for(pool.start(), 60)
        done: list[str] = []
        large = queue.decode(calls(POOL_MIN_RECORDS + 100), SENDERS[0])
        large.add_done_callback(lambda _: done.append("large"))
        await asyncio.sleep(0)  # the large one's loop turn: sent to the worker
        small = queue.decode(calls(3, first=5000), SENDERS[0])
        small.add_done_callback(lambda _: done.append("small"))
        await asyncio.wait_for(asyncio.gather(large, small), 60)
    finally:
        pool.close()
    assert done == ["large", "small"]
    assert (queue.decoded_by_workers, queue.decoded_here) == (1, 1)
    assert large.result().rows.num_rows == POOL_MIN_RECORDS + 100 - len(large.result().errors)


async def test_a_queue_decodes_on_the_loop_until_its_workers_answer() -> None:
    pool = DecodePool(1)
    queue = DecodeQueue(NumberCodec(), SYSTEM_CLOCK, StageTimes(), pool)
    try:
        first = await queue.decode(calls(POOL_MIN_RECORDS), SENDERS[0])
        assert pool.started and not pool.ready  # started by that chunk, not waited for
        assert (queue.decoded_by_workers, queue.decoded_here) == (0, 1)
        await asyncio.wait_for(pool.start(), 60)
        second = await queue.decode(calls(POOL_MIN_RECORDS, first=97 * 100), SENDERS[0])
        assert queue.decoded_by_workers == 1
        assert first.rows.num_rows == second.rows.num_rows
    finally:
        pool.close()


_PARENT = """
import asyncio, sys
from callsight.pipeline.decode_pool import DecodePool

async def main() -> None:
    pool = DecodePool(1)
    await pool.start()
    print("worker", *pool._stats, flush=True)
    await asyncio.sleep(60)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_exit_when_their_server_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        # Skips the pool's log line.
        line = next(line for line in parent.stdout if line.startswith("worker "))
        worker = int(line.split()[1])
        assert psutil.pid_exists(worker)
        parent.kill()
        parent.wait()
        gone, _ = psutil.wait_procs([psutil.Process(worker)], timeout=10)
        assert gone, "the decode worker outlived its SIGKILLed server"
    finally:
        parent.kill()
