"""Pure-Python reference of the paged listings, straight from SPEC section 5.

Input: ``Truth.calls`` (each call once, newest version, E.164 numbers) and the leads a test
imported. No SQL here: the report tests compare callsight's answers with these, field by field.
Each row is a plain tuple in the order of the proto message's fields.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from callsight.v1 import common_pb2 as T
from tests.integration.dataset import PRIVATE, Call, Truth

MISSED_OR_REJECTED: set[int] = {T.CALL_TYPE_MISSED, T.CALL_TYPE_REJECTED, T.CALL_TYPE_BLOCKED}

# (number, name, employee_ids, calls)
ClientRow = tuple[str, str, tuple[str, ...], int]
# (number, name, total, incoming, outgoing, duration_s, last_call_at_ms, last_call_type)
UniqueClient = tuple[str, str, int, int, int, int, int, int]
# (call_id, device_id, employee_id, number, name, type, started_at_ms, duration_s, note,
#  recording_uri, lead_id); synced_at_ms is checked separately (the truth has no receive time).
HistoryEntry = tuple[str, str, str, str, str, int, int, int, str, str, str]
# (lead_id, employee_id, first_call_at_ms, time_to_first_call_s, calls, connected, last_ms)
LeadActivity = tuple[str, str, int, int, int, int, int]


@dataclass(frozen=True)
class Filter:
    """A ReportFilter, as the reference applies it."""

    from_ms: int
    to_ms: int
    employee_ids: frozenset[str] | None = None
    call_types: frozenset[int] = frozenset()
    min_duration_s: int = 0
    max_duration_s: int | None = None
    include_excluded: bool = False
    exclude_private: bool = False
    call_methods: frozenset[int] = frozenset()
    call_modes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Lead:
    """An imported lead: its id, assignee, E.164 numbers and creation time."""

    lead_id: str
    employee_id: str
    numbers: tuple[str, ...]
    created_at_ms: int


def select(truth: Truth, f: Filter, calls: Iterable[Call] | None = None) -> list[Call]:
    """The calls in the filter (excluded numbers left out unless asked)."""
    source = truth.visible(f.include_excluded) if calls is None else calls
    return [
        c
        for c in source
        if f.from_ms <= c.started_at_ms < f.to_ms
        and (f.include_excluded or c.number not in truth.excluded)
        and (f.employee_ids is None or c.employee_id in f.employee_ids)
        and (not f.call_types or c.type in f.call_types)
        and c.duration_s >= f.min_duration_s
        and (f.max_duration_s is None or c.duration_s <= f.max_duration_s)
        and not (f.exclude_private and c.number == PRIVATE)
        and (not f.call_methods or c.method in f.call_methods)
        and (not f.call_modes or c.mode in f.call_modes)
    ]


def _order(c: Call) -> tuple[int, str, str]:
    return (c.started_at_ms, c.device_id, c.call_id)


def _by_client(calls: Iterable[Call]) -> dict[str, list[Call]]:
    clients: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        clients[c.number].append(c)
    return clients


def _name(calls: Sequence[Call]) -> str:
    """The newest non-empty name the phones showed."""
    named = [c for c in calls if c.name]
    return max(named, key=_order).name if named else ""


def _unanswered(calls: Sequence[Call], counted: set[int]) -> dict[str, ClientRow]:
    rows: dict[str, ClientRow] = {}
    for number, theirs in _by_client(calls).items():
        counted_calls = [c for c in theirs if c.type in counted]
        if counted_calls and not any(c.duration_s > 0 for c in theirs):
            employees = tuple(sorted({c.employee_id for c in counted_calls}))
            rows[number] = (number, _name(theirs), employees, len(counted_calls))
    return rows


def never_attended(calls: Sequence[Call]) -> dict[str, ClientRow]:
    """Clients with a missed/rejected/blocked call and no connected call, by number."""
    return _unanswered(calls, MISSED_OR_REJECTED)


def not_picked_by_client(calls: Sequence[Call]) -> dict[str, ClientRow]:
    """Clients with an outgoing call and no connected call, by number."""
    return _unanswered(calls, {int(T.CALL_TYPE_OUTGOING)})


def unique_clients(calls: Sequence[Call]) -> dict[str, UniqueClient]:
    """Every client number with its totals, by number."""
    rows: dict[str, UniqueClient] = {}
    for number, theirs in _by_client(calls).items():
        last = max(theirs, key=_order)
        rows[number] = (
            number,
            _name(theirs),
            len(theirs),
            sum(c.type == T.CALL_TYPE_INCOMING for c in theirs),
            sum(c.type == T.CALL_TYPE_OUTGOING for c in theirs),
            sum(c.duration_s for c in theirs),
            last.started_at_ms,
            last.type,
        )
    return rows


def lead_of(number: str, leads: Sequence[Lead]) -> str:
    """The smallest lead id among leads with this number, or empty."""
    return min((lead.lead_id for lead in leads if number in lead.numbers), default="")


def call_history(calls: Sequence[Call], leads: Sequence[Lead] = ()) -> list[HistoryEntry]:
    """The calls newest first (ties by device, then call id, both descending)."""
    return [
        (
            c.call_id,
            c.device_id,
            c.employee_id,
            c.number,
            c.name,
            c.type,
            c.started_at_ms,
            c.duration_s,
            c.note,
            c.recording_uri,
            lead_of(c.number, leads),
        )
        for c in sorted(calls, key=_order, reverse=True)
    ]


def _seconds_toward_zero(ms: int) -> int:
    return ms // 1000 if ms >= 0 else -((-ms) // 1000)


def lead_activity(
    calls: Sequence[Call], leads: Sequence[Lead], employee_ids: frozenset[str] | None = None
) -> list[LeadActivity]:
    """Per lead (by id), the calls its assigned employee had with any of its numbers.

    A filter on employees narrows the leads to those assigned to them.
    """
    rows: list[LeadActivity] = []
    for lead in sorted(leads, key=lambda lead: lead.lead_id):
        if employee_ids is not None and lead.employee_id not in employee_ids:
            continue
        theirs = [
            c for c in calls if c.employee_id == lead.employee_id and c.number in lead.numbers
        ]
        if not theirs:
            rows.append((lead.lead_id, lead.employee_id, 0, 0, 0, 0, 0))
            continue
        # The first call answering the lead is the first one at or after its creation.
        first = min(
            (c.started_at_ms for c in theirs if c.started_at_ms >= lead.created_at_ms), default=0
        )
        rows.append(
            (
                lead.lead_id,
                lead.employee_id,
                first,
                _seconds_toward_zero(first - lead.created_at_ms) if first else 0,
                len(theirs),
                sum(c.duration_s > 0 for c in theirs),
                max(c.started_at_ms for c in theirs),
            )
        )
    return rows
