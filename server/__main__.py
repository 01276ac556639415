"""The ``callsight`` command line: ``callsight serve [--listen HOST:PORT] [--dsn DSN] ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvloop

from callsight.core.errors import ConfigError
from callsight.server import config as config_module
from callsight.server import logs
from callsight.server.app import Service


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callsight`` console script."""
    parser = argparse.ArgumentParser(prog="callsight", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        parents=[config_module.build_arg_parser()],
        help="run the gRPC server",
        description="Run the callsight gRPC server. Flags override CALLSIGHT_* variables.",
    )
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        # Let argparse print usage, help or the unknown-command error.
        parser.parse_args(args)
        return 2
    try:
        config = config_module.load(args[1:], None)
    except ConfigError as exc:
        print(f"callsight: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    uvloop.run(Service(config).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
