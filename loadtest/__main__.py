"""``python -m callsight.loadtest <subcommand>``: the load tester's command line.

Subcommands: ``fleet`` (``loadtest.fleet``, run by ``loadtest.suite``), ``reports``
(``loadtest.report_load``), ``ceilings`` (``loadtest.ceilings``), ``abuse`` (``loadtest.abuse``),
``export`` and ``watch`` (``loadtest.export_load``), ``device-health``
(``loadtest.device_health``), ``bench`` (``loadtest.suite``).
Modules are imported only when their subcommand runs: ``reports`` needs nothing but the contract.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

# subcommand -> (module:function adding its flags, module:function running it, one-line help)
SUBCOMMANDS = {
    "fleet": (
        "callsight.loadtest.fleet:add_arguments",
        "callsight.loadtest.suite:run_fleet_command",
        "simulate a fleet of Android agents streaming to a server",
    ),
    "reports": (
        "callsight.loadtest.report_load:add_arguments",
        "callsight.loadtest.report_load:run",
        "concurrent report callers, alone or beside a fleet",
    ),
    "ceilings": (
        "callsight.loadtest.ceilings:add_arguments",
        "callsight.loadtest.ceilings:run",
        "raw transport, decode, encode and insert rates on the same rows",
    ),
    "abuse": (
        "callsight.loadtest.abuse:add_arguments",
        "callsight.loadtest.abuse:run",
        "replay resource attacks against a server; each bound and figure",
    ),
    "export": (
        "callsight.loadtest.export_load:add_export_arguments",
        "callsight.loadtest.export_load:run",
        "load calls through ingest, then time ExportCalls in Arrow and CSV (rows/s)",
    ),
    "watch": (
        "callsight.loadtest.export_load:add_watch_arguments",
        "callsight.loadtest.export_load:run_watch_command",
        "WatchSummary streams while devices upload: ack -> update staleness",
    ),
    "device-health": (
        "callsight.loadtest.device_health:add_arguments",
        "callsight.loadtest.device_health:run",
        "DeviceHealth over a fleet's telemetry history: latest-sample table vs argMax",
    ),
    "bench": (
        "callsight.loadtest.suite:add_arguments",
        "callsight.loadtest.suite:run",
        "the standard short suite; writes loadtest/results/latest.json",
    ),
}


def _function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser, with full flags for the subcommand named in ``argv`` (imported lazily)."""
    parser = argparse.ArgumentParser(
        prog="python -m callsight.loadtest", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (flags, _, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _function(flags)(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen subcommand; returns its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(arguments).parse_args(arguments)
    status: int = _function(SUBCOMMANDS[args.command][1])(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
