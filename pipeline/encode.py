"""Decode an upload into rows for ClickHouse: validate, normalise numbers, encrypt.

``decode`` is the stage "decode and validate -> normalise numbers (E.164) -> encrypt and
blind-index". It works on columns: one list or array per field, built once per batch, handed on
as a ``RowChunk`` whose columns are exactly those the writer takes for the target ClickHouse table
(``SCHEMAS``; for calls the writer stores the number and name columns once per client and name
in ``parties``, see ``storage.parties``). No Arrow is built per batch: the batcher builds one
table per flush (see ``chunk``). Plaintext numbers, names and notes never reach the table:
numbers become an AEAD ciphertext plus a blind index and its first 8 bytes as ``client_key``,
names and notes a ciphertext, and names also a 32-bit keyed hash (``name_key``). Every other
field a number can hide in is a ciphertext too: recording URIs (recorders name files after the
number), SIM ids and FCM ids; telemetry coordinates are rounded to ``COORDINATE_DECIMALS``.
A call from a hidden number (``CallColumns.hidden``) has no number to encrypt: it is stored as
the one private client (``PRIVATE_BIDX``, ``PRIVATE_CLIENT_KEY``), without a name.

``NumberCodec`` keeps bounded LRU caches, because a device calls the same few hundred numbers
over and over: each distinct (region, raw) is normalised once, and each distinct
(tenant, key id, E.164) and (tenant, key id, name) is encrypted once. Reusing a ciphertext for
an equal plaintext shows only that the two are equal, which the blind index shows anyway.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, pairwise, repeat
from operator import itemgetter
from typing import Any, Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from callsight.pipeline.chunk import Column, RowChunk
from callsight.pipeline.crypto import Keyring, TenantCipher
from callsight.pipeline.phone import PhoneNormalizer
from callsight.pipeline.validate import (
    BatchRejected,
    CallColumns,
    ContactColumns,
    TelemetryColumns,
    Validated,
    check_batch,
    validate_call_records,
    validate_contact_records,
    validate_telemetry_records,
)
from callsight.v1 import ingest_pb2

DEFAULT_CACHE_ENTRIES = 200_000
# Longer names are encrypted every time, so the name cache's bound in entries bounds its memory.
MAX_CACHED_NAME_LEN = 64
# Telemetry coordinates are kept to this many decimals (about 1.1 km): where a phone was, not
# which house; the exact position is never stored.
COORDINATE_DECIMALS = 2
# Stands in for the blind index of an unusable number; such a row never leaves decode().
_NO_BIDX = bytes(32)
# The one client every call from a hidden number (withheld, unknown, payphone) is stored as: its
# blind index is all ones, so its client key is 2**64 - 1. A real number's key is the first 8
# bytes of an HMAC-SHA256, so it equals this one with probability 2**-64 per number (for a tenant
# with 10 million numbers, 5e-13, far below the chance, already taken, of two of its numbers
# sharing a key); 0 is left alone as the column's default. It has no number ciphertext and no
# name; reports show it as ``PRIVATE_NUMBER``.
PRIVATE_BIDX = b"\xff" * 32
PRIVATE_CLIENT_KEY = 2**64 - 1
PRIVATE_NUMBER = "private"

_TIMESTAMP = pa.timestamp("ms", tz="UTC")
_BIDX = pa.binary(32)

CALLS_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("call_id", pa.string()),
        ("employee_id", pa.string()),
        ("number_bidx", _BIDX),
        ("number_enc", pa.binary()),
        ("name_enc", pa.binary()),
        ("type", pa.uint8()),
        ("started_at", _TIMESTAMP),
        ("duration_s", pa.uint32()),
        ("sim_slot", pa.int32()),
        ("sim_id_enc", pa.binary()),
        ("note_enc", pa.binary()),
        ("recording_uri_enc", pa.binary()),
        ("version", pa.uint64()),
        ("synced_at", _TIMESTAMP),
        ("client_key", pa.uint64()),
        ("name_key", pa.uint32()),
        ("presentation", pa.uint8()),
        ("method", pa.uint8()),
        ("mode", pa.uint8()),
    ]
)

CONTACTS_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("contact_id", pa.string()),
        ("name_enc", pa.binary()),
        ("numbers_enc", pa.list_(pa.binary())),
        ("numbers_bidx", pa.list_(_BIDX)),
        ("photo_uri", pa.string()),
        ("deleted", pa.bool_()),
        ("version", pa.uint64()),
        ("synced_at", _TIMESTAMP),
    ]
)

TELEMETRY_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("device_id", pa.string()),
        ("captured_at", _TIMESTAMP),
        ("battery_pct", pa.uint8()),
        ("charging", pa.bool_()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("accuracy_m", pa.float32()),
        ("network", pa.uint8()),
        ("app_version", pa.string()),
        ("version_code", pa.int64()),
        ("android_version", pa.string()),
        ("sdk_int", pa.int32()),
        ("model", pa.string()),
        ("fcm_id_enc", pa.binary()),
        ("sim_ids_enc", pa.list_(pa.binary())),
        ("synced_at", _TIMESTAMP),
    ]
)

# The Arrow schema of each table decode() writes, by table name.
SCHEMAS: dict[str, pa.Schema] = {
    "calls": CALLS_SCHEMA,
    "contacts": CONTACTS_SCHEMA,
    "telemetry": TELEMETRY_SCHEMA,
}

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Source:
    """Who sent a batch, as the server resolved it from the device token.

    ``region`` is the device's region, or the tenant's default region when the device has none;
    local numbers are read in it.
    """

    tenant_id: str
    device_id: str
    employee_id: str
    region: str
    keyring: Keyring


class _LRU(Generic[K, V]):
    """A bounded least-recently-used map; the caller holds the codec's lock."""

    __slots__ = ("_data", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """The value of each key, None where it is missing; hits become most recent."""
        data = self._data
        out = list(map(data.get, keys))
        if None not in out:
            # All hits (the common case): refresh them in order, in C.
            deque(map(data.move_to_end, keys), maxlen=0)
            return out
        touch = data.move_to_end
        for key, value in zip(keys, out, strict=True):
            if value is not None:
                touch(key)
        return out

    def put_many(self, items: Sequence[tuple[K, V]]) -> None:
        """Insert or refresh each item, evicting the least recently used beyond the bound."""
        data = self._data
        data.update(items)
        for key, _ in items:
            data.move_to_end(key)
        for _ in range(len(data) - self._max_entries):
            data.popitem(last=False)


@dataclass(frozen=True, slots=True)
class CodecStats:
    """Cache sizes and lookup counts of a NumberCodec since it was made (for metrics)."""

    normalized_entries: int
    number_entries: int
    name_entries: int
    number_hits: int
    number_misses: int
    name_hits: int
    name_misses: int


class NumberCodec:
    """Normalises, encrypts and blind-indexes columns of numbers, and encrypts names, cached.

    Three bounded LRU caches, each of at most ``max_entries`` entries (default 200,000):

    * (raw, region) -> E.164 or the reason it is unusable, in a ``PhoneNormalizer``
      (raws over 64 characters are not cached);
    * (tenant id, key id, E.164) -> (ciphertext, blind index);
    * (tenant id, key id, name) -> (ciphertext, name key) (names over 64 characters are not
      cached).

    A number costs about 1 KB across the three (measured: ~200 MB with all three full at the
    default), so size ``max_entries`` to the memory a process can spare. Keying by key id means
    a key rotation simply stops hitting the old entries, which age out. Safe to share between
    threads: caches are touched under one lock, encryption runs outside it.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._max_entries = max_entries
        self._normalizer = PhoneNormalizer(max_entries)
        self._numbers: _LRU[tuple[str, int, str], tuple[bytes, bytes]] = _LRU(max_entries)
        self._names: _LRU[tuple[str, int, str], tuple[bytes, int]] = _LRU(max_entries)
        self._lock = threading.Lock()
        self._number_hits = self._number_misses = 0
        self._name_hits = self._name_misses = 0

    @property
    def max_entries(self) -> int:
        """The most entries each of the three caches holds."""
        return self._max_entries

    def stats(self) -> CodecStats:
        """Current cache sizes and hit/miss counts."""
        with self._lock:
            return CodecStats(
                normalized_entries=len(self._normalizer),
                number_entries=len(self._numbers),
                name_entries=len(self._names),
                number_hits=self._number_hits,
                number_misses=self._number_misses,
                name_hits=self._name_hits,
                name_misses=self._name_misses,
            )

    def numbers(
        self, source: Source, raws: Sequence[str]
    ) -> tuple[list[bytes], list[bytes], list[tuple[int, str]]]:
        """Encrypt and blind-index a column of raw numbers, read in ``source.region``.

        Returns (ciphertexts, blind indexes, errors), the first two aligned with ``raws``. An
        unusable number gets ``b""`` and 32 zero bytes in them and an (index, reason) in
        ``errors``, sorted by index. Reasons quote the raw number: return them to the device,
        never log them.
        """
        # Each distinct raw is looked up once per batch, however often it repeats.
        distinct = list(dict.fromkeys(raws))
        normalized = self._normalizer.normalize_many(distinct, source.region)
        failed: dict[str, str] = {}
        if set(map(type, normalized)) != {str}:
            failed = {
                raw: str(result)
                for raw, result in zip(distinct, normalized, strict=True)
                if not isinstance(result, str)
            }
        usable: list[str] = distinct
        e164s = cast(list[str], normalized)
        if failed:
            usable = [raw for raw in distinct if raw not in failed]
            e164s = [result for result in normalized if isinstance(result, str)]
        enc_by, bidx_by = self._seal_numbers(source, e164s)
        enc_of = dict(zip(usable, map(enc_by.__getitem__, e164s), strict=True))
        bidx_of = dict(zip(usable, map(bidx_by.__getitem__, e164s), strict=True))
        errors: list[tuple[int, str]] = []
        if failed:
            enc_of.update(dict.fromkeys(failed, b""))
            bidx_of.update(dict.fromkeys(failed, _NO_BIDX))
            errors = [(i, failed[raw]) for i, raw in enumerate(raws) if raw in failed]
        return list(map(enc_of.__getitem__, raws)), list(map(bidx_of.__getitem__, raws)), errors

    def names(self, source: Source, names: Sequence[str]) -> tuple[list[bytes], list[int]]:
        """Encrypt and key a column of names under the source's current key.

        Returns (ciphertexts, name keys) aligned with ``names``; ``""`` gives ``b""`` and 0.
        """
        cipher = source.keyring.current
        tenant_id, key_id = source.tenant_id, cipher.key_id
        unique = dict.fromkeys(names)
        unique.pop("", None)
        distinct = list(unique)
        keys = list(zip(repeat(tenant_id), repeat(key_id), distinct))
        with self._lock:
            found = self._names.get_many(keys)
        sealed_of: dict[str, tuple[bytes, int]] = {"": (b"", 0)}
        misses: list[str] = []
        if None not in found:
            sealed_of.update(zip(distinct, cast(list[tuple[bytes, int]], found), strict=True))
        else:
            for name, pair in zip(distinct, found, strict=True):
                if pair is None:
                    misses.append(name)
                else:
                    sealed_of[name] = pair
        fresh: list[tuple[tuple[str, int, str], tuple[bytes, int]]] = []
        if misses:
            pairs = list(zip(cipher.encrypt_many(misses), cipher.name_keys(misses), strict=True))
            sealed_of.update(zip(misses, pairs, strict=True))
            fresh = [
                ((tenant_id, key_id, name), pair)
                for name, pair in zip(misses, pairs, strict=True)
                if len(name) <= MAX_CACHED_NAME_LEN
            ]
        with self._lock:
            self._names.put_many(fresh)
            self._name_hits += len(distinct) - len(misses)
            self._name_misses += len(misses)
        sealed = list(map(sealed_of.__getitem__, names))
        return list(map(itemgetter(0), sealed)), list(map(itemgetter(1), sealed))

    def texts(self, source: Source, values: Sequence[str]) -> list[bytes]:
        """Encrypt a column of short, repeating identifiers (SIM ids, FCM ids) under the source's
        current key; ``""`` gives ``b""``.

        They go through the name cache, so each distinct value is encrypted once per process and
        equal values share a ciphertext: a device's few ids compress to almost nothing, and the
        equality this shows is all a sorted column of them would show anyway.
        """
        return self.names(source, values)[0]

    def _seal_numbers(
        self, source: Source, e164s: list[str]
    ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Ciphertext and blind index of each distinct E.164 number, from the cache or fresh."""
        cipher = source.keyring.current
        tenant_id, key_id = source.tenant_id, cipher.key_id
        distinct = list(dict.fromkeys(e164s))
        keys = list(zip(repeat(tenant_id), repeat(key_id), distinct))
        with self._lock:
            found = self._numbers.get_many(keys)
        enc_by: dict[str, bytes] = {}
        bidx_by: dict[str, bytes] = {}
        misses: list[str] = []
        if distinct and None not in found:
            pairs = cast(list[tuple[bytes, bytes]], found)
            enc_by = dict(zip(distinct, map(itemgetter(0), pairs), strict=True))
            bidx_by = dict(zip(distinct, map(itemgetter(1), pairs), strict=True))
        else:
            for e164, pair in zip(distinct, found, strict=True):
                if pair is None:
                    misses.append(e164)
                else:
                    enc_by[e164], bidx_by[e164] = pair
        fresh: list[tuple[tuple[str, int, str], tuple[bytes, bytes]]] = []
        if misses:
            encs = cipher.encrypt_many(misses)
            bidxs = cipher.blind_index_many(misses)
            enc_by.update(zip(misses, encs, strict=True))
            bidx_by.update(zip(misses, bidxs, strict=True))
            fresh = [
                ((tenant_id, key_id, e164), (enc, bidx))
                for e164, enc, bidx in zip(misses, encs, bidxs, strict=True)
            ]
        with self._lock:
            self._numbers.put_many(fresh)
            self._number_hits += len(distinct) - len(misses)
            self._number_misses += len(misses)
        return enc_by, bidx_by


@dataclass
class Decoded:
    """One upload, decoded into rows for one ClickHouse table.

    ``rows`` holds the valid records only, in request order, with exactly the table's columns
    (see SCHEMAS; ``rows.to_arrow()`` is their Arrow table); ``indices[i]`` is the request index
    of row ``i``, ``keys[i]`` its identity within the device (call_id, contact_id, or
    str(captured_at_ms)) and ``versions[i]`` its version (0 for telemetry). ``errors`` holds
    (request index, reason) of every rejected record, sorted by index; ``size`` counts all
    records of the request.
    """

    table: str
    size: int
    rows: RowChunk
    indices: npt.NDArray[np.int64]
    keys: list[str]
    versions: npt.NDArray[np.uint64]
    errors: list[tuple[int, str]]


def decode(
    request: ingest_pb2.UploadRequest, source: Source, codec: NumberCodec, now_ms: int
) -> Decoded:
    """Validate an upload and turn its valid records into encrypted rows, as columns.

    ``now_ms`` is the server's clock: it bounds timestamps in the future and becomes
    ``synced_at``. Raises BatchRejected (an InvalidArgument) when the batch is refused whole.
    """
    (result,) = decode_many([(request, source)], codec, now_ms)
    if isinstance(result, BatchRejected):
        try:
            raise result
        finally:
            # The exception's traceback holds this frame: without the del, each refused batch
            # would stay in memory until the cyclic garbage collector next runs.
            del result
    return result


def decode_many(
    uploads: Sequence[tuple[ingest_pb2.UploadRequest, Source]], codec: NumberCodec, now_ms: int
) -> list[Decoded | BatchRejected]:
    """``decode`` of many uploads at once: each one's Decoded, or the BatchRejected refusing it.

    Uploads of one kind whose senders share a tenant, a region and a keyring are validated and
    encoded as one set of columns, then cut back into one Decoded per upload (row slices, which
    copy nothing). Column operations cost microseconds each however few their rows, so a batch of
    one telemetry sample decoded alone spends ~200 us in them; decoded with a thousand others it
    costs its share. The result is the same as decoding each upload alone
    (tests/unit/test_decode_properties.py checks it). ``plan``, ``encode_group`` and ``place``
    are its three steps, for callers that run the middle one elsewhere (``decode_pool``).
    """
    results, groups = plan(uploads)
    for group in groups:
        # One list() per upload: iterating a repeated field re-wraps every message each time.
        parts = [list(getattr(uploads[j][0], group.kind).records) for j in group.members]
        sources = [uploads[j][1] for j in group.members]
        decoded = encode_group(group.kind, parts, sources, codec, now_ms)
        place(results, group.members, decoded, list(map(len, parts)))
    return cast(list[Decoded | BatchRejected], results)


@dataclass(frozen=True, slots=True)
class Group:
    """Uploads (their indices) of one payload kind whose senders share a tenant, a region and a
    keyring: validated and encoded as one set of columns."""

    kind: str
    members: list[int]


def plan(
    uploads: Sequence[tuple[ingest_pb2.UploadRequest, Source]],
) -> tuple[list[Decoded | BatchRejected | None], list[Group]]:
    """The uploads refused whole (their BatchRejected at their index, None elsewhere) and the
    groups the others are decoded in."""
    results: list[Decoded | BatchRejected | None] = [None] * len(uploads)
    groups: dict[tuple[str, str, str, Keyring], list[int]] = {}
    for j, (request, source) in enumerate(uploads):
        try:
            kind = check_batch(request)
        except BatchRejected as refused:
            # Without its traceback: that holds this frame, and so ``results``, in a cycle that
            # only the cyclic garbage collector frees, which the server runs rarely (a flood of
            # refused batches grew by GBs).
            results[j] = refused.with_traceback(None)
            continue
        group = (kind, source.tenant_id, source.region, source.keyring)
        groups.setdefault(group, []).append(j)
    return results, [Group(kind, members) for (kind, *_), members in groups.items()]


def encode_group(
    kind: str,
    parts: Sequence[list[Any]],
    sources: Sequence[Source],
    codec: NumberCodec,
    now_ms: int,
) -> Decoded:
    """One group's records (``parts[i]``: upload i's, sent by ``sources[i]``), validated and
    encoded as one Decoded whose indices run over all of them in order."""
    senders = _Senders.of(list(sources), list(map(len, parts)))
    validate, encode = _KINDS[kind]
    records = parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))
    return encode(validate(records, now_ms), senders, codec, now_ms)


def place(
    results: list[Decoded | BatchRejected | None],
    members: Sequence[int],
    decoded: Decoded,
    sizes: list[int],
) -> None:
    """Cut a group's Decoded back into one per upload (``sizes``: their record counts) and put
    each at its upload's index in ``results``."""
    if len(members) == 1:
        results[members[0]] = decoded
        return
    for j, part in zip(members, _split(decoded, sizes), strict=True):
        results[j] = part


@dataclass(frozen=True, slots=True)
class _Senders:
    """Who sent each record of uploads decoded together.

    ``source`` is the first upload's: its tenant, region and keyring are every upload's.
    """

    source: Source
    device_ids: list[str]
    employee_ids: list[str]

    @staticmethod
    def of(sources: list[Source], sizes: list[int]) -> _Senders:
        return _Senders(
            sources[0],
            list(chain.from_iterable(map(repeat, (s.device_id for s in sources), sizes))),
            list(chain.from_iterable(map(repeat, (s.employee_id for s in sources), sizes))),
        )


def _split(decoded: Decoded, sizes: list[int]) -> list[Decoded]:
    """``decoded`` of uploads decoded together, cut back into one Decoded per upload."""
    starts = [0, *accumulate(sizes)]
    # Rows are in request order: each upload's rows are one run of them.
    cuts = np.searchsorted(decoded.indices, starts).tolist()
    # Each upload's share of the rows' bytes, estimated once for all (the batcher's byte cap).
    per_row = decoded.rows.nbytes() / max(decoded.rows.num_rows, 1)
    errors = decoded.errors
    e = 0
    parts = []
    for (first, stop), (lo, hi) in zip(pairwise(starts), pairwise(cuts), strict=True):
        mine = []
        while e < len(errors) and errors[e][0] < stop:
            index, reason = errors[e]
            mine.append((index - first, reason))
            e += 1
        parts.append(
            Decoded(
                decoded.table,
                stop - first,
                decoded.rows.slice(lo, hi, round(per_row * (hi - lo))),
                decoded.indices[lo:hi] - first,
                decoded.keys[lo:hi],
                decoded.versions[lo:hi],
                mine,
            )
        )
    return parts


def client_keys(blind_indexes: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    """The first 8 bytes of each 32-byte blind index as a little-endian UInt64, as ClickHouse's
    ``reinterpretAsUInt64(substring(number_bidx, 1, 8))`` reads them."""
    words = np.frombuffer(b"".join(blind_indexes), dtype="<u8")
    return words[:: len(_NO_BIDX) // 8].astype(np.uint64)


def _encrypt_sparse(cipher: TenantCipher, values: list[str]) -> list[bytes]:
    """Encrypt a column that is mostly empty, without touching the empty slots."""
    out = [b""] * len(values)
    filled = list(compress(range(len(values)), values))
    if not filled:
        return out
    for i, blob in zip(filled, cipher.encrypt_many([values[i] for i in filled]), strict=True):
        out[i] = blob
    return out


def _merge_errors(
    valid: npt.NDArray[np.bool_], errors: list[tuple[int, str]], more: list[tuple[int, str]]
) -> tuple[npt.NDArray[np.bool_], list[tuple[int, str]]]:
    """Add reasons for records that passed validation; the first reason of a record wins."""
    if not more:
        return valid, errors
    valid = valid.copy()
    added: list[tuple[int, str]] = []
    for i, reason in more:
        if valid[i]:
            valid[i] = False
            added.append((i, reason))
    return valid, sorted(errors + added)


def _finish(
    table: str,
    size: int,
    columns: list[Column],
    valid: npt.NDArray[np.bool_],
    keys: list[str],
    versions: npt.NDArray[np.uint64],
    errors: list[tuple[int, str]],
) -> Decoded:
    """Assemble the chunk and keep only the valid rows (a no-op when all are valid)."""
    rows = RowChunk(SCHEMAS[table], size, tuple(columns))
    indices = np.flatnonzero(valid).astype(np.int64)
    if errors:
        rows = rows.filter(valid)
        keys = [keys[i] for i in indices.tolist()]
        versions = versions[valid]
    return Decoded(table, size, rows, indices, keys, versions, errors)


def _decode_calls(
    validated: Validated[CallColumns], senders: _Senders, codec: NumberCodec, now_ms: int
) -> Decoded:
    source = senders.source
    cols = validated.columns
    n = validated.size
    hidden = cols.hidden
    names = cols.name
    if hidden.any():
        number_enc, number_bidx, number_errors = _shown_numbers(codec, source, cols.number, hidden)
        # The phone can know no name for a hidden caller: the private client has none.
        names = ["" if h else name for name, h in zip(names, hidden.tolist(), strict=True)]
    else:
        number_enc, number_bidx, number_errors = codec.numbers(source, cols.number)
    valid, errors = _merge_errors(
        validated.valid,
        validated.errors,
        [(i, f"number: {reason}") for i, reason in number_errors],
    )
    version = np.where(cols.updated_at_ms == 0, cols.started_at_ms, cols.updated_at_ms)
    # Rejected rows may hold negative versions; they are filtered out in _finish.
    versions = version.astype(np.uint64)
    name_enc, name_keys = codec.names(source, names)
    columns: list[Column] = [
        [source.tenant_id] * n,
        senders.device_ids,
        cols.call_id,
        senders.employee_ids,
        number_bidx,
        number_enc,
        name_enc,
        cols.type.astype(np.uint8),
        cols.started_at_ms,
        cols.duration_s,
        cols.sim_slot,
        codec.texts(source, cols.sim_id),
        _encrypt_sparse(source.keyring.current, cols.note),
        _encrypt_sparse(source.keyring.current, cols.recording_uri),
        versions,
        np.full(n, now_ms, dtype=np.int64),
        client_keys(number_bidx),
        np.array(name_keys, dtype=np.uint32),
        # Rejected rows may hold values outside the enums; they are filtered out in _finish.
        cols.presentation.astype(np.uint8),
        cols.method.astype(np.uint8),
        cols.mode.astype(np.uint8),
    ]
    return _finish("calls", n, columns, valid, cols.call_id, versions, errors)


def _shown_numbers(
    codec: NumberCodec, source: Source, raws: list[str], hidden: npt.NDArray[np.bool_]
) -> tuple[list[bytes], list[bytes], list[tuple[int, str]]]:
    """``codec.numbers`` of the calls whose number was shown; the hidden ones get the private
    client's blind index and no ciphertext."""
    shown = np.flatnonzero(~hidden).tolist()
    enc, bidx, errors = codec.numbers(source, [raws[i] for i in shown])
    number_enc = [b""] * len(raws)
    number_bidx = [PRIVATE_BIDX] * len(raws)
    for i, blob, index in zip(shown, enc, bidx, strict=True):
        number_enc[i] = blob
        number_bidx[i] = index
    return number_enc, number_bidx, [(shown[j], reason) for j, reason in errors]


def _decode_contacts(
    validated: Validated[ContactColumns], senders: _Senders, codec: NumberCodec, now_ms: int
) -> Decoded:
    source = senders.source
    cols = validated.columns
    n = validated.size
    # All contacts' numbers as one flat column, with offsets marking each contact's.
    lengths = np.fromiter(map(len, cols.numbers), dtype=np.int32, count=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = [number for numbers in cols.numbers for number in numbers]
    enc, bidx, flat_errors = codec.numbers(source, flat)
    number_errors: list[tuple[int, str]] = []
    if flat_errors:
        owners = np.searchsorted(offsets, [i for i, _ in flat_errors], side="right") - 1
        seen: set[int] = set()
        for owner, (flat_index, reason) in zip(owners.tolist(), flat_errors, strict=True):
            # A deletion must get through even if the phone kept a garbled number.
            if owner not in seen and not cols.deleted[owner]:
                seen.add(owner)
                position = flat_index - int(offsets[owner])
                number_errors.append((owner, f"numbers[{position}]: {reason}"))
    valid, errors = _merge_errors(validated.valid, validated.errors, number_errors)
    versions = cols.updated_at_ms.astype(np.uint64)
    bounds = offsets.tolist()
    columns: list[Column] = [
        [source.tenant_id] * n,
        senders.device_ids,
        cols.contact_id,
        codec.names(source, cols.name)[0],
        [enc[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)],
        [bidx[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)],
        cols.photo_uri,
        cols.deleted,
        versions,
        np.full(n, now_ms, dtype=np.int64),
    ]
    return _finish("contacts", n, columns, valid, cols.contact_id, versions, errors)


def _decode_telemetry(
    validated: Validated[TelemetryColumns], senders: _Senders, codec: NumberCodec, now_ms: int
) -> Decoded:
    source = senders.source
    cols = validated.columns
    n = validated.size
    # A device's SIM ids, as one flat column, with offsets marking each sample's.
    bounds = [0, *accumulate(map(len, cols.sim_ids))]
    sims = codec.texts(source, [sim for sims in cols.sim_ids for sim in sims])
    # Rejected samples may hold huge or non-finite values; they are filtered out in _finish.
    with np.errstate(over="ignore", invalid="ignore"):
        latitude = np.round(cols.latitude, COORDINATE_DECIMALS)
        longitude = np.round(cols.longitude, COORDINATE_DECIMALS)
    columns: list[Column] = [
        [source.tenant_id] * n,
        senders.device_ids,
        cols.captured_at_ms,
        cols.battery_pct.astype(np.uint8),
        cols.charging,
        latitude,
        longitude,
        cols.accuracy_m,
        cols.network.astype(np.uint8),
        cols.app_version,
        cols.version_code,
        cols.android_version,
        cols.sdk_int,
        cols.model,
        codec.texts(source, cols.fcm_id),
        [sims[start:stop] for start, stop in pairwise(bounds)],
        np.full(n, now_ms, dtype=np.int64),
    ]
    keys = [str(ms) for ms in cols.captured_at_ms.tolist()]
    versions = np.zeros(n, dtype=np.uint64)
    return _finish("telemetry", n, columns, validated.valid, keys, versions, validated.errors)


# Per payload kind: the validation of its records and their encoding into rows.
_KINDS: dict[str, tuple[Callable[[list[Any], int], Any], Callable[..., Decoded]]] = {
    "calls": (validate_call_records, _decode_calls),
    "contacts": (validate_contact_records, _decode_contacts),
    "telemetry": (validate_telemetry_records, _decode_telemetry),
}
