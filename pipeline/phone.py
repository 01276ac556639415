"""Phone number normalisation to E.164 with libphonenumber's rules.

A number is accepted when it is *possible* (right length for its country), not when it is
*valid* (in an allocated range): load tests and new number ranges would fail the stricter check.
Numbers that are only dialable locally (no area code) are refused, because their E.164 form would
be a different, wrong number. Extensions are dropped; E.164 has no place for them.

Most raws are plain: ASCII digits, at most a leading "+", and the separators people type between
digit groups (space, "-", ".", parentheses). ``phonenumbers.parse`` reads such a raw as its digits
alone: the steps that find a number in free text (RFC 3966, extensions, vanity letters, Unicode
digits) change nothing in it. ``normalize`` therefore reads a plain raw's digits through the
steps of ``parse`` that depend on the number (country code, IDD, national prefix, lengths), in
``parse``'s order and with libphonenumber's own helpers and metadata, about five times faster
than ``parse`` (a backfill normalises every number it sees for the first time). The one answer
it gives is the E.164 string; every other outcome (an unusable number, or a branch left to
``parse``: a raw starting with an IDD, a "+" before an unknown country code) goes through
``parse``, so results and messages are exactly libphonenumber's (tests compare both over every
region's example numbers, spelled and mutated).
"""

from __future__ import annotations

import functools
import re
import threading
import zoneinfo
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import cast

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    ValidationResult,
)
from phonenumbers import phonenumberutil as pnu
from phonenumbers.re_util import re_compile

from callsight.core.errors import InvalidArgument
from callsight.pipeline.limits import MAX_TIMEZONE_BYTES, quote

# Longer raws are never cached, so the cache's bound in entries also bounds its memory.
_MAX_CACHED_RAW_LEN = 64
# Error messages quote at most this much of the raw input.
_MAX_QUOTED_LEN = 40

# A plain raw (see the module docstring); ``[0-9]`` is ASCII only, unlike ``\d``.
_PLAIN = re.compile(r"\+?[0-9 ().\-]+")
_SEPARATORS = str.maketrans("", "", " ().-")
# With fewer digits parse's viability check counts the separators too; such raws go to parse.
_MIN_PLAIN_DIGITS = 3
# Outcomes of parse's length test after which it keeps the national prefix it found.
_KEEP_PREFIX = frozenset(
    {
        ValidationResult.TOO_SHORT,
        ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
        ValidationResult.INVALID_LENGTH,
    }
)

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "has an unknown country calling code",
    NumberParseException.NOT_A_NUMBER: "is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "is too short to be a phone number",
    NumberParseException.TOO_LONG: "is too long to be a phone number",
}

_IMPOSSIBLE_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country calling code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.INVALID_LENGTH: "invalid length",
    ValidationResult.TOO_LONG: "too long",
}


class InvalidNumber(InvalidArgument):
    """A raw number cannot be normalised to E.164; the message says why."""


def is_known_region(region: str) -> bool:
    """Whether ``region`` is an ISO 3166 alpha-2 code libphonenumber has metadata for."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


# Names outside the IANA set that zoneinfo still opens ("localtime" is the host's own zone).
_NOT_ZONES = frozenset({"Factory", "posixrules", "localtime"})


@functools.cache
def timezones() -> frozenset[str]:
    """The time zones callsight accepts: IANA names of the Area/Location form, plus "UTC".

    From the tz database zoneinfo reads (the ``tzdata`` package, else the system's), read once.
    Legacy single-word names ("EST", "GMT", "Japan", "Zulu") are left out: they are links kept
    for old systems, some are not zones at all ("Factory"), and each has an Area/Location or
    Etc/ equivalent ("America/New_York", "Etc/GMT").
    """
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if ("/" in name or name == "UTC")
        and name not in _NOT_ZONES
        and not name.startswith(("posix/", "right/"))
    )


def valid_timezone(name: str, field: str = "timezone") -> str:
    """The IANA zone name, or InvalidArgument saying what to send.

    The length is capped before any lookup, and the message quotes at most 64 characters.
    """
    # The set is in memory: no file is opened for a client's string (a long one used to raise
    # OSError from zoneinfo and end as INTERNAL).
    if len(name) <= MAX_TIMEZONE_BYTES and name in timezones():
        return name
    shown = "an empty string" if not name else quote(name)
    raise InvalidArgument(
        f"{field} {shown} is not an IANA time zone: send an Area/Location name such as"
        ' "Asia/Kolkata", or "UTC"'
    )


def valid_region(region: str, field: str) -> str:
    """The upper-case ISO 3166 alpha-2 region, or InvalidArgument."""
    if not is_known_region(region):
        raise InvalidArgument(
            f"{field} {quote(region)} is not an ISO 3166 alpha-2 region (e.g. 'IN')"
        )
    return region.upper()


def _quote(raw: str) -> str:
    if len(raw) > _MAX_QUOTED_LEN:
        return repr(raw[:_MAX_QUOTED_LEN] + "...")
    return repr(raw)


def normalize(raw: str, region: str) -> str:
    """Return ``raw`` in E.164 form, reading local numbers as dialled in ``region``.

    Raises InvalidNumber when ``raw`` is empty, unparseable or not a possible number, or when
    ``region`` is unknown.
    """
    digits = _plain_digits(raw)
    if digits is not None:
        upper = region.upper()
        if upper in phonenumbers.SUPPORTED_REGIONS:
            e164 = _e164_of_digits(digits, upper)
            if e164 is not None:
                return e164
    return _normalize_parsed(raw, region)


def _plain_digits(raw: str) -> str | None:
    """The digits of a plain raw, with its leading "+"; None for any other raw."""
    if len(raw) > _MAX_CACHED_RAW_LEN or _PLAIN.fullmatch(raw) is None:
        return None
    digits = raw.translate(_SEPARATORS)
    count = len(digits) - 1 if digits.startswith("+") else len(digits)
    return digits if count >= _MIN_PLAIN_DIGITS else None


def _e164_of_digits(digits: str, region: str) -> str | None:
    """The E.164 form ``normalize`` gives a plain raw with these digits, or None to ask parse.

    ``parse`` followed by the possibility check, step for step, for a "+" and ASCII digits and a
    supported upper-case region: each branch that can only fail, or that is left to ``parse``,
    returns None.
    """
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.country_code is None:
        return None
    default_code = metadata.country_code
    # _maybe_extract_country_code
    country_code = 0
    national = ""
    if digits.startswith("+"):
        country_code, national = pnu._extract_country_code(digits[1:])
        if country_code == 0:
            return None  # parse retries without the "+"
    elif (
        metadata.international_prefix is not None
        and (pnu._parse_prefix_as_idd(re_compile(metadata.international_prefix), digits)[0])
    ):
        return None  # an IDD: left to parse
    elif digits.startswith(str(default_code)):
        general = metadata.general_desc
        _, potential, _ = pnu._maybe_strip_national_prefix_carrier_code(
            digits[len(str(default_code)) :], metadata
        )
        if (
            not pnu._match_national_number(digits, general, False)
            and pnu._match_national_number(potential, general, False)
        ) or _length_test(digits, metadata) == ValidationResult.TOO_LONG:
            country_code, national = default_code, potential
    # parse, once the country code is known
    if country_code != 0:
        number_region = pnu.region_code_for_country_code(country_code)
        if number_region != region:
            metadata = PhoneMetadata.metadata_for_region_or_calling_code(
                country_code, number_region
            )
            if metadata is None:
                return None
    else:
        national = digits
        country_code = default_code
    if len(national) < pnu._MIN_LENGTH_FOR_NSN:
        return None
    _, potential, _ = pnu._maybe_strip_national_prefix_carrier_code(national, metadata)
    if _length_test(potential, metadata) not in _KEEP_PREFIX:
        national = potential
    if not pnu._MIN_LENGTH_FOR_NSN <= len(national) <= pnu._MAX_LENGTH_FOR_NSN:
        return None
    # is_possible_number_with_reason; the national number keeps its leading zeros, as
    # national_significant_number rebuilds them.
    if country_code not in COUNTRY_CODE_TO_REGION_CODE:
        return None
    possible = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, pnu.region_code_for_country_code(country_code)
    )
    if possible is None or _length_test(national, possible) != ValidationResult.IS_POSSIBLE:
        return None
    return f"+{country_code}{national}"


# libphonenumber's length test reads only the number's length and the region's metadata (its
# possible lengths): one result per (metadata, length), kept as long as the process. Metadata
# objects are loaded once and never dropped, so their ids are stable keys; a few hundred regions
# times ~17 lengths bound the table.
_LENGTH_TESTS: dict[tuple[int, int], int] = {}


def _length_test(national: str, metadata: PhoneMetadata) -> int:
    """``pnu._test_number_length(national, metadata)``, from the table when seen before."""
    key = (id(metadata), len(national))
    result = _LENGTH_TESTS.get(key)
    if result is None:
        result = _LENGTH_TESTS[key] = pnu._test_number_length(national, metadata)
    return result


def _normalize_parsed(raw: str, region: str) -> str:
    """``normalize`` through ``phonenumbers.parse``: any raw, and every error message."""
    if not raw.strip():
        raise InvalidNumber("empty number")
    upper = region.upper()
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidNumber(f"unknown region {region!r}")
    try:
        number = phonenumbers.parse(raw, upper)
    except NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, "cannot be parsed")
        raise InvalidNumber(f"{_quote(raw)} {reason}") from None
    result = phonenumbers.is_possible_number_with_reason(number)
    if result == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise InvalidNumber(
            f"{_quote(raw)} is only dialable locally in region {upper}; include the area code"
        )
    if result != ValidationResult.IS_POSSIBLE:
        reason = _IMPOSSIBLE_REASONS.get(result, "impossible")
        raise InvalidNumber(
            f"{_quote(raw)} is not a possible phone number in region {upper} ({reason})"
        )
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str


class PhoneNormalizer:
    """``normalize`` behind a bounded LRU cache keyed by (raw, region).

    Devices send the same few numbers over and over, so most lookups hit. The cache holds at most
    ``max_entries`` results, failures included (as their message, so repeated garbage is cheap);
    raws longer than 64 characters bypass it, so the bound in entries also bounds memory (roughly
    30 MB at the default). Safe to share between threads.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], str | _Failure] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def max_entries(self) -> int:
        """The most results the cache holds."""
        return self._max_entries

    def __len__(self) -> int:
        """How many results the cache holds now."""
        return len(self._cache)

    def normalize(self, raw: str, region: str) -> str:
        """Like the module's ``normalize``, answered from the cache when possible."""
        with self._lock:
            result = self._lookup(raw, region)
        if isinstance(result, _Failure):
            raise InvalidNumber(result.message)
        return result

    def normalize_many(self, raws: Sequence[str], region: str) -> list[str | InvalidNumber]:
        """Normalise a column of numbers: each slot holds the E.164 string or the error.

        Never raises, so one bad number does not cost the rest of the batch.
        """
        keys = list(zip(raws, repeat(region)))
        cache = self._cache
        with self._lock:
            found = list(map(cache.get, keys))
            if None in found:
                results = [self._lookup(raw, region) for raw in raws]
            else:
                # All hits (the common case): refresh them in order, in C.
                deque(map(cache.move_to_end, keys), maxlen=0)
                results = cast(list[str | _Failure], found)
        if _Failure not in set(map(type, results)):
            return cast(list[str | InvalidNumber], results)
        return [
            InvalidNumber(result.message) if isinstance(result, _Failure) else result
            for result in results
        ]

    def _lookup(self, raw: str, region: str) -> str | _Failure:
        # Caller holds self._lock.
        key = (raw, region)
        cache = self._cache
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        result: str | _Failure
        try:
            result = normalize(raw, region)
        except InvalidNumber as exc:
            # Keep the message, not the exception: a raised exception pins its traceback's frames.
            result = _Failure(str(exc))
        if len(raw) <= _MAX_CACHED_RAW_LEN:
            cache[key] = result
            if len(cache) > self._max_entries:
                cache.popitem(last=False)
        return result
