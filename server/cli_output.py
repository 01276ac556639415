"""What the operator CLI prints: aligned tables for people, JSON for scripts, QR codes.

A command builds plain records (dicts of JSON values: ids, counts, epoch milliseconds) once;
``--json`` prints them as they are, otherwise the columns below format them for a terminal.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import qrcode

__all__ = ["Column", "duration", "fields", "qr_code", "table", "timestamp", "write_json"]

Record = Mapping[str, Any]


def timestamp(ms: int) -> str:
    """Epoch milliseconds as ``2026-11-01 09:30:00Z``; ``-`` for 0 (never)."""
    if not ms:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: int) -> str:
    """Seconds as ``1d 02:03:04``, ``02:03:04`` or ``0:00:00``: hours, minutes and seconds."""
    days, rest = divmod(int(seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Column:
    """One column of a table: the record key, its header, how to show a value."""

    key: str
    header: str
    show: Callable[[Any], str] = field(default=_text)
    # Numbers read better right-aligned.
    right: bool = False


def table(records: Sequence[Record], columns: Sequence[Column], empty: str) -> str:
    """An aligned text table with a header line; ``empty`` when there is no record."""
    if not records:
        return empty + "\n"
    cells = [[c.header.upper() for c in columns]]
    cells += [[c.show(r[c.key]) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        padded = [
            text.rjust(width) if column.right else text.ljust(width)
            for text, width, column in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def fields(record: Record, columns: Sequence[Column]) -> str:
    """One record as ``label  value`` lines, labels aligned."""
    width = max(len(c.header) for c in columns)
    return "".join(f"{c.header.ljust(width)}  {c.show(record[c.key])}\n" for c in columns)


def write_json(out: TextIO, value: Any) -> None:
    """``value`` as indented JSON, keys in the order built, one trailing newline."""
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def qr_code(data: str, light_background: bool) -> str:
    """``data`` as a QR code drawn with block characters, for a dark or a light terminal.

    A scanner wants dark modules on a light quiet zone, so on a dark terminal the blocks
    (drawn in the light text colour) are the light modules.
    """
    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    drawn = io.StringIO()
    code.print_ascii(out=drawn, invert=not light_background)
    # qrcode draws the inverted blank as a no-break space (cp437 255); a plain one copies better.
    return drawn.getvalue().replace("\xa0", " ")
