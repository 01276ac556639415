"""Batch limits and per-record validation of uploads, column by column.

``check_batch`` refuses a whole batch (no payload, too many records, too many bytes, an
oversized batch_id). The ``validate_*`` functions turn a batch into columns, one list or array
per field built once per batch, plus a mask of the records that pass every rule and one precise
reason per record that does not. Numeric rules are vectorised with numpy; phone numbers are
checked later, by the codec in ``pipeline/encode.py``. The caps themselves live in
``pipeline/limits.py``.

A call from a hidden number is no error: Android logs a withheld, unknown or payphone caller with
an empty number or "-1", "-2", "-3" (``HIDDEN_NUMBERS``) and sets NUMBER_PRESENTATION. Such a call,
or one whose presentation says the number was hidden, is taken (``CallColumns.hidden``) and stored
as the one "private" client (see ``pipeline/encode.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

from callsight.core.clock import SYSTEM_CLOCK
from callsight.core.errors import InvalidArgument
from callsight.pipeline.limits import (
    MAX_BATCH_BYTES,
    MAX_DEVICE_FIELD_BYTES,
    MAX_FCM_ID_BYTES,
    MAX_FUTURE_MS,
    MAX_ID_BYTES,
    MAX_NAME_BYTES,
    MAX_NOTE_BYTES,
    MAX_NUMBERS_PER_CONTACT,
    MAX_RECORDS,
    MAX_SIM_IDS,
    MAX_URI_BYTES,
    MIN_TIME_MS,
    too_long,
    too_many,
    utf8_len,
)
from callsight.v1 import common_pb2, ingest_pb2

MAX_DURATION_S = 86_400
MAX_CALL_TYPE = 7  # CALL_TYPE_ANSWERED_EXTERNALLY
MAX_PRESENTATION = 4  # NUMBER_PRESENTATION_PAYPHONE
MAX_CALL_METHOD = 3  # CALL_METHOD_OTHER_VOIP
MAX_CALL_MODE = 2  # CALL_MODE_VIDEO
ALLOWED = int(common_pb2.NUMBER_PRESENTATION_ALLOWED)
# What Android's call log writes for a caller it has no number of (CallerInfo's UNKNOWN_NUMBER,
# PRIVATE_NUMBER, PAYPHONE_NUMBER; newer releases write "" and set NUMBER_PRESENTATION), and the
# presentation each stands for.
HIDDEN_NUMBERS = {
    "": int(common_pb2.NUMBER_PRESENTATION_UNKNOWN),
    "-1": int(common_pb2.NUMBER_PRESENTATION_UNKNOWN),
    "-2": int(common_pb2.NUMBER_PRESENTATION_RESTRICTED),
    "-3": int(common_pb2.NUMBER_PRESENTATION_PAYPHONE),
}
_LONGEST_HIDDEN = max(map(len, HIDDEN_NUMBERS))
MAX_NETWORK_TYPE = 3  # NETWORK_TYPE_NONE
PAYLOAD_KINDS = ("calls", "contacts", "telemetry")

BoolArray = npt.NDArray[np.bool_]
C = TypeVar("C")


class BatchRejected(InvalidArgument):
    """The whole batch is refused; nothing of it is taken. The message says what to fix."""


def record_count(request: ingest_pb2.UploadRequest) -> int:
    """How many records the request's payload holds (0 without a payload)."""
    kind = request.WhichOneof("payload")
    return 0 if kind is None else len(getattr(request, kind).records)


def check_batch(request: ingest_pb2.UploadRequest) -> str:
    """Return the request's payload kind ("calls", "contacts" or "telemetry").

    Raises BatchRejected when there is no payload, more than MAX_RECORDS records or more than
    MAX_BATCH_BYTES serialised bytes.
    """
    kind = request.WhichOneof("payload")
    if kind is None:
        raise BatchRejected("UploadRequest has no payload: set calls, contacts or telemetry")
    count = record_count(request)
    if count > MAX_RECORDS:
        raise BatchRejected(
            f"batch has {count} records; the limit is {MAX_RECORDS} per batch: split it"
        )
    size = request.ByteSize()
    if size > MAX_BATCH_BYTES:
        raise BatchRejected(f"batch is {size} bytes; the limit is {MAX_BATCH_BYTES}: split it")
    if len(request.batch_id) > MAX_ID_BYTES // 4 and utf8_len(request.batch_id) > MAX_ID_BYTES:
        raise BatchRejected(too_long("batch_id", utf8_len(request.batch_id), MAX_ID_BYTES))
    return kind


@dataclass(frozen=True, slots=True)
class CallColumns:
    """The fields of a CallLogBatch, one column each, in request order."""

    call_id: list[str]
    number: list[str]
    name: list[str]
    type: npt.NDArray[np.int32]
    started_at_ms: npt.NDArray[np.int64]
    duration_s: npt.NDArray[np.uint32]
    sim_slot: npt.NDArray[np.int32]
    sim_id: list[str]
    note: list[str]
    recording_uri: list[str]
    updated_at_ms: npt.NDArray[np.int64]
    # As sent, with UNSPECIFIED read as the contract says: a presentation from the number
    # (RESTRICTED, UNKNOWN or PAYPHONE for a hidden one, else ALLOWED), PHONE, VOICE. A value
    # outside its enum is kept as sent, for the rule that rejects it to quote.
    presentation: npt.NDArray[np.int32]
    method: npt.NDArray[np.int32]
    mode: npt.NDArray[np.int32]

    @property
    def hidden(self) -> BoolArray:
        """Calls from a withheld, unknown or payphone number: the "private" client."""
        hidden: BoolArray = self.presentation != ALLOWED
        return hidden


@dataclass(frozen=True, slots=True)
class ContactColumns:
    """The fields of a ContactBatch, one column each, in request order."""

    contact_id: list[str]
    name: list[str]
    numbers: list[list[str]]
    photo_uri: list[str]
    updated_at_ms: npt.NDArray[np.int64]
    deleted: BoolArray


@dataclass(frozen=True, slots=True)
class TelemetryColumns:
    """The fields of a TelemetryBatch, one column each, in request order."""

    captured_at_ms: npt.NDArray[np.int64]
    battery_pct: npt.NDArray[np.uint32]
    charging: BoolArray
    latitude: npt.NDArray[np.float64]
    longitude: npt.NDArray[np.float64]
    accuracy_m: npt.NDArray[np.float32]
    network: npt.NDArray[np.int32]
    app_version: list[str]
    version_code: npt.NDArray[np.int64]
    android_version: list[str]
    sdk_int: npt.NDArray[np.int32]
    model: list[str]
    fcm_id: list[str]
    sim_ids: list[list[str]]


@dataclass(frozen=True, slots=True)
class Validated(Generic[C]):
    """A batch as columns, with ``valid[i]`` true for records that passed every rule.

    ``errors`` holds (index in batch, reason) for each rejected record, sorted by index.
    """

    columns: C
    valid: BoolArray
    errors: list[tuple[int, str]]

    @property
    def size(self) -> int:
        """Records in the batch, valid or not."""
        return len(self.valid)


class _Rules:
    """Applies rules in order; a record keeps the reason of the first rule it breaks."""

    __slots__ = ("_errors", "bad")

    def __init__(self, size: int) -> None:
        self.bad = np.zeros(size, dtype=np.bool_)
        self._errors: list[tuple[int, str]] = []

    def check(self, broken: BoolArray, reason: Callable[[int], str]) -> None:
        new = broken & ~self.bad
        if new.any():
            self.bad |= new
            self._errors.extend((i, reason(i)) for i in np.flatnonzero(new).tolist())

    def result(self, columns: C) -> Validated[C]:
        self._errors.sort()
        return Validated(columns, ~self.bad, self._errors)


def _lengths(values: list[str]) -> npt.NDArray[np.int64]:
    return np.fromiter(map(len, values), dtype=np.int64, count=len(values))


def _any_over(values: list[str], limit: int) -> bool:
    """Whether any value is over ``limit`` UTF-8 bytes (the fast path's form of ``_check_text``)."""
    longest = max(map(len, values), default=0)
    # A code point is 1 to 4 bytes: most columns are settled by their longest string alone.
    if longest * 4 <= limit:
        return False
    return longest > limit or any(utf8_len(v) > limit for v in values if len(v) * 4 > limit)


def _check_text(rules: _Rules, name: str, values: list[str], limit: int) -> None:
    lengths = _lengths(values)
    maybe = np.flatnonzero((lengths * 4 > limit) & (lengths <= limit))
    for i in maybe.tolist():
        lengths[i] = utf8_len(values[i])
    rules.check(lengths > limit, lambda i: too_long(name, utf8_len(values[i]), limit))


def _check_id(rules: _Rules, name: str, ids: list[str]) -> None:
    rules.check(_lengths(ids) == 0, lambda _: f"{name} is required")
    _check_text(rules, name, ids, MAX_ID_BYTES)


def _check_lists(
    rules: _Rules, name: str, lists: list[list[str]], max_entries: int, limit: int | None
) -> None:
    """At most ``max_entries`` per record and, unless ``limit`` is None, each within it."""
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    rules.check(counts > max_entries, lambda i: too_many(name, int(counts[i]), max_entries))
    if limit is None:
        return
    over: dict[int, str] = {}
    for i, values in enumerate(lists):
        for j, value in enumerate(values):
            if len(value) * 4 > limit and (size := utf8_len(value)) > limit:
                over[i] = too_long(f"{name}[{j}]", size, limit)
                break
    if over:
        broken = np.zeros(len(lists), dtype=np.bool_)
        broken[list(over)] = True
        rules.check(broken, over.__getitem__)


def _check_time(
    rules: _Rules,
    name: str,
    values: npt.NDArray[np.int64],
    now_ms: int,
    *,
    earliest: int = MIN_TIME_MS,
    unset_zero: bool = False,
) -> None:
    """Within [earliest, now_ms + MAX_FUTURE_MS]; with ``unset_zero``, 0 (not set) passes too.

    ``earliest`` is MIN_TIME_MS (2000-01-01) for instants, 0 for versions that may be counters.
    """
    is_set = values != 0 if unset_zero else np.ones(len(values), dtype=np.bool_)
    before = "is negative" if earliest == 0 else "is before 2000-01-01"
    rules.check(is_set & (values < earliest), lambda i: f"{name} {values[i]} {before}")
    rules.check(
        is_set & (values > now_ms + MAX_FUTURE_MS),
        lambda i: f"{name} {values[i]} is more than a day in the future",
    )


def _check_enum(
    rules: _Rules, name: str, enum: str, values: npt.NDArray[np.int32], top: int
) -> None:
    rules.check(
        (values < 0) | (values > top), lambda i: f"{name} {values[i]} is not a {enum} (0-{top})"
    )


# Any record message: a CallRecord, a Contact or a Telemetry sample.
_Record: TypeAlias = ingest_pb2.CallRecord | ingest_pb2.Contact | ingest_pb2.Telemetry


def _strings(records: Sequence[_Record], field: str) -> list[str]:
    # map(attrgetter) walks the records in C; a comprehension pays a Python frame step per record.
    return list(map(attrgetter(field), records))


def _numbers(records: Sequence[_Record], field: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.fromiter(map(attrgetter(field), records), dtype=dtype, count=len(records))


# The text fields of a call and their caps, shared by the fast and the slow path.
_CALL_TEXT = (
    ("call_id", MAX_ID_BYTES),
    ("name", MAX_NAME_BYTES),
    ("sim_id", MAX_ID_BYTES),
    ("note", MAX_NOTE_BYTES),
    ("recording_uri", MAX_URI_BYTES),
)


def validate_calls(batch: ingest_pb2.CallLogBatch, now_ms: int) -> Validated[CallColumns]:
    """Columns of a call batch and which calls pass the rules; ``now_ms`` is server time."""
    # One list() up front: iterating the repeated field itself re-wraps every message each time.
    return validate_call_records(list(batch.records), now_ms)


def validate_call_records(
    records: list[ingest_pb2.CallRecord], now_ms: int
) -> Validated[CallColumns]:
    """``validate_calls`` of the records of one or more batches, one after another."""
    numbers = _strings(records, "number")
    cols = CallColumns(
        call_id=_strings(records, "call_id"),
        number=numbers,
        name=_strings(records, "name"),
        type=_numbers(records, "type", np.int32),
        started_at_ms=_numbers(records, "started_at_ms", np.int64),
        duration_s=_numbers(records, "duration_s", np.uint32),
        sim_slot=_numbers(records, "sim_slot", np.int32),
        sim_id=_strings(records, "sim_id"),
        note=_strings(records, "note"),
        recording_uri=_strings(records, "recording_uri"),
        updated_at_ms=_numbers(records, "updated_at_ms", np.int64),
        presentation=_presentations(numbers, _numbers(records, "presentation", np.int32)),
        method=_or_default(_numbers(records, "method", np.int32), common_pb2.CALL_METHOD_PHONE),
        mode=_or_default(_numbers(records, "mode", np.int32), common_pb2.CALL_MODE_VOICE),
    )
    if _calls_look_clean(cols, now_ms):
        return Validated(cols, np.ones(len(records), dtype=np.bool_), [])
    return _call_rules(cols, now_ms)


def _or_default(values: npt.NDArray[np.int32], default: int) -> npt.NDArray[np.int32]:
    """``values`` with 0 (UNSPECIFIED) read as ``default``."""
    return np.where(values == 0, np.int32(default), values)


def _presentations(numbers: list[str], sent: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Each call's presentation: as sent when it says the number was hidden, else the hidden
    kind its number stands for ("", "-1", "-2", "-3"), else ALLOWED."""
    out = _or_default(sent, ALLOWED)
    # One pass in C settles the common batch: a hidden number is at most 2 characters long, and
    # a shown one is longer (even the shortest service numbers have 3 digits).
    if min(map(len, numbers), default=_LONGEST_HIDDEN + 1) > _LONGEST_HIDDEN:
        return out
    kinds = HIDDEN_NUMBERS.get
    for i, number in enumerate(numbers):
        kind = kinds(number)
        if kind is not None and out[i] == ALLOWED:
            out[i] = kind
    return out


def _calls_look_clean(cols: CallColumns, now_ms: int) -> bool:
    """The fast path: a clean batch (the common case) is settled with whole-column checks.

    Every rule of ``_call_rules`` must be here too: tests/unit/test_validate.py checks that the
    two agree on each rule's cases.
    """
    types = cols.type
    started = cols.started_at_ms
    updated = cols.updated_at_ms
    latest = now_ms + MAX_FUTURE_MS
    return not (
        "" in cols.call_id
        or any(_any_over(getattr(cols, field), limit) for field, limit in _CALL_TEXT)
        or (
            (types < 1)
            | (types > MAX_CALL_TYPE)
            | (started < MIN_TIME_MS)
            | (started > latest)
            | (cols.duration_s > MAX_DURATION_S)
            | ((updated != 0) & ((updated < MIN_TIME_MS) | (updated > latest)))
            | (cols.presentation < 0)
            | (cols.presentation > MAX_PRESENTATION)
            | (cols.method < 0)
            | (cols.method > MAX_CALL_METHOD)
            | (cols.mode < 0)
            | (cols.mode > MAX_CALL_MODE)
        ).any()
    )


def _call_rules(cols: CallColumns, now_ms: int) -> Validated[CallColumns]:
    """The slow path: every rule, one reason for each record that breaks one."""
    types = cols.type
    durations = cols.duration_s
    rules = _Rules(len(cols.call_id))
    _check_id(rules, "call_id", cols.call_id)
    rules.check(
        (types < 1) | (types > MAX_CALL_TYPE),
        lambda i: f"type {types[i]} is not a CallType (1-{MAX_CALL_TYPE})",
    )
    _check_time(rules, "started_at_ms", cols.started_at_ms, now_ms)
    rules.check(
        durations > MAX_DURATION_S,
        lambda i: f"duration_s {durations[i]} is over {MAX_DURATION_S} (24 h)",
    )
    _check_time(rules, "updated_at_ms", cols.updated_at_ms, now_ms, unset_zero=True)
    _check_enum(rules, "presentation", "NumberPresentation", cols.presentation, MAX_PRESENTATION)
    _check_enum(rules, "method", "CallMethod", cols.method, MAX_CALL_METHOD)
    _check_enum(rules, "mode", "CallMode", cols.mode, MAX_CALL_MODE)
    for field, limit in _CALL_TEXT[1:]:  # call_id's cap is checked by _check_id
        _check_text(rules, field, getattr(cols, field), limit)
    return rules.result(cols)


def validate_contacts(
    batch: ingest_pb2.ContactBatch, now_ms: int | None = None
) -> Validated[ContactColumns]:
    """Columns of a contact batch and which contacts pass the rules (numbers aside).

    ``now_ms`` is server time (the system clock when not given): it bounds updated_at_ms.
    """
    if now_ms is None:
        now_ms = SYSTEM_CLOCK.now_ms()
    return validate_contact_records(list(batch.records), now_ms)


def validate_contact_records(
    records: list[ingest_pb2.Contact], now_ms: int
) -> Validated[ContactColumns]:
    """``validate_contacts`` of the records of one or more batches, one after another."""
    cols = ContactColumns(
        contact_id=[r.contact_id for r in records],
        name=[r.name for r in records],
        numbers=[list(r.numbers) for r in records],
        photo_uri=[r.photo_uri for r in records],
        updated_at_ms=np.array([r.updated_at_ms for r in records], dtype=np.int64),
        deleted=np.array([r.deleted for r in records], dtype=np.bool_),
    )
    rules = _Rules(len(records))
    _check_id(rules, "contact_id", cols.contact_id)
    # A contact's version may be a counter: only negative and far-future ones are refused.
    _check_time(rules, "updated_at_ms", cols.updated_at_ms, now_ms, earliest=0)
    _check_text(rules, "name", cols.name, MAX_NAME_BYTES)
    # Each number's length is the codec's: libphonenumber refuses more than 250 characters.
    _check_lists(rules, "numbers", cols.numbers, MAX_NUMBERS_PER_CONTACT, None)
    _check_text(rules, "photo_uri", cols.photo_uri, MAX_URI_BYTES)
    return rules.result(cols)


def validate_telemetry(
    batch: ingest_pb2.TelemetryBatch, now_ms: int
) -> Validated[TelemetryColumns]:
    """Columns of a telemetry batch and which samples pass the rules; ``now_ms`` is server time."""
    return validate_telemetry_records(list(batch.records), now_ms)


def validate_telemetry_records(
    records: list[ingest_pb2.Telemetry], now_ms: int
) -> Validated[TelemetryColumns]:
    """``validate_telemetry`` of the records of one or more batches, one after another."""
    cols = TelemetryColumns(
        captured_at_ms=_numbers(records, "captured_at_ms", np.int64),
        battery_pct=_numbers(records, "battery_pct", np.uint32),
        charging=_numbers(records, "charging", np.bool_),
        latitude=_numbers(records, "latitude", np.float64),
        longitude=_numbers(records, "longitude", np.float64),
        accuracy_m=_numbers(records, "accuracy_m", np.float32),
        network=_numbers(records, "network", np.int32),
        app_version=_strings(records, "app_version"),
        version_code=_numbers(records, "version_code", np.int64),
        android_version=_strings(records, "android_version"),
        sdk_int=_numbers(records, "sdk_int", np.int32),
        model=_strings(records, "model"),
        fcm_id=_strings(records, "fcm_id"),
        sim_ids=[list(sims) for sims in map(attrgetter("sim_ids"), records)],
    )
    if _telemetry_looks_clean(cols, now_ms):
        return Validated(cols, np.ones(len(records), dtype=np.bool_), [])
    return _telemetry_rules(cols, now_ms)


# The text fields of a telemetry sample and their caps, shared by the fast and the slow path.
_TELEMETRY_TEXT = (
    ("app_version", MAX_DEVICE_FIELD_BYTES),
    ("android_version", MAX_DEVICE_FIELD_BYTES),
    ("model", MAX_DEVICE_FIELD_BYTES),
    ("fcm_id", MAX_FCM_ID_BYTES),
)


def _telemetry_looks_clean(cols: TelemetryColumns, now_ms: int) -> bool:
    """The fast path, as for calls: every rule of ``_telemetry_rules`` as whole-column checks
    (tests/unit/test_validate.py checks that the two agree on each rule's cases)."""
    captured, lat, lon, network = cols.captured_at_ms, cols.latitude, cols.longitude, cols.network
    return not (
        any(_any_over(getattr(cols, field), limit) for field, limit in _TELEMETRY_TEXT)
        or any(len(sims) > MAX_SIM_IDS or _any_over(sims, MAX_ID_BYTES) for sims in cols.sim_ids)
        or (
            (captured < MIN_TIME_MS)
            | (captured > now_ms + MAX_FUTURE_MS)
            | (cols.battery_pct > 100)
            # Written as "not inside" so that NaN, which fails every comparison, is refused too.
            | ~((lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon <= 180.0))
            | (network < 0)
            | (network > MAX_NETWORK_TYPE)
        ).any()
    )


def _telemetry_rules(cols: TelemetryColumns, now_ms: int) -> Validated[TelemetryColumns]:
    """The slow path: every rule, one reason for each sample that breaks one."""
    rules = _Rules(len(cols.captured_at_ms))
    _check_time(rules, "captured_at_ms", cols.captured_at_ms, now_ms)
    battery = cols.battery_pct
    rules.check(battery > 100, lambda i: f"battery_pct {battery[i]} is over 100")
    lat, lon = cols.latitude, cols.longitude
    rules.check(
        ~((lat >= -90.0) & (lat <= 90.0)),
        lambda i: f"latitude {lat[i]} is outside [-90, 90]",
    )
    rules.check(
        ~((lon >= -180.0) & (lon <= 180.0)),
        lambda i: f"longitude {lon[i]} is outside [-180, 180]",
    )
    network = cols.network
    rules.check(
        (network < 0) | (network > MAX_NETWORK_TYPE),
        lambda i: f"network {network[i]} is not a NetworkType (0-{MAX_NETWORK_TYPE})",
    )
    for field, limit in _TELEMETRY_TEXT:
        _check_text(rules, field, getattr(cols, field), limit)
    _check_lists(rules, "sim_ids", cols.sim_ids, MAX_SIM_IDS, MAX_ID_BYTES)
    return rules.result(cols)
