"""A device policy applied to a decoded batch: which rows it drops, as one numpy mask.

The agent applies its policy before uploading; the server applies it again to every batch as a
second line of defence, like erasures (``ingest.erased_rows``). A call is dropped when its SIM
slot is not tracked (an unknown slot, -1, is kept: the phone did not say, and dropping it would
lose calls of single-SIM phones that never report a slot), when it started outside the office
hours in their time zone, or when its number is never to be uploaded (one of the tenant's
excluded numbers, matched by client key); a contact goes whole when any of its numbers is never
to be uploaded. Telemetry is never dropped.

Everything works on columns: local minutes and weekdays come from one UTC offset per distinct
UTC day of the batch (two around a daylight-saving change, split at the exact instant), not from
a time zone lookup per record.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Set as AbstractSet
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from callsight.pipeline.encode import Decoded
from callsight.storage.policies import NO_EXCLUDED, Excluded, InForce, OfficeHours, Policy

DAY_MS = 86_400_000
_MINUTE_MS = 60_000
_SECOND_MS = 1_000
# 1970-01-01 was a Thursday (ISO weekday 4).
_EPOCH_WEEKDAY = 3


class PolicyBook(Protocol):
    """The policy of each device, in memory (see ``storage.policies``); must not block."""

    def in_force(self, tenant_id: str, employee_id: str) -> InForce:
        """The policy in force for the employee's devices."""
        ...

    def excluded(self, tenant_id: str) -> Excluded:
        """The tenant's excluded numbers (never uploaded where a policy is in force)."""
        ...


class NoPolicies:
    """No tenant has a policy: nothing is dropped, every version is 0."""

    def in_force(self, tenant_id: str, employee_id: str) -> InForce:
        return InForce(0, None, False)

    def excluded(self, tenant_id: str) -> Excluded:
        return NO_EXCLUDED


def policy_rows(
    decoded: Decoded, policy: Policy | None, excluded: Excluded
) -> npt.NDArray[np.bool_]:
    """Mask of the decoded rows that ``policy`` drops; all false when no policy is in force."""
    rows = decoded.rows
    mask = np.zeros(rows.num_rows, dtype=np.bool_)
    if policy is None or decoded.table == "telemetry" or not rows.num_rows:
        return mask
    if decoded.table == "contacts":
        return contacts_with(rows.columns[rows.schema.get_field_index("numbers_bidx")], excluded)

    def column(name: str) -> npt.NDArray[Any]:
        return np.asarray(rows.columns[rows.schema.get_field_index(name)])

    if len(excluded.sorted_keys):
        mask |= holds(column("client_key"), excluded.sorted_keys)
    if policy.sim_slots:
        slots = column("sim_slot")
        mask |= (slots >= 0) & ~np.isin(slots, np.array(policy.sim_slots, dtype=np.int32))
    if policy.office_hours is not None:
        mask |= outside_hours(column("started_at"), policy.office_hours)
    return mask


def holds(
    values: npt.NDArray[np.uint64], sorted_keys: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """Mask of ``values`` found in ``sorted_keys`` (sorted, distinct, not empty): a binary search
    each, instead of sorting the batch together with a list of up to 10,000 numbers."""
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    found: npt.NDArray[np.bool_] = sorted_keys[at] == values
    return found


def contacts_with(numbers_bidx: list[list[bytes]], excluded: Excluded) -> npt.NDArray[np.bool_]:
    """Mask of the contacts holding any number whose client key is in ``excluded``."""
    keys: AbstractSet[int] = excluded.client_keys
    mask = np.zeros(len(numbers_bidx), dtype=np.bool_)
    if not keys:
        return mask
    for i, bidxs in enumerate(numbers_bidx):
        mask[i] = any(int.from_bytes(bidx[:8], "little") in keys for bidx in bidxs)
    return mask


def outside_hours(started_ms: npt.NDArray[np.int64], hours: OfficeHours) -> npt.NDArray[np.bool_]:
    """Mask of the instants (epoch ms UTC) outside ``hours`` in the hours' time zone."""
    local_ms = started_ms + utc_offsets_ms(started_ms, hours.timezone)
    minute = (local_ms % DAY_MS) // _MINUTE_MS
    inside = (minute >= hours.start_minute) & (minute < hours.end_minute)
    if hours.weekdays:
        weekday = (local_ms // DAY_MS + _EPOCH_WEEKDAY) % 7 + 1
        inside &= np.isin(weekday, np.array(hours.weekdays, dtype=np.int64))
    return ~inside


def utc_offsets_ms(instants_ms: npt.NDArray[np.int64], timezone: str) -> npt.NDArray[np.int64]:
    """The UTC offset of ``timezone`` at each instant (epoch ms), in ms.

    One offset per distinct UTC day of the column (remembered per zone and day, as batches keep
    sending the same recent days); a day whose offset differs at its end is split at the
    change, found by bisection to the second (offsets change at most once a day).
    """
    instants = np.asarray(instants_ms, dtype=np.int64)
    if not len(instants):
        return np.zeros(0, dtype=np.int64)
    days, which = np.unique(instants // DAY_MS, return_inverse=True)
    spans = [_day(timezone, day) for day in days.tolist()]
    offsets = np.array([start for start, _, _ in spans], dtype=np.int64)[which]
    for i, (_, change, after) in enumerate(spans):
        if change:
            offsets[(which == i) & (instants >= change)] = after
    return offsets


@lru_cache(maxsize=65_536)
def _day(timezone: str, day: int) -> tuple[int, int, int]:
    """(offset at the day's start, instant it changes or 0, offset after) for one UTC day."""
    zone = zoneinfo.ZoneInfo(timezone)
    first, last = day * DAY_MS, (day + 1) * DAY_MS - _SECOND_MS
    start, after = _offset_ms(zone, first), _offset_ms(zone, last)
    if after == start:
        return start, 0, start
    return start, _change_ms(zone, first, last, start), after


def _offset_ms(zone: zoneinfo.ZoneInfo, instant_ms: int) -> int:
    offset = datetime.fromtimestamp(instant_ms // _SECOND_MS, zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def _change_ms(zone: zoneinfo.ZoneInfo, low: int, high: int, before: int) -> int:
    """The first second in [low, high] whose offset is not ``before`` (the one at ``low``)."""
    low_s, high_s = low // _SECOND_MS, high // _SECOND_MS
    while low_s < high_s:
        mid = (low_s + high_s) // 2
        if _offset_ms(zone, mid * _SECOND_MS) == before:
            low_s = mid + 1
        else:
            high_s = mid
    return low_s * _SECOND_MS
