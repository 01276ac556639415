"""Log masking: phone numbers in any format go, codes and standards' numbers stay."""

from __future__ import annotations

import pytest

from callsight.server.errors import redact


@pytest.mark.parametrize(
    "number", ["+91 98450 12345", "098765 43210", "(080) 4567-8901", "+14155550123", "555 0123"]
)
def test_phone_numbers_are_masked(number: str) -> None:
    masked = redact(f"number {number} is not valid")
    assert "<number>" in masked and not any(c.isdigit() for c in masked), masked


@pytest.mark.parametrize(
    "text",
    [
        "region must be ISO 3166-1 alpha-2",
        "at most 1000 rows",
        "batch of 10,000 records",
    ],
)
def test_codes_and_counts_stay(text: str) -> None:
    assert redact(text) == text


def test_a_long_count_reads_as_a_number() -> None:
    # Seven digits in a row may be a number: masking wins over a byte count.
    assert redact("limit 4 MiB (4194304 bytes)") == "limit 4 MiB (<number> bytes)"
