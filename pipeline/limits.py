"""Size limits on what clients send: every cap in one place (README, "Limits").

The caps are part of the contract, not tuning: a device must know in advance which of its records
will be refused, and the note cap is what keeps a CallHistory page under gRPC's default 4 MiB
client message limit (see ``MAX_NOTE_BYTES``). So they are constants, not configuration.

Text lengths are UTF-8 bytes, as on the wire. An ingest record over a cap is rejected on its own
(``pipeline/validate.py``); an admin or report request over a cap gets INVALID_ARGUMENT naming the
field and the limit (``check_text`` and friends). A message quotes at most ``MAX_QUOTED_CHARS`` of
what the client sent, so neither the client nor the log line ever gets a huge value back.
"""

from __future__ import annotations

from collections.abc import Sequence

from callsight.core.errors import InvalidArgument

# --- uploads ------------------------------------------------------------------------------------
MAX_RECORDS = 10_000  # records in one UploadRequest
MAX_BATCH_BYTES = 4 * 1024 * 1024  # serialised bytes of one UploadRequest
# started_at_ms, captured_at_ms and a call's updated_at_ms (when set) lie in
# [MIN_TIME_MS, server now + MAX_FUTURE_MS]; a contact's updated_at_ms (a version, possibly a
# counter) in [0, server now + MAX_FUTURE_MS]. A version far in the future would make every
# later edit of that record lose, for ever.
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS = 86_400_000  # a phone's clock may run ahead, but not by more than a day

# --- text fields, in UTF-8 bytes ----------------------------------------------------------------
# Ids chosen by a device or sent back to us: call_id, contact_id, sim_id, batch_id, and the
# employee/device ids of admin requests and report filters (ours are 36-byte UUIDs or shorter).
MAX_ID_BYTES = 128
# FCM registration tokens run to about 160-200 characters today; room for them to grow.
MAX_FCM_ID_BYTES = 512
# Names of calls, contacts, employees, tenants and API keys.
MAX_NAME_BYTES = 256
# recording_uri, photo_uri: Android content:// URIs and file paths are well under this.
MAX_URI_BYTES = 1024
# model, manufacturer, android_version, app_version.
MAX_DEVICE_FIELD_BYTES = 128
# A tag of an employee, a lead or a report filter.
MAX_TAG_BYTES = 64
# Each text field of an imported lead (first_name, company, email, address, ...).
MAX_LEAD_FIELD_BYTES = 1024
# The longest IANA name is 32 characters ("America/Argentina/ComodRivadavia").
MAX_TIMEZONE_BYTES = 64
# Our page tokens are a few hundred characters; anything longer was not issued by us.
MAX_PAGE_TOKEN_BYTES = 4096

# A call's note. A CallHistory page holds at most 1,000 calls (pipeline/paging.py) and must fit
# gRPC's default 4 MiB client receive limit (4,194,304 bytes), about 4,194 bytes per call. A call
# entry with every other field at its cap (call_id 128, name 256, recording_uri 1,024, ids, E.164
# number, widest integers, with their tags and lengths) is 1,583 bytes; a 2,048-byte note adds
# 2,051 and the repeated field's framing 3: 3,637 bytes a call, 3.64 MB a page, 13% headroom
# (tests/unit/test_limits.py builds that page). Notes are for a line or two about the call.
MAX_NOTE_BYTES = 2048

# --- repeated fields, in entries ----------------------------------------------------------------
MAX_NUMBERS_PER_CONTACT = 32
MAX_SIM_IDS = 8  # per device or telemetry sample: two slots plus eSIM profiles
MAX_TAGS = 64  # per employee or lead
MAX_FILTER_EMPLOYEE_IDS = 10_000  # a report filter's employee_ids (the loadtest fleet's size)
MAX_FILTER_TAGS = 64  # a report filter's employee_tags
# A report filter's call_types (there are 7; repeats are harmless), and its call_methods and
# its call_modes each.
MAX_FILTER_CALL_TYPES = 16
MAX_IMPORT_LEADS = 10_000  # leads in one ImportLeads request
MAX_IMPORT_EMPLOYEES = 10_000  # employees in one ImportEmployees request
MAX_IMPORT_EMPLOYEE_IDS = 10_000  # employee_ids of one ImportLeads request
MAX_EXCLUDED_NUMBERS = 10_000  # SetExcludedNumbers replaces the list: the most a tenant has

# A message quotes at most this many characters of a value the client sent.
MAX_QUOTED_CHARS = 64


def utf8_len(value: str) -> int:
    """Length of ``value`` in UTF-8 bytes, as on the wire."""
    # A code point is 1-4 bytes: only a string that might be over a cap needs encoding.
    if value.isascii():
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def quote(value: str) -> str:
    """``value`` quoted for a message, cut to MAX_QUOTED_CHARS characters."""
    if len(value) > MAX_QUOTED_CHARS:
        return repr(value[:MAX_QUOTED_CHARS]) + f"... ({len(value)} characters)"
    return repr(value)


def too_long(field: str, size: int, limit: int) -> str:
    """The reason for a text over its cap; names the field and the limit."""
    return f"{field} is {size} bytes (UTF-8); the limit is {limit}"


def too_many(field: str, count: int, limit: int) -> str:
    """The reason for a repeated field over its cap; names the field and the limit."""
    return f"{field} has {count} entries; the limit is {limit}"


def text_problem(value: str, field: str, limit: int) -> str | None:
    """Why ``value`` is over ``limit`` bytes, or None when it fits."""
    # len() counts code points, each at least one byte: most values are settled without encoding.
    if len(value) > limit:
        return too_long(field, utf8_len(value), limit)
    if len(value) * 4 > limit and (size := utf8_len(value)) > limit:
        return too_long(field, size, limit)
    return None


def check_text(value: str, field: str, limit: int) -> str:
    """``value``, or InvalidArgument naming ``field`` and ``limit`` when it is over it."""
    problem = text_problem(value, field, limit)
    if problem is not None:
        raise InvalidArgument(problem)
    return value


def check_count(values: Sequence[object], field: str, limit: int) -> None:
    """InvalidArgument naming ``field`` and ``limit`` when ``values`` has more entries."""
    if len(values) > limit:
        raise InvalidArgument(too_many(field, len(values), limit))


def tag_problems(tags: Sequence[str], field: str) -> list[str]:
    """Every problem of a list of tags: too many, or any one too long (the first few named)."""
    if len(tags) > MAX_TAGS:
        return [too_many(field, len(tags), MAX_TAGS)]
    problems = [
        problem
        for i, tag in enumerate(tags)
        if (problem := text_problem(tag, f"{field}[{i}]", MAX_TAG_BYTES)) is not None
    ]
    return problems[:3] + ([f"and {len(problems) - 3} more tags"] if len(problems) > 3 else [])
