"""ReportFilter (request) -> CallFilter (what storage runs), validated, all problems at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from callsight.core.errors import InvalidArgument
from callsight.pipeline.limits import (
    MAX_FILTER_CALL_TYPES,
    MAX_FILTER_EMPLOYEE_IDS,
    MAX_FILTER_TAGS,
    MAX_ID_BYTES,
    MAX_TAG_BYTES,
    text_problem,
    too_many,
)
from callsight.pipeline.phone import valid_timezone
from callsight.storage.directory import Directory, Tenant
from callsight.storage.filters import CallFilter
from callsight.v1 import common_pb2, report_pb2

DAY_MS = 86_400_000
MAX_RANGE_DAYS = 400
DEFAULT_RANGE_DAYS = 30


async def call_filter(
    request: report_pb2.ReportFilter, tenant: Tenant, directory: Directory, now_ms: int
) -> CallFilter:
    """Validates a request filter for ``tenant`` at ``now_ms``; employee tags become employee ids.

    An open range ends relative to ``now_ms`` (see ``anchored`` for later pages).
    """
    problems: list[str] = []
    from_ms, to_ms = request.from_ms, request.to_ms
    if not from_ms and not to_ms:
        # Unset range: the last 30 days (and calls stamped up to a day ahead by skewed clocks).
        from_ms, to_ms = now_ms - DEFAULT_RANGE_DAYS * DAY_MS, now_ms + DAY_MS
    elif not to_ms:
        to_ms = now_ms + DAY_MS
    if from_ms < 0:
        problems.append("filter.from_ms must not be negative")
    if to_ms <= from_ms:
        problems.append(
            f"filter range is empty or reversed (from_ms {from_ms} >= to_ms {to_ms});"
            " from_ms must be before to_ms"
        )
    elif to_ms - from_ms > MAX_RANGE_DAYS * DAY_MS:
        problems.append(
            f"filter range spans {(to_ms - from_ms) / DAY_MS:.1f} days; at most"
            f" {MAX_RANGE_DAYS} days per request"
        )
    # The tenant's own zone was checked when the tenant was created.
    timezone = request.timezone or tenant.timezone
    if request.timezone:
        try:
            valid_timezone(request.timezone, "filter.timezone")
        except InvalidArgument as exc:
            problems.append(str(exc))
    problems.extend(_size_problems(request))
    for field, values, enum in (
        ("call_types", request.call_types, common_pb2.CallType),
        ("call_methods", request.call_methods, common_pb2.CallMethod),
        ("call_modes", request.call_modes, common_pb2.CallMode),
    ):
        problem = _enum_problem(field, values, enum.DESCRIPTOR.name, enum.values())
        if problem is not None:
            problems.append(problem)
    max_duration = request.max_duration_s if request.HasField("max_duration_s") else None
    if max_duration is not None and max_duration < request.min_duration_s:
        problems.append("filter.max_duration_s is below filter.min_duration_s")
    if problems:
        raise InvalidArgument("; ".join(problems))

    employee_ids: tuple[str, ...] | None = None
    if request.employee_ids:
        employee_ids = tuple(sorted(set(request.employee_ids)))
    if request.employee_tags:
        tags = set(request.employee_tags)
        tagged = {
            e.employee_id
            for e in await directory.employees(tenant.tenant_id)
            if tags.intersection(e.tags)
        }
        employee_ids = tuple(
            sorted(tagged if employee_ids is None else tagged.intersection(employee_ids))
        )
    return CallFilter(
        tenant_id=tenant.tenant_id,
        from_ms=from_ms,
        to_ms=to_ms,
        timezone=timezone,
        sync_time=request.time_field == report_pb2.TIME_FIELD_SYNC_TIME,
        employee_ids=employee_ids,
        call_types=tuple(sorted(set(request.call_types))),
        min_duration_s=request.min_duration_s,
        max_duration_s=max_duration,
        include_excluded=request.include_excluded_numbers,
        exclude_private=request.exclude_private,
        call_methods=tuple(sorted(set(request.call_methods))),
        call_modes=tuple(sorted(set(request.call_modes))),
    )


def _enum_problem(
    field: str, values: Iterable[int], enum: str, enum_values: Iterable[int]
) -> str | None:
    """The problem of a filter's list of enum numbers holding UNSPECIFIED (0) or a number the
    enum lacks; None when there is none."""
    valid = set(enum_values) - {0}
    bad = sorted(set(values) - valid)
    if not bad:
        return None
    shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
    return f"filter.{field} [{shown}] are not {enum} values (1-{max(valid)})"


def _size_problems(request: report_pb2.ReportFilter) -> list[str]:
    """The filter's repeated fields over their caps (limits.py), each entry's length too."""
    problems = []
    for field, values, max_entries, max_bytes in (
        ("employee_ids", request.employee_ids, MAX_FILTER_EMPLOYEE_IDS, MAX_ID_BYTES),
        ("employee_tags", request.employee_tags, MAX_FILTER_TAGS, MAX_TAG_BYTES),
    ):
        if len(values) > max_entries:
            problems.append(f"filter.{too_many(field, len(values), max_entries)}")
            continue
        for i, value in enumerate(values):
            problem = text_problem(value, f"filter.{field}[{i}]", max_bytes)
            if problem is not None:
                problems.append(problem)
                break  # one is enough to say what to fix
    # Each list of enum numbers has a few values; repeats are harmless, thousands are not.
    for field, count in (
        ("call_types", len(request.call_types)),
        ("call_methods", len(request.call_methods)),
        ("call_modes", len(request.call_modes)),
    ):
        if count > MAX_FILTER_CALL_TYPES:
            problems.append(f"filter.{too_many(field, count, MAX_FILTER_CALL_TYPES)}")
    return problems


def anchored(f: CallFilter, request: report_pb2.ReportFilter, snapshot_ms: int) -> CallFilter:
    """``f`` with an open range ending relative to ``snapshot_ms`` (a paged report's first page)
    instead of now, so that no later page shifts the range; a closed range is left alone."""
    if request.to_ms:
        return f
    from_ms = request.from_ms or snapshot_ms - DEFAULT_RANGE_DAYS * DAY_MS
    return replace(f, from_ms=from_ms, to_ms=snapshot_ms + DAY_MS)
