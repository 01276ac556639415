"""Decode and encode in worker processes, so the server process keeps its interpreter for the rest.

The server is one process with one interpreter lock: gRPC's loop, decode, deduplication, the
batcher and the Python side of every insert share it. In a backfill of 500-record batches decode
was ~57% of that lock's time and the lock was busy ~100% of the run while the machine's second
core was mostly idle (py-spy). ``DecodePool`` moves the heavy middle of ``decode_many``, the
validation, normalisation, encryption and blind indexing of each group's records
(``encode.encode_group``), into ``workers`` processes started with ``spawn`` (never a fork of a
process running gRPC's threads). What stays in the server is cheap: ``encode.plan`` (refusing
batches whole, grouping), one ``SerializeToString`` per upload, and cutting each group's result
back into one Decoded per upload (``encode.place``).

Each worker holds its own ``NumberCodec`` (caches as big as the server's own), so a fleet's
numbers are normalised and encrypted once per worker. A group travels with its tenant's current
cipher as derived keys (``TenantCipher.derived_keys``: the AEAD and blind-index keys, never the
tenant's data key nor the master key) over the pipe to the server's own child; a worker keeps
the ciphers it rebuilt. Workers never open ClickHouse and hold nothing that needs writing: a
worker that dies takes only its jobs with it, and the server decodes those itself
(``PoolBroken``) and starts new workers. A worker exits as soon as its server is gone, also after
a SIGKILL (a thread waits on the parent's sentinel).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import structlog

from callsight.pipeline.chunk import Column, RowChunk
from callsight.pipeline.crypto import Keyring, TenantCipher
from callsight.pipeline.encode import (
    DEFAULT_CACHE_ENTRIES,
    SCHEMAS,
    CodecStats,
    Decoded,
    NumberCodec,
    Source,
    encode_group,
    place,
    plan,
)
from callsight.pipeline.validate import BatchRejected, record_count
from callsight.v1 import ingest_pb2

log = structlog.get_logger(__name__)

# Ciphers a worker keeps rebuilt, by derived keys; past this it starts over (tenants are few).
_MAX_CIPHERS = 10_000


class PoolBroken(Exception):
    """The workers cannot decode this job (one died, or the pool is shut down): decode it here."""


@dataclass(frozen=True, slots=True)
class _GroupJob:
    """What a worker needs to encode one group: its uploads as bytes and who sent each."""

    kind: str
    tenant_id: str
    region: str
    keys: tuple[int, bytes, bytes]  # the tenant's current cipher, TenantCipher.derived_keys()
    requests: list[bytes]
    device_ids: list[str]
    employee_ids: list[str]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A group's Decoded as plain values (its schema is the table's, rebuilt in the server)."""

    size: int
    num_rows: int
    columns: tuple[Column, ...]
    indices: npt.NDArray[np.int64]
    keys: list[str]
    versions: npt.NDArray[np.uint64]
    errors: list[tuple[int, str]]
    seconds: float  # the worker's time on it

    def decoded(self, table: str) -> Decoded:
        rows = RowChunk(SCHEMAS[table], self.num_rows, self.columns)
        return Decoded(table, self.size, rows, self.indices, self.keys, self.versions, self.errors)


class DecodePool:
    """``workers`` processes that run ``decode_many``'s encoding; started by ``start``."""

    def __init__(self, workers: int, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, got {workers}")
        self.workers = workers
        self._cache_entries = cache_entries
        self._executor: ProcessPoolExecutor | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed = False
        self._stats: dict[int, CodecStats] = {}  # each worker's, by pid, as last reported
        self.restarts = 0

    @property
    def started(self) -> bool:
        """Whether ``start`` was called since the pool was made or last broke."""
        return self._executor is not None

    @property
    def ready(self) -> bool:
        """Whether every worker has started and answered (until then callers decode themselves)."""
        return self._ready is not None and self._ready.done() and self._ready.exception() is None

    def start(self) -> asyncio.Future[None]:
        """Starts the workers; the result is done once each has answered. Call on the loop."""
        if self._closed:
            raise PoolBroken("the decode pool is shut down")
        if self._ready is not None:
            return self._ready
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._cache_entries,),
        )
        # One call per worker: a free worker takes the next call, so each new one takes one.
        hellos = [
            asyncio.wrap_future(self._executor.submit(_hello, 0.05)) for _ in range(self.workers)
        ]
        self._ready = asyncio.ensure_future(self._greet(hellos))
        return self._ready

    async def _greet(self, hellos: list[asyncio.Future[tuple[int, CodecStats]]]) -> None:
        try:
            answers = await asyncio.gather(*hellos)
        except Exception as exc:
            # Never ready: the server decodes everything itself, as with no workers.
            log.error("decode workers failed to start; decoding on the event loop", error=repr(exc))
            raise
        for pid, stats in answers:
            self._stats[pid] = stats
        log.info("decode workers ready", workers=self.workers, pids=sorted(self._stats))

    def stats(self) -> CodecStats | None:
        """The workers' codec statistics added up, as each last reported them (None: no worker
        yet)."""
        if not self._stats:
            return None
        return add_stats(list(self._stats.values()))

    async def decode(
        self, uploads: Sequence[tuple[ingest_pb2.UploadRequest, Source]], now_ms: int
    ) -> tuple[list[Decoded | BatchRejected], float]:
        """``decode_many(uploads, ...)``'s results, encoded by a worker, and the worker's seconds.

        Raises PoolBroken when the workers cannot do it (the caller decodes it itself).
        """
        executor = self._executor
        if executor is None or self._closed:
            raise PoolBroken("the decode pool is not running")
        results, groups = plan(uploads)
        jobs = []
        sizes = []
        for group in groups:
            members = [uploads[j] for j in group.members]
            source = members[0][1]
            jobs.append(
                _GroupJob(
                    group.kind,
                    source.tenant_id,
                    source.region,
                    source.keyring.current.derived_keys(),
                    [request.SerializeToString() for request, _ in members],
                    [s.device_id for _, s in members],
                    [s.employee_id for _, s in members],
                )
            )
            sizes.append([record_count(request) for request, _ in members])
        try:
            future = executor.submit(_encode_groups, jobs, now_ms)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken, or shut down meanwhile
            self._broke(executor)
            raise PoolBroken(f"decode pool unusable: {exc!r}") from None
        try:
            pid, stats, encoded = await asyncio.wrap_future(future)
        except (BrokenProcessPool, asyncio.CancelledError) as exc:
            # A worker died (the others were stopped with it), or the pool was shut down and
            # cancelled the job. An exception raised by the decode itself (a bug) propagates.
            self._broke(executor)
            raise PoolBroken(f"decode worker lost: {exc!r}") from None
        self._stats[pid] = stats
        seconds = 0.0
        for group, group_sizes, part in zip(groups, sizes, encoded, strict=True):
            place(results, group.members, part.decoded(group.kind), group_sizes)
            seconds += part.seconds
        return cast(list[Decoded | BatchRejected], results), seconds

    def _broke(self, executor: ProcessPoolExecutor) -> None:
        """Forgets a pool that failed; the next ``start`` makes a new one."""
        if self._executor is not executor:
            return  # already replaced
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._ready = None
        self._stats.clear()
        if not self._closed:
            self.restarts += 1

    def close(self) -> None:
        """Stops the workers without waiting; jobs in flight end in PoolBroken."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def add_stats(parts: Sequence[CodecStats]) -> CodecStats:
    """Field-wise sum of codec statistics (the server's own codec's plus its workers')."""
    return CodecStats(*(sum(getattr(p, f.name) for p in parts) for f in fields(CodecStats)))


# -- in the worker process ------------------------------------------------------------------------

_codec: NumberCodec | None = None
_ciphers: dict[tuple[int, bytes, bytes], Keyring] = {}


def _start_worker(cache_entries: int) -> None:
    global _codec
    # Ctrl-C in a terminal reaches the whole process group: the server shuts its workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waiting for jobs would outlive a SIGKILLed server (its job pipe's other end is
    # open in the worker too): it leaves as soon as the server is gone.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    _codec = NumberCodec(cache_entries)
    # As in the server: what start-up made stays, and full collections are rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _exit_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def _hello(delay_s: float) -> tuple[int, CodecStats]:
    # Held briefly, so each of the pool's first calls goes to a worker of its own.
    time.sleep(delay_s)
    assert _codec is not None
    return os.getpid(), _codec.stats()


def _encode_groups(jobs: list[_GroupJob], now_ms: int) -> tuple[int, CodecStats, list[_Encoded]]:
    codec = _codec
    assert codec is not None, "the worker was not started by DecodePool"
    out = []
    for job in jobs:
        started = time.perf_counter()
        keyring = _ciphers.get(job.keys)
        if keyring is None:
            if len(_ciphers) >= _MAX_CIPHERS:
                _ciphers.clear()
            keyring = _ciphers[job.keys] = Keyring(TenantCipher.from_derived_keys(*job.keys))
        parts: list[list[Any]] = []
        sources = []
        for data, device_id, employee_id in zip(
            job.requests, job.device_ids, job.employee_ids, strict=True
        ):
            request = ingest_pb2.UploadRequest.FromString(data)
            parts.append(list(getattr(request, job.kind).records))
            sources.append(Source(job.tenant_id, device_id, employee_id, job.region, keyring))
        decoded = encode_group(job.kind, parts, sources, codec, now_ms)
        rows = decoded.rows
        out.append(
            _Encoded(
                decoded.size,
                rows.num_rows,
                rows.columns,
                decoded.indices,
                decoded.keys,
                decoded.versions,
                decoded.errors,
                time.perf_counter() - started,
            )
        )
    return os.getpid(), codec.stats(), out
