"""The loader's ground truth against what callsight reports and what its database holds.

The truth is what the devices were generated to send: each unique call once, per tenant,
employee and type, plus unique contacts and telemetry samples. It is compared with CallSummary
(total, and per type with the ``call_types`` filter) and every page of EmployeeSummary, with each
tenant's ADMIN key and excluded numbers included, in ranges of at most 400 days covering every
call; with direct counts ``FINAL`` in the database when the caller has them
(``loadtest.ceilings.database_counts``); and with the acks' totals when no batch went out twice by
accident. Any difference makes ``ok`` false and is listed in ``differences``.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from callsight.loadtest.bootstrap import DeviceIdentity, TenantInfo
from callsight.loadtest.common import auth, patiently
from callsight.loadtest.generate import DAY_MS
from callsight.loadtest.workload import DeviceTruth
from callsight.v1 import common_pb2, report_pb2, report_pb2_grpc

WINDOW_MS = 400 * DAY_MS
OPTIONAL = (
    "contacts",
    "telemetry",
    "stored_call_rows",
)  # Counts fields not every source has  # the longest range one report request may span
CALL_TYPES = tuple(t for t in common_pb2.CallType.values() if t != common_pb2.CALL_TYPE_UNSPECIFIED)
# EmployeeSummary fields and the call types each counts (storage/summaries.py).
EMPLOYEE_FIELDS = {
    "incoming_calls": (common_pb2.CALL_TYPE_INCOMING,),
    "outgoing_calls": (common_pb2.CALL_TYPE_OUTGOING,),
    "missed_calls": (common_pb2.CALL_TYPE_MISSED,),
    "rejected_calls": (common_pb2.CALL_TYPE_REJECTED, common_pb2.CALL_TYPE_BLOCKED),
}


def type_name(call_type: int) -> str:
    """``CALL_TYPE_MISSED`` -> ``missed``."""
    return common_pb2.CallType.Name(call_type).removeprefix("CALL_TYPE_").lower()  # type: ignore[arg-type]


@dataclass(slots=True)
class TenantTruth:
    """What one tenant must hold after the run."""

    tenant_id: str
    admin_key: str
    by_employee: dict[str, Counter[int]] = field(default_factory=dict)
    contacts: int = 0
    telemetry: int = 0
    from_ms: int = 0  # earliest call start
    to_ms: int = 0  # one past the latest call start

    @property
    def by_type(self) -> Counter[int]:
        """Unique calls per call type."""
        total: Counter[int] = Counter()
        for counts in self.by_employee.values():
            total.update(counts)
        return total

    @property
    def calls(self) -> int:
        """Unique calls."""
        return sum(self.by_type.values())


def ground_truth(
    tenants: Sequence[TenantInfo],
    devices: Sequence[DeviceIdentity],
    truths: Sequence[DeviceTruth],
) -> list[TenantTruth]:
    """Per-tenant truth from the devices' truths (``truths[i]`` belongs to ``devices[i]``)."""
    out = [TenantTruth(t.tenant_id, t.admin_key) for t in tenants]
    for device, truth in zip(devices, truths, strict=True):
        tenant = out[device.tenant]
        counts = tenant.by_employee.setdefault(device.employee_id, Counter())
        counts.update(truth.calls_by_type)
        tenant.contacts += truth.contacts
        tenant.telemetry += truth.telemetry
        if truth.calls:
            start, end = truth.min_started_ms, truth.max_started_ms + 1
            tenant.from_ms = min(tenant.from_ms, start) if tenant.from_ms else start
            tenant.to_ms = max(tenant.to_ms, end)
    return out


def windows(from_ms: int, to_ms: int) -> Iterator[tuple[int, int]]:
    """``[from_ms, to_ms)`` cut into ranges a report accepts."""
    start = from_ms
    while start < to_ms:
        yield start, min(to_ms, start + WINDOW_MS)
        start += WINDOW_MS


@dataclass(slots=True)
class Counts:
    """Counts of one tenant as a source (reports or database) sees them."""

    calls: int = 0
    by_type: Counter[int] = field(default_factory=Counter)
    by_employee: dict[str, dict[str, int]] = field(default_factory=dict)
    contacts: int | None = None
    telemetry: int | None = None
    stored_call_rows: int | None = None  # rows before FINAL merges versions (database only)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: type names instead of numbers."""
        out = {
            "calls": self.calls,
            "by_type": {type_name(t): n for t, n in sorted(self.by_type.items())},
            "employees": len(self.by_employee),
        }
        return out | {n: getattr(self, n) for n in OPTIONAL if getattr(self, n) is not None}


def _filter(from_ms: int, to_ms: int, **extra: Any) -> report_pb2.ReportFilter:
    return report_pb2.ReportFilter(
        from_ms=from_ms, to_ms=to_ms, include_excluded_numbers=True, **extra
    )


async def report_counts(channel: grpc.aio.Channel, tenant: TenantTruth) -> Counts:
    """What CallSummary and EmployeeSummary say about ``tenant``'s calls."""
    stub = report_pb2_grpc.ReportServiceStub(channel)
    metadata = auth(tenant.admin_key)
    counts = Counts()
    if not tenant.to_ms:
        return counts
    for start, end in windows(tenant.from_ms, tenant.to_ms):
        # Report quotas (RESOURCE_EXHAUSTED with a retry delay) are waited out.
        summary = await patiently(
            functools.partial(
                stub.CallSummary,
                report_pb2.CallSummaryRequest(filter=_filter(start, end)),
                metadata=metadata,
            )
        )
        counts.calls += summary.summary.total_calls
        typed = await asyncio.gather(
            *(
                patiently(
                    functools.partial(
                        stub.CallSummary,
                        report_pb2.CallSummaryRequest(filter=_filter(start, end, call_types=[t])),
                        metadata=metadata,
                    )
                )
                for t in CALL_TYPES
            )
        )
        for call_type, response in zip(CALL_TYPES, typed, strict=True):
            if response.summary.total_calls:
                counts.by_type[call_type] += response.summary.total_calls
        token = ""
        while True:
            page = await patiently(
                functools.partial(
                    stub.EmployeeSummary,
                    report_pb2.EmployeeSummaryRequest(
                        filter=_filter(start, end), page_size=1000, page_token=token
                    ),
                    metadata=metadata,
                )
            )
            for row in page.employees:
                mine = counts.by_employee.setdefault(row.employee_id, Counter())
                mine["total_calls"] += row.summary.total_calls
                for name in EMPLOYEE_FIELDS:
                    mine[name] += getattr(row.summary, name)
            token = page.next_page_token
            if not token:
                break
    return counts


def _differs(what: str, expected: object, found: object) -> list[str]:
    return [] if expected == found else [f"{what}: expected {expected}, found {found}"]


def _totals(where: str, truth: TenantTruth, found: Counts) -> list[str]:
    """Differences in the calls per call type."""
    expected = truth.by_type
    return [
        difference
        for t in CALL_TYPES
        for difference in _differs(f"{where} {type_name(t)}", expected[t], found.by_type[t])
    ]


def _employees(truth: TenantTruth, found: Counts) -> Iterator[tuple[str, Counter[int], Any]]:
    """(id, its calls by type in the truth, what ``found`` says) of every employee in either."""
    for employee_id in sorted(set(truth.by_employee) | set(found.by_employee)):
        counts = truth.by_employee.get(employee_id, Counter())
        yield employee_id, counts, found.by_employee.get(employee_id, {})


def compare_reports(truth: TenantTruth, found: Counts) -> list[str]:
    """Differences between a tenant's truth and its reports."""
    where = f"tenant {truth.tenant_id}"
    out = _differs(f"{where} CallSummary total_calls", truth.calls, found.calls)
    out += _totals(f"{where} CallSummary", truth, found)
    for employee_id, counts, seen in _employees(truth, found):
        expected = {"total_calls": sum(counts.values())}
        expected |= {name: sum(counts[t] for t in types) for name, types in EMPLOYEE_FIELDS.items()}
        for name, value in expected.items():
            what = f"{where} EmployeeSummary {employee_id} {name}"
            out += _differs(what, value, seen.get(name, 0))
    return out


def compare_database(truth: TenantTruth, found: Counts) -> list[str]:
    """Differences between a tenant's truth and direct database counts."""
    where = f"tenant {truth.tenant_id} database"
    out = _differs(f"{where} calls FINAL", truth.calls, found.calls)
    out += _totals(f"{where} calls", truth, found)
    for employee_id, counts, seen in _employees(truth, found):
        expected = {type_name(t): n for t, n in counts.items() if n}
        out += _differs(f"{where} calls of employee {employee_id}", expected, seen)
    for name in ("contacts", "telemetry"):
        if getattr(found, name) is not None:
            out += _differs(f"{where} {name} FINAL", getattr(truth, name), getattr(found, name))
    return out


@dataclass(slots=True)
class Verification:
    """The outcome of comparing the truth with reports and the database."""

    truths: list[TenantTruth]
    injected: dict[str, int] = field(default_factory=dict)
    reports: dict[str, Counts] | None = None
    database: dict[str, Counts] | None = None
    database_note: str = ""
    differences: list[str] = field(default_factory=list)
    checked: bool = False
    acks: dict[str, dict[str, int]] | None = None

    @property
    def ok(self) -> bool:
        """True when something was compared and nothing differed."""
        return self.checked and not self.differences

    def add_reports(self, found: dict[str, Counts]) -> None:
        """Compares report counts (by tenant id) with the truth."""
        self.reports = found
        self.checked = True
        for truth in self.truths:
            self.differences += compare_reports(truth, found.get(truth.tenant_id, Counts()))

    def add_database(self, found: dict[str, Counts]) -> None:
        """Compares direct database counts (by tenant id) with the truth."""
        self.database = found
        self.database_note = ""
        self.checked = True
        for truth in self.truths:
            self.differences += compare_database(truth, found.get(truth.tenant_id, Counts()))

    def add_acks(self, acks: Mapping[str, int], expected: Mapping[str, int]) -> None:
        """Compares the acks' accepted/updated/duplicates totals with what was generated: exact
        only when no batch went twice by accident (a lost ack's re-send acks duplicates)."""
        self.acks = {"found": dict(acks), "expected": dict(expected)}
        for name, value in expected.items():
            if acks.get(name, 0) != value:
                self.differences.append(
                    f"acks {name}: expected {value}, the server acked {acks.get(name, 0)}"
                )

    def to_json(self) -> dict[str, Any]:
        """The ``verify`` section of the result file."""
        expected = [
            Counts(t.calls, t.by_type, dict.fromkeys(t.by_employee, {}), t.contacts, t.telemetry)
            for t in self.truths
        ]
        return {
            "ok": self.ok,
            "checked": self.checked,
            "expected": _total(expected),
            "injected": self.injected,
            "report": _total(self.reports),
            "database": _total(self.database),
            "database_note": self.database_note,
            "acks": self.acks,
            "differences": self.differences[:200],
            "differences_total": len(self.differences),
            "tenants": [
                {
                    "tenant_id": t.tenant_id,
                    "from_ms": t.from_ms,
                    "to_ms": t.to_ms,
                    "expected_calls": t.calls,
                    "report_calls": _calls(self.reports, t.tenant_id),
                    "database_calls": _calls(self.database, t.tenant_id),
                }
                for t in self.truths
            ],
        }


def _calls(found: dict[str, Counts] | None, tenant_id: str) -> int | None:
    return found[tenant_id].calls if found and tenant_id in found else None


def _total(found: dict[str, Counts] | list[Counts] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    total = Counts()
    for counts in found.values() if isinstance(found, dict) else found:
        total.calls += counts.calls
        total.by_type.update(counts.by_type)
        total.by_employee.update(dict.fromkeys(counts.by_employee, {}))
        for name in OPTIONAL:
            if getattr(counts, name) is not None:
                setattr(total, name, (getattr(total, name) or 0) + getattr(counts, name))
    return total.to_json()
