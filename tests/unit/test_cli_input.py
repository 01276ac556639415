"""What the operator CLI reads from people: durations, dates, the employee CSV; what it prints."""

from __future__ import annotations

import datetime
import zoneinfo
from pathlib import Path

import pytest

from callsight.server.cli_input import (
    EmployeeRow,
    parse_duration,
    parse_instant,
    parse_zone,
    read_employees,
)
from callsight.server.cli_output import Column, duration, fields, qr_code, table, timestamp

KOLKATA = zoneinfo.ZoneInfo("Asia/Kolkata")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("24h", 86_400),
        ("1d", 86_400),
        ("2w", 14 * 86_400),
        ("1h30m", 5_400),
        (" 1D 6H ", 108_000),
    ],
)
def test_durations_read_their_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["24", "", "h", "1.5h", "1y", "-1h", "1h x", "24 hours"])
def test_a_duration_without_a_known_unit_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 15m, 24h, 1d"):
        parse_duration(text)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_duration("0h")


def test_a_date_is_midnight_in_the_zone_and_an_offset_wins() -> None:
    midnight_ist = datetime.datetime(2026, 11, 1, tzinfo=KOLKATA)
    assert parse_instant("2026-11-01", KOLKATA) == int(midnight_ist.timestamp() * 1000)
    assert parse_instant("2026-11-01", datetime.UTC) == 1_793_491_200_000
    # 00:00 IST is 18:30 UTC the day before, whatever zone the dates are read in.
    assert parse_instant("2026-11-01T00:00+05:30", datetime.UTC) == 1_793_491_200_000 - 19_800_000
    assert parse_instant("2026-11-01T09:30", datetime.UTC) == 1_793_491_200_000 + 34_200_000


@pytest.mark.parametrize("text", ["01/11/2026", "2026-13-01", "yesterday", ""])
def test_a_bad_date_says_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_instant(text, datetime.UTC)


def test_zones_are_iana_names() -> None:
    assert parse_zone("Asia/Kolkata") == KOLKATA
    with pytest.raises(ValueError, match="IANA"):
        parse_zone("India/Bangalore")
    with pytest.raises(ValueError, match="IANA"):
        parse_zone("../etc/passwd")


def _csv(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "staff.csv"
    path.write_text(text, encoding=encoding)
    return path


def test_csv_rows_keep_their_line_numbers_and_split_tags(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "name,number,tags\n"
        "Asha Rao,098765 43210,sales;north\n"
        "\n"
        '"Kumar, Ravi",+919845012345, sales | south |\n'
        '"Multi\nline",123,\n'
        "No Tags,555\n",
    )
    assert read_employees(path) == [
        EmployeeRow(2, "Asha Rao", "098765 43210", ("sales", "north")),
        EmployeeRow(4, "Kumar, Ravi", "+919845012345", ("sales", "south")),
        EmployeeRow(5, "Multi\nline", "123", ()),
        # The quoted cell above spans lines 5 and 6.
        EmployeeRow(7, "No Tags", "555", ()),
    ]


def test_csv_columns_in_any_order_with_a_bom_and_extra_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Tags,Email,NUMBER,Name\nops,a@b.c,+15551234567,Lee\n", "utf-8-sig")
    assert read_employees(path) == [EmployeeRow(2, "Lee", "+15551234567", ("ops",))]


def test_csv_without_tags_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "number,name\n+15551234567,Lee\n")
    assert read_employees(path) == [EmployeeRow(2, "Lee", "+15551234567", ())]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Asha,0987654321,sales\n", r"header .* \(missing: name, number\)"),
        ("name,tags\nAsha,sales\n", r"\(missing: number\)"),
        ("", r"\(missing: name, number\)"),
    ],
)
def test_csv_without_a_header_says_which_columns_are_missing(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_employees(_csv(tmp_path, text))


def test_csv_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read .*missing.csv: No such file"):
        read_employees(tmp_path / "missing.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,number\nJosé,123\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_employees(latin)


def test_tables_align_and_right_align_numbers() -> None:
    columns = [Column("name", "name"), Column("calls", "calls", right=True)]
    text = table(
        [{"name": "Asha", "calls": 7}, {"name": "Ravi Kumar", "calls": 1200}], columns, "-"
    )
    assert text == "NAME        CALLS\nAsha            7\nRavi Kumar   1200\n"
    assert table([], columns, "nothing yet") == "nothing yet\n"


def test_fields_times_and_durations() -> None:
    assert timestamp(0) == "-"
    assert timestamp(1_793_491_200_000) == "2026-11-01 00:00:00Z"
    assert duration(0) == "00:00:00"
    assert duration(3_723) == "01:02:03"
    assert duration(90_061) == "1d 01:01:01"
    record = {"a": True, "long label": ["x", "y"]}
    assert fields(record, [Column("a", "a"), Column("long label", "tags")]) == (
        "a     yes\ntags  x, y\n"
    )


def test_qr_code_is_drawn_for_dark_or_light_terminals() -> None:
    dark, light = qr_code("cse_abc", light_background=False), qr_code("cse_abc", True)
    assert dark != light
    assert set(dark) <= {" ", "█", "▀", "▄", "\n"}
    # Same size either way; a longer code needs a bigger symbol.
    assert len(dark.splitlines()) == len(light.splitlines())
    assert len(qr_code("cse_" + "x" * 200, False).splitlines()) > len(dark.splitlines())
