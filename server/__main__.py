"""The ``callsight`` command line: ``callsight serve [--listen HOST:PORT] [--dsn DSN] ...`` runs the
server; the operator commands (``callsight tenant|apikey|employee|enroll|devices|report``) are in
``server/cli.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from callsight.core.errors import ConfigError
from callsight.server import cli, logs
from callsight.server import config as config_module
from callsight.server.preflight import StartupError, preflight


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callsight`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        # The operator commands, and usage, help or an unknown command's error.
        return cli.main(args)
    try:
        config = config_module.load(args[1:], None)
    except ConfigError as exc:
        print(f"callsight: {exc}", file=sys.stderr)
        return 2
    try:
        lock = preflight(config)
    except StartupError as exc:
        print(f"callsight: {exc}", file=sys.stderr)
        return 2
    # Imported here so that the operator commands start without loading ClickHouse.
    import uvloop

    from callsight.server.app import Service

    logs.configure(config.log_level)
    try:
        uvloop.run(Service(config).run())
    except StartupError as exc:
        print(f"callsight: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
