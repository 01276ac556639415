"""What the operator CLI reads from people: durations, dates and the employee CSV file.

Each parser raises ``ValueError`` with a message that says what to type instead, so that the
CLI can print it as its one line of error.
"""

from __future__ import annotations

import csv
import datetime
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EmployeeRow", "parse_duration", "parse_instant", "parse_zone", "read_employees"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_HINT = "write a number and a unit (s, m, h, d, w), e.g. 90s, 15m, 24h, 1d, 1h30m"
# Tags in one CSV cell; ',' separates the columns themselves.
_TAG_SEPARATORS = re.compile(r"[;|]")
CSV_COLUMNS = ("name", "number", "tags")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m``, ``24h``, ``1d`` or ``1h30m``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: {_DURATION_HINT}")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds == 0:
        raise ValueError(f"{text!r} is zero: give a positive duration, e.g. 24h")
    return seconds


def parse_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Asia/Kolkata``)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as Asia/Kolkata or UTC"
        ) from None


def parse_instant(text: str, zone: datetime.tzinfo) -> int:
    """Epoch milliseconds of a date (midnight in ``zone``) or an ISO 8601 date and time.

    A time without an offset is read in ``zone``; one with an offset (``+05:30``, ``Z``) keeps it.
    """
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: write YYYY-MM-DD (e.g. 2026-11-01) or an ISO 8601 time "
            "(e.g. 2026-11-01T09:30 or 2026-11-01T09:30+05:30)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class EmployeeRow:
    """One employee of an import file, with the file line it came from (1 is the header)."""

    line: int
    name: str
    number: str
    tags: tuple[str, ...]


def read_employees(path: Path) -> list[EmployeeRow]:
    """The employees of a CSV file with a header row naming ``name``, ``number`` and ``tags``.

    Columns may come in any order, ``tags`` may be left out, and other columns are ignored.
    Tags in one cell are separated by ``;`` or ``|``. Blank lines are skipped. Raises
    ``ValueError`` for a file that cannot be read or has no ``name`` or ``number`` column;
    rows with empty fields are kept for the server to judge, each with its line number.
    """
    try:
        # utf-8-sig: spreadsheets often save a byte order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = [c.strip().lower() for c in next(reader, [])]
            missing = [c for c in CSV_COLUMNS[:2] if c not in header]
            if missing:
                raise ValueError(
                    f"{path}: the first line must be a header naming the columns "
                    f"name,number,tags (missing: {', '.join(missing)})"
                )
            columns = {c: header.index(c) for c in CSV_COLUMNS if c in header}
            employees = []
            # Physical lines: a quoted cell spanning lines leaves the next rows' numbers right.
            line = reader.line_num
            for cells in reader:
                first_line, line = line + 1, reader.line_num
                if any(c.strip() for c in cells):
                    employees.append(_employee(first_line, cells, columns))
            return employees
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(
            f"cannot read {path}: it is not UTF-8 text; save it as CSV UTF-8"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{path} is not a valid CSV file: {exc}") from None


def _employee(line: int, cells: list[str], columns: dict[str, int]) -> EmployeeRow:
    def cell(column: str) -> str:
        at = columns.get(column)
        return cells[at].strip() if at is not None and at < len(cells) else ""

    tags = tuple(t.strip() for t in _TAG_SEPARATORS.split(cell("tags")) if t.strip())
    return EmployeeRow(line, cell("name"), cell("number"), tags)
