"""The names of the tables report SQL reads, so a benchmark can point a report at copies.

Identifiers cannot be bound as query parameters, so every name is validated once, when a
``Tables`` is made, and only then formatted into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from callsight.core.errors import InvalidArgument

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Tables:
    """Table names for the report queries; the defaults are the tables the migrations make."""

    calls: str = "calls"
    parties: str = "parties"
    call_rollups: str = "call_rollups"
    call_rollup_runs: str = "call_rollup_runs"
    leads: str = "leads"
    excluded_numbers: str = "excluded_numbers"

    def __post_init__(self) -> None:
        for field in fields(self):
            name = getattr(self, field.name)
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise InvalidArgument(
                    f"table name {name!r} for {field.name} must match {_IDENTIFIER.pattern}"
                )


DEFAULT_TABLES = Tables()
