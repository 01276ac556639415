"""SQL fragments that carry their own bound parameters.

A report query is put together from fragments (the filtered calls, the keys of a page, the runs
of a rollup), each binding the parameters its text names. Putting fragments together merges
their parameters; a name bound to two different values is refused, so no fragment ever reads a
value another fragment bound for itself. The same name bound to the same value is one parameter
(two reads of the filtered calls of one filter share ``{tenant:String}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from string import Template
from types import MappingProxyType
from typing import Any


class ParameterClash(ValueError):
    """Two fragments bind one parameter name to different values: a bug in the query's code."""


def merged(*bindings: Mapping[str, Any]) -> dict[str, Any]:
    """The union of ``bindings``; a name bound to two different values raises ParameterClash."""
    out: dict[str, Any] = {}
    for binding in bindings:
        for name, value in binding.items():
            if name in out and out[name] != value:
                raise ParameterClash(
                    f"query parameter {name!r} is bound to {out[name]!r} and to {value!r}"
                )
            out[name] = value
    return out


@dataclass(frozen=True)
class Sql:
    """A piece of SQL and the values of the ``{name:Type}`` parameters its text uses."""

    text: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A copy behind a read-only view: a fragment never changes once made.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def bind(self, **params: Any) -> Sql:
        """This fragment with more parameters bound."""
        return Sql(self.text, merged(self.params, params))

    def __add__(self, other: Sql | str) -> Sql:
        if isinstance(other, str):
            return Sql(self.text + other, self.params)
        return Sql(self.text + other.text, merged(self.params, other.params))

    def __radd__(self, other: str) -> Sql:
        return Sql(other + self.text, self.params)


def compose(template: str, /, **parts: Sql | str) -> Sql:
    """``template`` with each ``$name`` replaced by ``parts[name]``, their parameters merged.

    ``{name:Type}`` parameters in the template are left alone; bind their values with
    ``.bind()``. A ``$name`` without a part raises KeyError.
    """
    texts = {name: part if isinstance(part, str) else part.text for name, part in parts.items()}
    fragments = [part.params for part in parts.values() if isinstance(part, Sql)]
    return Sql(Template(template).substitute(texts), merged(*fragments))


def joined(separator: str, parts: Iterable[Sql | str]) -> Sql:
    """``parts`` one after the other with ``separator`` between them, parameters merged."""
    pieces = list(parts)
    texts = [part if isinstance(part, str) else part.text for part in pieces]
    return Sql(separator.join(texts), merged(*(p.params for p in pieces if isinstance(p, Sql))))
