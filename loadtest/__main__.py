"""``python -m callsight.loadtest <subcommand>``: the load tester's command line.

* ``fleet``: a simulated fleet of Android agents against a server, verified afterwards
  (``loadtest.fleet``).
* ``reports``: concurrent report callers (``loadtest.report_load``).
* ``ceilings``: the raw rates of transport, decode and insert (``loadtest.ceilings``).
* ``bench``: the standard short suite behind ``make bench`` (``loadtest.suite``).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
the modules are imported only when their subcommand runs, so one missing or broken module does
not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "fleet": (
        "callsight.loadtest.fleet",
        "simulate a fleet of Android agents streaming to a server",
    ),
    "reports": (
        "callsight.loadtest.report_load",
        "concurrent report callers, alone or beside a fleet",
    ),
    "ceilings": (
        "callsight.loadtest.ceilings",
        "raw transport, decode and insert rates on the same rows",
    ),
    "bench": (
        "callsight.loadtest.suite",
        "the standard short suite; writes loadtest/results/latest.json",
    ),
}


def _load(name: str) -> ModuleType | str:
    """The subcommand's module, or why it cannot be used."""
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but something it imports does not: a real bug
        return f"`{name}` is not available: {module_name} does not exist yet"
    missing = [f for f in ("add_arguments", "run") if not callable(getattr(module, f, None))]
    if missing:
        return f"`{name}` is not available: {module_name} lacks {', '.join(missing)}"
    return module


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser, with full flags for the subcommand named in ``argv`` (imported lazily)."""
    parser = argparse.ArgumentParser(
        prog="python -m callsight.loadtest", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    unavailable: dict[str, str] = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        loaded = _load(name)
        if isinstance(loaded, str):
            unavailable[name] = loaded
        else:
            loaded.add_arguments(command)
    return parser, unavailable


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen subcommand; returns its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, unavailable = build_parser(arguments)
    chosen = next((a for a in arguments if not a.startswith("-")), None)
    if chosen in unavailable:
        print(f"error: {unavailable[chosen]}", file=sys.stderr)
        return 2
    args = parser.parse_args(arguments)
    loaded = _load(args.command)
    if isinstance(loaded, str):
        print(f"error: {loaded}", file=sys.stderr)
        return 2
    status: int = loaded.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
