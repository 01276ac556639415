from __future__ import annotations

import random
import re
from collections.abc import Callable

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from callsight.core.errors import InvalidArgument
from callsight.pipeline import phone
from callsight.pipeline.phone import InvalidNumber, PhoneNormalizer, is_known_region, normalize


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+91 98765 43210", "IN", "+919876543210"),
        ("098765 43210", "IN", "+919876543210"),
        ("9876543210", "IN", "+919876543210"),
        ("00919876543210", "IN", "+919876543210"),
        ("+91-98765-43210", "US", "+919876543210"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("+1 415-555-2671", "US", "+14155552671"),
        ("+1 415-555-2671", "IN", "+14155552671"),
        ("  415.555.2671  ", "US", "+14155552671"),
        ("9876543210", "in", "+919876543210"),
    ],
)
def test_normalize_accepts_mixed_formats(raw: str, region: str, expected: str) -> None:
    assert normalize(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "message"),
    [
        ("", "IN", "empty number"),
        ("   ", "IN", "empty number"),
        ("abc", "IN", "'abc' is not a phone number"),
        ("12", "IN", "'12' is not a possible phone number in region IN"),
        ("+999 1", "IN", "'+999 1' has an unknown country calling code"),
        ("1" * 300, "IN", "is too long to be a phone number"),
        ("555-2671", "US", "'555-2671' is only dialable locally in region US"),
    ],
)
def test_normalize_rejects_garbage_with_reason(raw: str, region: str, message: str) -> None:
    with pytest.raises(InvalidNumber, match=re.escape(message)):
        normalize(raw, region)


def test_invalid_number_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        normalize("abc", "IN")


def test_error_message_quotes_at_most_a_prefix_of_the_input() -> None:
    with pytest.raises(InvalidNumber) as info:
        normalize("x" * 10_000, "IN")
    assert len(str(info.value)) < 100


def test_unknown_region_is_rejected() -> None:
    with pytest.raises(InvalidNumber, match="unknown region 'XX'"):
        normalize("9876543210", "XX")
    with pytest.raises(InvalidNumber, match="unknown region ''"):
        normalize("+919876543210", "")


def test_is_known_region() -> None:
    assert is_known_region("IN")
    assert is_known_region("us")
    assert not is_known_region("XX")
    assert not is_known_region("")


def test_normalizer_matches_normalize_and_caches_results() -> None:
    normalizer = PhoneNormalizer()
    assert normalizer.normalize("098765 43210", "IN") == "+919876543210"
    assert normalizer.normalize("098765 43210", "IN") == "+919876543210"
    assert len(normalizer) == 1


def test_normalizer_caches_failures_and_raises_each_time() -> None:
    normalizer = PhoneNormalizer()
    for _ in range(3):
        with pytest.raises(InvalidNumber, match="'abc' is not a phone number"):
            normalizer.normalize("abc", "IN")
    assert len(normalizer) == 1


def test_normalizer_cache_key_includes_region() -> None:
    normalizer = PhoneNormalizer()
    assert normalizer.normalize("9876543210", "IN") == "+919876543210"
    assert normalizer.normalize("9876543210", "US") == "+19876543210"
    assert len(normalizer) == 2


def test_normalizer_bound_evicts_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []

    def counting_normalize(raw: str, region: str) -> str:
        computed.append(raw)
        return normalize(raw, region)

    monkeypatch.setattr(phone, "normalize", counting_normalize)
    normalizer = PhoneNormalizer(max_entries=2)
    normalizer.normalize("9876543210", "IN")
    normalizer.normalize("(415) 555-2671", "US")
    normalizer.normalize("9876543210", "IN")  # a hit; IN is now the most recently used
    normalizer.normalize("+44 20 7946 0958", "GB")  # evicts US, the least recently used
    assert len(normalizer) == 2
    assert normalizer.max_entries == 2
    assert computed == ["9876543210", "(415) 555-2671", "+44 20 7946 0958"]

    normalizer.normalize("9876543210", "IN")  # still cached
    normalizer.normalize("(415) 555-2671", "US")  # evicted, so computed again
    assert computed[3:] == ["(415) 555-2671"]
    assert len(normalizer) == 2


def test_normalizer_does_not_cache_long_inputs() -> None:
    normalizer = PhoneNormalizer()
    with pytest.raises(InvalidNumber):
        normalizer.normalize("9" * 1000, "IN")
    assert len(normalizer) == 0


def test_normalizer_rejects_non_positive_bound() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        PhoneNormalizer(max_entries=0)


def test_normalize_many_returns_result_or_error_per_index() -> None:
    normalizer = PhoneNormalizer()
    out = normalizer.normalize_many(["+91 98765 43210", "", "abc", "9876543210", "abc"], "IN")

    assert len(out) == 5
    assert out[0] == "+919876543210"
    assert out[3] == "+919876543210"
    for index, message in [(1, "empty number"), (2, "not a phone number"), (4, "not a phone")]:
        error = out[index]
        assert isinstance(error, InvalidNumber)
        assert message in str(error)


def test_normalize_many_with_unknown_region_fails_every_slot() -> None:
    out = PhoneNormalizer().normalize_many(["9876543210", "+919876543210"], "XX")
    assert all(isinstance(item, InvalidNumber) for item in out)


def test_normalize_many_of_nothing() -> None:
    assert PhoneNormalizer().normalize_many([], "IN") == []


def test_normalize_many_all_hits_refreshes_recency(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []

    def counting_normalize(raw: str, region: str) -> str:
        computed.append(raw)
        return normalize(raw, region)

    monkeypatch.setattr(phone, "normalize", counting_normalize)
    normalizer = PhoneNormalizer(max_entries=2)
    normalizer.normalize_many(["9876543210", "9876543211"], "IN")
    # All hits, in reverse order: 9876543210 becomes the most recently used.
    assert normalizer.normalize_many(["9876543211", "9876543210"], "IN") == [
        "+919876543211",
        "+919876543210",
    ]
    normalizer.normalize_many(["9876543212"], "IN")  # evicts 9876543211
    normalizer.normalize_many(["9876543210"], "IN")  # still cached
    assert computed == ["9876543210", "9876543211", "9876543212"]


def test_normalize_many_cached_failures_stay_errors() -> None:
    normalizer = PhoneNormalizer()
    first = normalizer.normalize_many(["12", "9876543210"], "IN")
    again = normalizer.normalize_many(["12", "9876543210"], "IN")  # all hits now
    for results in (first, again):
        assert isinstance(results[0], InvalidNumber)
        assert results[1] == "+919876543210"
    assert str(first[0]) == str(again[0])


def _spellings(rng: random.Random, region: str) -> list[str]:
    """Numbers of ``region`` as people and phones write them: each example number in E.164,
    international and national format, and its digits with prefixes, mutations and separators."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert metadata is not None
    cc = str(metadata.country_code)
    raws: list[str] = []
    for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        raws += [
            phonenumbers.format_number(example, f)
            for f in (
                PhoneNumberFormat.E164,
                PhoneNumberFormat.INTERNATIONAL,
                PhoneNumberFormat.NATIONAL,
            )
        ]
        nsn = phonenumbers.national_significant_number(example)
        for base in (
            nsn,
            f"+{cc}{nsn}",
            f"0{nsn}",
            f"{cc}{nsn}",
            f"00{cc}{nsn}",
            f"1{nsn}",
            f"+{cc}0{nsn}",
        ):
            digits = base
            for _ in range(rng.randrange(3)):  # one digit dropped, added or changed
                i = rng.randrange(1, len(digits))
                digits = rng.choice(
                    [
                        digits[:-1],
                        digits + str(rng.randrange(10)),
                        digits[:i] + "7" + digits[i + 1 :],
                    ]
                )
            raws.append(digits)
            raws.append(
                "".join(c + rng.choice(["", "", "", " ", "-", ".", "(", ")"]) for c in digits)
            )
    return raws


def test_normalize_of_plain_raws_is_exactly_parse_in_every_region() -> None:
    # normalize reads plain raws from their digits; it must agree with phonenumbers.parse on
    # every outcome (an offline sweep of 1.25M such raws found no difference).
    rng = random.Random(7)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    answered_from_digits = successes = 0
    for region in regions:
        for raw in _spellings(rng, region):
            dialled_in = region if rng.random() < 0.8 else rng.choice(regions)
            assert _outcome(normalize, raw, dialled_in) == _outcome(
                phone._normalize_parsed, raw, dialled_in
            ), (raw, dialled_in)
            digits = phone._plain_digits(raw)
            if not _outcome(normalize, raw, dialled_in).startswith("+"):
                continue
            successes += 1
            if digits is not None and phone._e164_of_digits(digits, dialled_in) is not None:
                answered_from_digits += 1
    # The comparison means something only if most successes took the digits path.
    assert successes > 1000
    assert answered_from_digits > 0.7 * successes


def _outcome(normalizer: Callable[[str, str], str], raw: str, region: str) -> str:
    try:
        return normalizer(raw, region)
    except InvalidNumber as exc:
        return f"error: {exc}"


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("+91 98765 43210", "+919876543210"),
        ("(022) 2345-6789", "02223456789"),
        ("415.555.2671", "4155552671"),
        ("12", None),  # too few digits: parse counts separators in its viability check
        ("1-2", None),
        ("+ 1", None),
        (" +91 98765 43210", None),  # a "+" only first
        ("9876543210 x12", None),  # an extension
        ("1-800-FLOWERS", None),  # vanity letters
        ("٩٨٧٦٥٤٣٢١٠", None),  # non-ASCII digits
        ("tel:+919876543210", None),
        ("9" * 65, None),  # longer than any cached raw
    ],
)
def test_plain_digits(raw: str, digits: str | None) -> None:
    assert phone._plain_digits(raw) == digits


def test_digits_path_leaves_idd_and_unknown_country_codes_to_parse() -> None:
    assert phone._e164_of_digits("00919876543210", "IN") is None
    assert phone._e164_of_digits("+9991234567", "IN") is None
    assert normalize("00919876543210", "IN") == "+919876543210"
    assert phone._e164_of_digits("09876543210", "IN") == "+919876543210"
    assert phone._e164_of_digits("+14155552671", "IN") == "+14155552671"
