from __future__ import annotations

import re

import pytest

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
