"""Exact deduplication of records by (table, tenant, device, record id) and version.

The database is the ground truth: tables are ``ReplacingMergeTree(version)`` and readers use
``FINAL``/``argMax``, so a record that arrives twice (through another connection or another server
process) is stored once whatever this layer decides. This layer makes the ack exact and keeps
duplicates off the insert path: it remembers, per device, the newest version of every record it
has stored or is storing. A device's records are loaded from ClickHouse the first time the device
is seen (after a restart too), so a re-send after a crash is recognised as duplicates.

Memory is bounded by ``max_entries``: whole devices are evicted least-recently-used first. A
device evicted with a long history (``large_device`` records or more), or first seen while
memory has no room for such a history, is not loaded whole: that would push out another device,
and with more devices' histories than memory every batch would reload thousands of records. It
comes back knowing nothing, and each batch first looks up only the keys it names that the device
does not know (``KeyLoader``), many devices per query.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import repeat
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

Group = tuple[str, str, str]  # (table, tenant_id, device_id)
Loader = Callable[[str, str, Sequence[str]], Awaitable[dict[str, dict[str, int]]]]
# (table, tenant, device id -> keys) -> device id -> key -> newest stored version, for the keys
# found (a key absent from the answer is not stored).
KeyLoader = Callable[[str, str, Mapping[str, Sequence[str]]], Awaitable[dict[str, dict[str, int]]]]
Q = TypeVar("Q")


class Outcome(IntEnum):
    """How a record compares with what is stored."""

    ACCEPTED = 0  # first time stored
    UPDATED = 1  # newer version of a stored record
    DUPLICATE = 2  # same or older version than stored


@dataclass
class _Device:
    versions: dict[str, int]
    # Records whose newest version is still in a buffer or an insert: the write's future.
    pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # False: versions holds only the keys looked up or recorded since the device came back;
    # any other key is looked up before a batch naming it is classified.
    complete: bool = True


# An evicted device with at least this many records comes back by keys (see the module's doc).
LARGE_DEVICE = 1_000
# How many evicted large devices are remembered as such (oldest forgotten first).
LARGE_REMEMBERED = 50_000


@dataclass(eq=False)
class _Turns:
    """The batches of one device inside ``ensure_loaded``, served one after another."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    callers: int = 0


@dataclass(eq=False)
class _Lookup:
    """Keys of one device to look up in the next round, and the round's answer."""

    found: asyncio.Future[dict[str, int]]
    keys: set[str] = field(default_factory=set)


# Devices asked about within this long of each other are answered by one query per tenant.
ROUND_S = 0.005


class _Rounds(Generic[Q]):
    """Work queued per (table, tenant), taken by one task every ROUND_S and handed to
    ``handle`` whole: devices first seen together (a fleet reconnecting) cost one query per
    tenant, and work queued while a round runs goes to the next one, never left waiting."""

    def __init__(self, handle: Callable[[dict[tuple[str, str], Q]], Awaitable[None]]) -> None:
        self._handle = handle
        self.queued: dict[tuple[str, str], Q] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Makes sure a round will take what is queued."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.queued:
            await asyncio.sleep(ROUND_S)
            queued, self.queued = self.queued, {}
            await self._handle(queued)


# Batches of at most this many records are classified and recorded key by key in Python: for a
# phone's few records that is several times cheaper than a dozen numpy calls on tiny arrays.
SMALL_BATCH = 16


@dataclass(frozen=True)
class Classification:
    """The outcome of each record and the writes a duplicate's ack must wait for."""

    outcomes: npt.NDArray[np.uint8]
    waits: tuple[asyncio.Future[None], ...]
    # How many records had each Outcome, indexed by it.
    counts: tuple[int, int, int]

    @staticmethod
    def of(outcomes: npt.NDArray[np.uint8], waits: set[asyncio.Future[None]]) -> Classification:
        counts = np.bincount(outcomes, minlength=len(Outcome)).tolist()
        return Classification(outcomes, tuple(waits), (counts[0], counts[1], counts[2]))

    @property
    def new_rows(self) -> npt.NDArray[np.bool_]:
        """Mask of the records to insert (accepted or updated)."""
        mask: npt.NDArray[np.bool_] = self.outcomes != Outcome.DUPLICATE
        return mask

    @property
    def all_new(self) -> bool:
        """Whether every record is to be inserted (none is a duplicate)."""
        return not self.counts[Outcome.DUPLICATE]

    def count(self, outcome: Outcome) -> int:
        """How many records had ``outcome``."""
        return self.counts[outcome]


def _stored(
    device: _Device, keys: Sequence[str]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint64]]:
    """(whether each key is remembered, its remembered version or 0), looked up in C."""
    known = device.versions
    n = len(keys)
    present = np.fromiter(map(known.__contains__, keys), dtype=np.bool_, count=n)
    stored = np.fromiter(map(known.get, keys, repeat(0)), dtype=np.uint64, count=n)
    return present, stored


def _classify_distinct(
    device: _Device, keys: Sequence[str], versions: Sequence[int]
) -> Classification:
    """``classify`` of a batch whose keys are all different (the common case), as columns."""
    present, stored = _stored(device, keys)
    version = np.asarray(versions, dtype=np.uint64)
    outcomes = np.full(len(keys), Outcome.ACCEPTED, dtype=np.uint8)
    outcomes[present & (version > stored)] = Outcome.UPDATED
    duplicate = present & (version <= stored)
    outcomes[duplicate] = Outcome.DUPLICATE
    waits: set[asyncio.Future[None]] = set()
    for i in np.flatnonzero(duplicate).tolist():
        pending = device.pending.get(keys[i])
        if pending is not None and not pending.done():
            waits.add(pending)
    return Classification.of(outcomes, waits)


def _record_distinct(
    device: _Device,
    keys: Sequence[str],
    versions: Sequence[int],
    written: asyncio.Future[None] | None,
) -> None:
    """``record``'s update for keys that are all different, as columns."""
    present, stored = _stored(device, keys)
    version = np.asarray(versions, dtype=np.uint64)
    newer = ~present | (version >= stored)
    if newer.all():
        taken, values = list(keys), version.tolist()
    else:
        picks = np.flatnonzero(newer).tolist()
        taken, values = [keys[i] for i in picks], version[newer].tolist()
    device.versions.update(zip(taken, values, strict=True))
    if written is not None:
        device.pending.update(dict.fromkeys(taken, written))


class Deduplicator:
    """Classifies records against the newest versions stored or being stored by this process."""

    def __init__(
        self,
        loader: Loader,
        max_entries: int = 1_000_000,
        key_loader: KeyLoader | None = None,
        large_device: int = LARGE_DEVICE,
    ) -> None:
        self._loader = loader
        self._max_entries = max_entries
        # Without a key loader every device is loaded whole, however often it is evicted.
        self._key_loader = key_loader
        self._large_device = large_device
        self._large: OrderedDict[Group, None] = OrderedDict()  # evicted large devices
        # Keys to look up (devices that are not complete), and devices to load whole.
        self._lookups: _Rounds[dict[str, _Lookup]] = _Rounds(self._look_up_round)
        self._loads: _Rounds[set[str]] = _Rounds(self._load)
        self._turns: dict[Group, _Turns] = {}  # devices with batches inside ensure_loaded
        self._devices: OrderedDict[Group, _Device] = OrderedDict()
        self._entries = 0
        self._loading: dict[Group, asyncio.Future[None]] = {}

    @property
    def entries(self) -> int:
        """Records currently remembered."""
        return self._entries

    def loaded(self, table: str, tenant_id: str, device_id: str) -> bool:
        """Whether the device's versions are in memory (then ``ensure_loaded`` has nothing to
        wait for); marks the device as recently used."""
        group = (table, tenant_id, device_id)
        if group in self._devices:
            self._devices.move_to_end(group)
            return True
        return False

    def ready(self, table: str, tenant_id: str, device_id: str, keys: Sequence[str]) -> bool:
        """Whether ``classify`` of these keys can run now, with no query first (then
        ``ensure_loaded`` has nothing to wait for); marks the device as recently used.

        False while earlier batches of the device wait in ``ensure_loaded``: a later one must
        not be classified before them (a re-send would count as accepted and the original as
        a duplicate).
        """
        group = (table, tenant_id, device_id)
        if group in self._turns:
            return False
        device = self._devices.get(group)
        if device is None:
            return False
        self._devices.move_to_end(group)
        return device.complete or all(map(device.versions.__contains__, keys))

    async def ensure_loaded(
        self, table: str, tenant_id: str, device_id: str, keys: Sequence[str] = ()
    ) -> None:
        """Makes ``classify`` of ``keys`` possible; call it right before, with no await between.

        Loads the device's stored versions once; a large device that was evicted instead looks
        up those of ``keys`` it does not know. Callers for one device return in the order they
        called (devices first seen together still load in one query).
        """
        group = (table, tenant_id, device_id)
        turns = self._turns.get(group)
        if turns is None:
            turns = self._turns[group] = _Turns()
        turns.callers += 1
        try:
            async with turns.lock:
                await self._make_ready(group, keys)
        finally:
            turns.callers -= 1
            if not turns.callers:
                del self._turns[group]

    async def _make_ready(self, group: Group, keys: Sequence[str]) -> None:
        table, tenant_id, device_id = group
        # Loop: memory pressure may evict the device again before this waiter resumes.
        while True:
            device = self._devices.get(group)
            if device is None and self._by_keys(group):
                device = self._devices[group] = _Device({}, complete=False)
            if device is None:
                loading = self._loading.get(group)
                if loading is None:
                    loading = asyncio.get_running_loop().create_future()
                    self._loading[group] = loading
                    self._loads.queued.setdefault((table, tenant_id), set()).add(device_id)
                    self._loads.start()
                await asyncio.shield(loading)
                continue
            if not device.complete:
                known = device.versions
                missing = [k for k in dict.fromkeys(keys) if k not in known]
                if missing:
                    found = await self._look_up(table, tenant_id, device_id, missing)
                    if self._devices.get(group) is not device:
                        continue  # evicted meanwhile: its memory of these keys is gone
                    self._merge(device, found)
            self._devices.move_to_end(group)
            self._evict(keep=group)
            return

    async def warm(self, table: str, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Loads the stored versions of those of the devices not yet in memory, in one query
        (none once half of ``max_entries`` is taken); returns how many devices it loaded.

        For start-up: a fleet reconnecting after a restart finds its devices loaded instead of
        each first batch waiting for a load. Batches arriving meanwhile wait for this load; if it
        fails they load their devices themselves.
        """
        if self._entries >= self._max_entries // 2:
            return 0
        loop = asyncio.get_running_loop()
        ids = []
        for device_id in device_ids:
            group = (table, tenant_id, device_id)
            if group not in self._devices and group not in self._loading:
                self._loading[group] = loop.create_future()
                ids.append(device_id)
        if not ids:
            return 0
        try:
            stored = await self._loader(table, tenant_id, ids)
        except BaseException:  # failed or cancelled (shutdown)
            for device_id in ids:
                # Released unloaded: ensure_loaded sees the device missing and queues it.
                self._loading.pop((table, tenant_id, device_id)).set_result(None)
            raise
        self._put(table, tenant_id, ids, stored)
        return len(ids)

    def _by_keys(self, group: Group) -> bool:
        """Whether a device not in memory comes back by keys rather than whole: it was let go
        with a long history, or memory has no room for one (loading it could push others out)."""
        if self._key_loader is None or group in self._loading:
            return False
        return group in self._large or self._entries + self._large_device > self._max_entries

    async def _look_up(
        self, table: str, tenant_id: str, device_id: str, keys: list[str]
    ) -> dict[str, int]:
        """The newest stored version of those of ``keys`` that are stored (maybe of more)."""
        assert self._key_loader is not None  # only it makes devices that are not complete
        requests = self._lookups.queued.setdefault((table, tenant_id), {})
        request = requests.get(device_id)
        if request is None:
            request = requests[device_id] = _Lookup(asyncio.get_running_loop().create_future())
        request.keys.update(keys)
        self._lookups.start()
        return await asyncio.shield(request.found)

    async def _look_up_round(self, queued: dict[tuple[str, str], dict[str, _Lookup]]) -> None:
        assert self._key_loader is not None
        for (table, tenant_id), requests in queued.items():
            asked = {device_id: sorted(r.keys) for device_id, r in requests.items()}
            try:
                found = await self._key_loader(table, tenant_id, asked)
            except Exception as exc:
                for request in requests.values():
                    request.found.set_exception(exc)
                    request.found.exception()  # waiters that gave up need not see it
                continue
            for device_id, request in requests.items():
                request.found.set_result(found.get(device_id, {}))

    def _merge(self, device: _Device, found: Mapping[str, int]) -> None:
        # Never lowers a version: one this process is writing may be newer than ClickHouse's.
        known = device.versions
        before = len(known)
        for key, version in found.items():
            if version > known.get(key, -1):
                known[key] = version
        self._entries += len(known) - before

    async def _load(self, queued: dict[tuple[str, str], set[str]]) -> None:
        for (table, tenant_id), device_ids in queued.items():
            ids = sorted(device_ids)
            try:
                stored = await self._loader(table, tenant_id, ids)
            except Exception as exc:
                for device_id in ids:
                    self._loading.pop((table, tenant_id, device_id)).set_exception(exc)
                continue
            self._put(table, tenant_id, ids, stored)

    def _put(
        self, table: str, tenant_id: str, ids: list[str], stored: dict[str, dict[str, int]]
    ) -> None:
        for device_id in ids:
            group = (table, tenant_id, device_id)
            versions = stored.get(device_id, {})
            self._devices[group] = _Device(versions)
            self._entries += len(versions)
            self._loading.pop(group).set_result(None)
        self._evict()

    def classify(
        self,
        table: str,
        tenant_id: str,
        device_id: str,
        keys: Sequence[str],
        versions: Sequence[int],
    ) -> Classification:
        """Outcome per record; call ``record`` for the new rows before the next await."""
        device = self._devices[(table, tenant_id, device_id)]
        known = device.versions
        if len(keys) > SMALL_BATCH and len(set(keys)) == len(keys):
            return _classify_distinct(device, keys, versions)
        outcomes = [Outcome.ACCEPTED] * len(keys)
        waits: set[asyncio.Future[None]] = set()
        seen: dict[str, int] = {}  # versions taken earlier in this same batch
        for i, (key, version) in enumerate(zip(keys, versions, strict=True)):
            stored = seen.get(key, known.get(key))
            if stored is None:
                pass  # stays ACCEPTED
            elif version > stored:
                outcomes[i] = Outcome.UPDATED
            else:
                outcomes[i] = Outcome.DUPLICATE
                pending = device.pending.get(key)
                if pending is not None and not pending.done():
                    waits.add(pending)
                continue
            seen[key] = int(version)
        return Classification.of(np.array(outcomes, dtype=np.uint8), waits)

    def record(
        self,
        table: str,
        tenant_id: str,
        device_id: str,
        keys: Sequence[str],
        versions: Sequence[int],
        written: asyncio.Future[None] | None,
    ) -> None:
        """Remembers new rows as stored once ``written`` resolves (None: already durable)."""
        group = (table, tenant_id, device_id)
        device = self._devices[group]
        before = len(device.versions)
        if len(keys) > SMALL_BATCH and len(set(keys)) == len(keys):
            _record_distinct(device, keys, versions, written)
        else:
            for key, version in zip(keys, versions, strict=True):
                if version >= device.versions.get(key, -1):
                    device.versions[key] = int(version)
                    if written is not None:
                        device.pending[key] = written
        self._entries += len(device.versions) - before
        if written is not None and not written.done():
            pending_keys = list(keys)
            written.add_done_callback(lambda f: self._settle(group, device, pending_keys, f))
        self._evict(keep=group)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drops what is remembered of the tenant's devices but their records still being
        written; ClickHouse answers for the rest again. After an erasure the stored records of
        the number are gone, so versions remembered from before would count a re-send after the
        erasure is lifted as a duplicate.
        """
        for group in [g for g in self._devices if g[1] == tenant_id]:
            self._forget(group, self._devices[group])

    def _forget(
        self, group: Group, device: _Device, failed: asyncio.Future[None] | None = None
    ) -> None:
        """Drops the device, or with a key loader keeps only its versions still being written
        (a reload would miss those); ClickHouse answers for the rest again."""
        if self._key_loader is None or not self._keep_in_flight(device, failed):
            del self._devices[group]
            self._entries -= len(device.versions)

    def _keep_in_flight(self, device: _Device, failed: asyncio.Future[None] | None = None) -> bool:
        """Forgets every version of the device but those still being written (bar ``failed``),
        which ClickHouse does not know yet; the rest is looked up by key. False if nothing is in
        flight (then the caller drops the device, which comes back by keys or whole)."""
        in_flight = {
            key: write
            for key, write in device.pending.items()
            if write is not failed and not write.done()
        }
        if not in_flight:
            return False
        kept = {key: device.versions[key] for key in in_flight}
        self._entries -= len(device.versions) - len(kept)
        device.versions, device.pending, device.complete = kept, in_flight, False
        return True

    def _settle(
        self, group: Group, device: _Device, keys: list[str], written: asyncio.Future[None]
    ) -> None:
        if written.cancelled() or written.exception() is not None:
            # Versions that never became durable: ClickHouse answers for the device again.
            if self._devices.get(group) is device:
                self._forget(group, device, written)
            return
        for key in keys:
            if device.pending.get(key) is written:
                del device.pending[key]

    def _evict(self, keep: Group | None = None) -> None:
        # Devices with writes in flight stay: ClickHouse does not know those versions yet.
        for _ in range(len(self._devices)):
            if self._entries <= self._max_entries:
                return
            group, device = next(iter(self._devices.items()))
            if group == keep or device.pending:
                self._devices.move_to_end(group)
                continue
            del self._devices[group]
            self._entries -= len(device.versions)
            if self._key_loader is not None and (
                len(device.versions) >= self._large_device or group in self._large
            ):
                self._large[group] = None
                self._large.move_to_end(group)
                if len(self._large) > LARGE_REMEMBERED:
                    self._large.popitem(last=False)
