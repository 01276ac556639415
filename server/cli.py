"""The ``callsight`` command line: ``serve`` runs the server; the operator commands (tenant,
apikey, employee, enroll, devices, report) talk gRPC to a running one.

Each operator command makes its RPCs, then prints a table for people or, with ``--json``, JSON for
scripts. Whatever goes wrong ends in one line on stderr and a non-zero exit: 2 for a usage or
input error (nothing was sent), 1 for an RPC the server refused or could not be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import grpc
from google.protobuf.message import Message

from callsight.server import config as config_module
from callsight.server.cli_input import (
    EmployeeRow,
    parse_duration,
    parse_instant,
    parse_zone,
    read_employees,
)
from callsight.server.cli_output import (
    Column,
    duration,
    fields,
    qr_code,
    table,
    timestamp,
    write_json,
)
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    report_pb2,
    report_pb2_grpc,
)

__all__ = ["build_parser", "main"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
# ImportEmployees takes at most this many employees per call (admin.proto).
IMPORT_CHUNK = 10_000
# ListDevices' largest page: fewest round trips.
_DEVICE_PAGE = 1000
_MAX_ENROLLMENT_TTL_S = 30 * 86_400
_ROLES = {"admin": common_pb2.ROLE_ADMIN, "reports": common_pb2.ROLE_REPORTS}

_DESCRIPTION = (
    "Run the callsight server (serve), or manage a running one: tenants, API keys, employees, "
    "enrollment codes, devices and reports. Errors print one line and exit 1 (the server "
    "refused or could not be reached) or 2 (a usage error: nothing was sent)."
)

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class UsageError(Exception):
    """A command line or input the CLI cannot act on; nothing was sent. Exit status 2."""


class Failure(Exception):
    """An RPC that failed, or an operation the person called off. Exit status 1."""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (instead of the usage text) and lets main() exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Credential(enum.Enum):
    """Which secret a command sends, with the flag and variable it comes from."""

    OPERATOR = ("--operator-token", "CALLSIGHT_OPERATOR_TOKEN", "the operator token")
    API_KEY = ("--api-key", "CALLSIGHT_API_KEY", "a tenant API key")

    @property
    def flag(self) -> str:
        return self.value[0]

    @property
    def env(self) -> str:
        return self.value[1]

    @property
    def what(self) -> str:
        return self.value[2]


# --- the parser ---------------------------------------------------------------------------------


def _connection_flags(credential: Credential) -> argparse.ArgumentParser:
    """The flags every operator command takes: where the server is, how to authenticate, --json."""
    parser = _Parser(add_help=False)
    # A group of its own: help lists the command's own arguments first.
    group = parser.add_argument_group("server, credential and output")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"server address (env CALLSIGHT_TARGET; default {DEFAULT_TARGET})",
    )
    if credential is Credential.OPERATOR:
        group.add_argument(
            "--operator-token",
            metavar="TOKEN",
            help="the server's operator token (env CALLSIGHT_OPERATOR_TOKEN, which keeps it out "
            "of ps; an embedded server writes it to data/operator.token)",
        )
    else:
        group.add_argument(
            "--api-key",
            metavar="KEY",
            help="a tenant API key, csk_... (env CALLSIGHT_API_KEY, which keeps it out of ps)",
        )
    group.add_argument(
        "--tls", action="store_true", help="connect with TLS, trusting the system's CAs"
    )
    group.add_argument(
        "--ca", metavar="FILE", type=Path, help="connect with TLS, trusting this PEM CA bundle"
    )
    group.add_argument(
        "--timeout",
        metavar="DURATION",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="how long one RPC may take: seconds, or e.g. 2m (default 30s)",
    )
    group.add_argument(
        "--json", action="store_true", help="print JSON for scripts instead of a table"
    )
    return parser


def _seconds(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


Handler = Callable[["Session", argparse.Namespace], int]


def _command(
    group: Any,
    name: str,
    handler: Handler,
    credential: Credential,
    help_text: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        parents=[_connection_flags(credential)],
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, credential=credential)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole ``callsight`` command line (``serve``'s flags are read by config.load)."""
    parser = _Parser(prog="callsight", description=_DESCRIPTION, allow_abbrev=False)
    parser.add_argument(
        "-V", "--version", action="version", version=f"callsight {config_module.package_version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        parents=[_Parser(add_help=False, parents=[config_module.build_arg_parser()])],
        help="run the gRPC server",
        description="Run the callsight gRPC server. Flags override CALLSIGHT_* variables.",
    )

    tenant = commands.add_parser(
        "tenant", help="create, list or delete tenants (operator token)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(tenant, "create", _tenant_create, Credential.OPERATOR, "create a tenant")
    create.add_argument("name", metavar="NAME", help="display name of the business")
    create.add_argument(
        "--region", required=True, help="ISO 3166-1 alpha-2 region of local numbers, e.g. IN"
    )
    create.add_argument(
        "--timezone", required=True, help="IANA time zone of reports, e.g. Asia/Kolkata"
    )
    _command(tenant, "list", _tenant_list, Credential.OPERATOR, "list every tenant")
    delete = _command(
        tenant,
        "delete",
        _tenant_delete,
        Credential.OPERATOR,
        "delete a tenant and all its data for good (its data keys are destroyed first)",
    )
    delete.add_argument("tenant_id", metavar="TENANT_ID")
    delete.add_argument(
        "--yes", action="store_true", help="do not ask to type the tenant id to confirm"
    )

    apikey = commands.add_parser(
        "apikey", help="create, list or revoke the tenant's API keys"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(
        apikey, "create", _apikey_create, Credential.API_KEY, "create an API key (ADMIN key)"
    )
    create.add_argument("name", metavar="NAME", help="label of the key, e.g. crm-sync")
    create.add_argument(
        "--role",
        choices=sorted(_ROLES),
        default="reports",
        help="admin: every RPC of the tenant; reports: reports only (default reports)",
    )
    _command(apikey, "list", _apikey_list, Credential.API_KEY, "list the tenant's API keys")
    revoke = _command(
        apikey,
        "revoke",
        _apikey_revoke,
        Credential.API_KEY,
        "revoke an API key: every server process refuses it within about a second",
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's public id (apikey list)")

    employee = commands.add_parser(
        "employee", help="create, list or import the tenant's employees"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(employee, "create", _employee_create, Credential.API_KEY, "add an employee")
    create.add_argument("name", metavar="NAME", help="full name")
    create.add_argument(
        "--number", required=True, help="the employee's own phone number, any local format"
    )
    create.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="a label for report filters; repeat for more",
    )
    _command(employee, "list", _employee_list, Credential.API_KEY, "list the employees")
    imported = _command(
        employee,
        "import",
        _employee_import,
        Credential.API_KEY,
        "create the employees of a CSV file",
        epilog=(
            "The file's first line names the columns: name,number,tags (any order; tags may be\n"
            "left out). Several tags in one cell are separated by ';' or '|':\n\n"
            "  name,number,tags\n"
            '  Asha Rao,098765 43210,sales;north\n  "Kumar, Ravi",+919845012345,sales\n\n'
            f"Rows go in calls of {IMPORT_CHUNK:,}. Each refused row is printed with its line\n"
            "number; the exit status is 1 when any row was refused."
        ),
    )
    imported.add_argument("file", metavar="FILE.csv", type=Path)

    enroll = _command(
        commands,
        "enroll",
        _enroll,
        Credential.API_KEY,
        "issue a one-time code that enrolls a phone for an employee, shown with its QR code",
    )
    enroll.add_argument("employee_id", metavar="EMPLOYEE_ID")
    enroll.add_argument(
        "--ttl",
        type=_duration_arg,
        default=86_400,
        metavar="DURATION",
        help="how long the code stays valid, e.g. 2h or 7d; at most 30d (default 1d)",
    )
    enroll.add_argument(
        "--qr",
        choices=("dark", "light", "none"),
        default="dark",
        help="the terminal background the QR code is drawn for, or none (default dark)",
    )

    devices = _command(
        commands,
        "devices",
        _devices,
        Credential.API_KEY,
        "list the tenant's devices, or with --silent those that stopped syncing",
    )
    devices.add_argument(
        "--silent",
        type=_duration_arg,
        metavar="DURATION",
        help="only devices with no synced batch for this long (e.g. 24h), with their issues",
    )
    devices.add_argument(
        "--employee",
        dest="employees",
        action="append",
        default=[],
        metavar="EMPLOYEE_ID",
        help="only this employee's devices; repeat for more",
    )
    devices.add_argument("--include-revoked", action="store_true", help="also list revoked devices")

    report = commands.add_parser(
        "report", help="reports over the tenant's calls (ADMIN or REPORTS key)"
    ).add_subparsers(dest="action", required=True, metavar="REPORT")
    summary = _command(
        report, "summary", _report_summary, Credential.API_KEY, "call totals over a date range"
    )
    summary.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="DATE",
        help="first day, YYYY-MM-DD (or an ISO 8601 time), inclusive",
    )
    summary.add_argument(
        "--to",
        dest="end",
        required=True,
        metavar="DATE",
        help="day after the last, YYYY-MM-DD (or an ISO 8601 time), exclusive",
    )
    summary.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA zone the dates and local days are read in; pass the tenant's "
        "(env CALLSIGHT_TIMEZONE; default UTC)",
    )
    summary.add_argument(
        "--employee",
        dest="employees",
        action="append",
        default=[],
        metavar="EMPLOYEE_ID",
        help="only this employee's calls; repeat for more",
    )
    return parser


# --- running a command ------------------------------------------------------------------------


@dataclass
class Session:
    """A command's connection, credential and output streams."""

    target: str
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float
    credential: Credential
    credential_source: str
    as_json: bool
    env: Mapping[str, str]
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def reports(self) -> report_pb2_grpc.ReportServiceStub:
        return report_pb2_grpc.ReportServiceStub(self.channel)

    def call(
        self, rpc: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request
    ) -> Response:
        """``rpc(request)`` with the credential and timeout; a failure becomes ``Failure``."""
        try:
            return rpc(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            name = type(request).__name__.removesuffix("Request")
            raise Failure(self._explain(exc, name)) from None

    def _explain(self, error: grpc.RpcError, rpc_name: str) -> str:
        code = error.code()
        details = " ".join(str(error.details() or "").split())
        if code is grpc.StatusCode.UNAVAILABLE and _unreachable(details):
            tls = " over TLS" if "ssl" in details.lower() or "handshake" in details.lower() else ""
            return (
                f"cannot reach {self.target}{tls}: is the server running? start it with "
                "`make serve` (--target or CALLSIGHT_TARGET names another; --tls must match it)"
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"{self.target} did not answer {rpc_name} within {self.timeout_s:g}s "
                "(--timeout gives it longer)"
            )
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return (
                f"UNIMPLEMENTED: the server at {self.target} does not offer {rpc_name} yet; "
                "it needs a newer callsight"
            )
        line = f"{code.name}: {details}"
        if code is grpc.StatusCode.UNAUTHENTICATED:
            line += f" (is {self.credential_source} {self.credential.what} of this server?)"
        elif code is grpc.StatusCode.PERMISSION_DENIED:
            needs = (
                "the operator token"
                if self.credential is Credential.OPERATOR
                else "an ADMIN key (`apikey create NAME --role admin`)"
            )
            line += f" (is {self.credential_source} {needs}?)"
        return line


def _unreachable(details: str) -> bool:
    lowered = details.lower()
    return any(
        sign in lowered
        for sign in ("failed to connect", "connection refused", "dns resolution", "socket closed")
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Runs one operator command; returns the exit status (0 ok, 1 RPC failure, 2 usage)."""
    environ = os.environ if env is None else env
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        with _open_session(args, environ, stdin or sys.stdin, out, err) as session:
            status: int = args.handler(session, args)
        return status
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        print(f"callsight: {exc}", file=err)
        return 2
    except Failure as exc:
        print(f"callsight: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        print("callsight: interrupted", file=err)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): nothing left to say to anyone.
        return 1
    except Exception as exc:  # a person gets one line, never a traceback
        print(f"callsight: unexpected {type(exc).__name__}: {exc} (please report it)", file=err)
        return 1


@contextlib.contextmanager
def _open_session(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
) -> Iterator[Session]:
    """The channel and credential a command's flags and environment name, closed after it."""
    credential: Credential = args.credential
    flag_value = getattr(args, credential.flag.lstrip("-").replace("-", "_"))
    secret = (flag_value or env.get(credential.env, "")).strip()
    if not secret:
        hint = (
            " (an embedded server writes it to data/operator.token)"
            if credential is Credential.OPERATOR
            else ""
        )
        command = f"{args.command} {getattr(args, 'action', None) or ''}".strip()
        raise UsageError(
            f"{command} needs {credential.what}: set {credential.env}{hint} "
            f"or pass {credential.flag}"
        )
    source = credential.flag if flag_value else credential.env
    if not all("!" <= c <= "~" for c in secret):
        # gRPC would refuse the header with an INTERNAL error (and log a C-level line).
        raise UsageError(f"{source} holds spaces, line breaks or other characters no token has")
    target = args.target or env.get("CALLSIGHT_TARGET") or DEFAULT_TARGET
    channel = _channel(target, args.tls, args.ca)
    try:
        yield Session(
            target=target,
            channel=channel,
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout_s=args.timeout,
            credential=credential,
            credential_source=source,
            as_json=args.json,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
    finally:
        channel.close()


def _channel(target: str, tls: bool, ca: Path | None) -> grpc.Channel:
    if ca is None and not tls:
        return grpc.insecure_channel(target)
    roots = None
    if ca is not None:
        try:
            roots = ca.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the CA file {ca}: {exc.strerror or exc}") from None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def _say(session: Session, text: str) -> None:
    session.stdout.write(text)


# --- tenants ----------------------------------------------------------------------------------


def _tenant_create(s: Session, args: argparse.Namespace) -> int:
    response = s.call(
        s.admin.CreateTenant,
        admin_pb2.CreateTenantRequest(
            name=args.name, default_region=args.region, timezone=args.timezone
        ),
    )
    record = {"tenant_id": response.tenant_id, "admin_api_key": response.admin_api_key}
    if s.as_json:
        write_json(s.stdout, record)
        return 0
    _say(s, fields(record, [Column("tenant_id", "tenant"), Column("admin_api_key", "admin key")]))
    _say(s, "Store the admin key now: it is shown only once. Use it as CALLSIGHT_API_KEY.\n")
    return 0


_TENANT_COLUMNS = [
    Column("tenant_id", "tenant"),
    Column("name", "name"),
    Column("default_region", "region"),
    Column("timezone", "timezone"),
    Column("created_at_ms", "created", timestamp),
    Column("employees", "employees", right=True),
    Column("devices", "devices", right=True),
]


def _tenant_list(s: Session, args: argparse.Namespace) -> int:
    response = s.call(s.admin.ListTenants, admin_pb2.ListTenantsRequest())
    records = [
        {
            "tenant_id": t.tenant_id,
            "name": t.name,
            "default_region": t.default_region,
            "timezone": t.timezone,
            "created_at_ms": t.created_at_ms,
            "employees": t.employees,
            "devices": t.devices,
        }
        for t in response.tenants
    ]
    _records(
        s, records, _TENANT_COLUMNS, "no tenants yet: create one with `callsight tenant create`"
    )
    return 0


def _tenant_delete(s: Session, args: argparse.Namespace) -> int:
    tenant_id: str = args.tenant_id
    if not args.yes:
        s.stderr.write(
            f"This deletes tenant {tenant_id} and all its data for good.\n"
            f"Type the tenant id to confirm: "
        )
        s.stderr.flush()
        answer = s.stdin.readline()
        if not answer:
            raise Failure(
                "not deleted: no confirmation on standard input; "
                "pass --yes to delete without asking"
            )
        if answer.strip() != tenant_id:
            raise Failure("not deleted: what was typed is not the tenant id")
    response = s.call(
        s.admin.DeleteTenant,
        admin_pb2.DeleteTenantRequest(tenant_id=tenant_id, confirm_tenant_id=tenant_id),
    )
    if s.as_json:
        write_json(s.stdout, {"tenant_id": tenant_id, "keys_destroyed": response.keys_destroyed})
    else:
        _say(
            s,
            f"tenant {tenant_id} deleted ({response.keys_destroyed} data keys destroyed)\n",
        )
    return 0


# --- API keys ---------------------------------------------------------------------------------


def _role(value: int) -> str:
    return common_pb2.Role.Name(value).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def _apikey_create(s: Session, args: argparse.Namespace) -> int:
    response = s.call(
        s.admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(name=args.name, role=_ROLES[args.role])
    )
    record = {"key_id": response.key_id, "api_key": response.api_key, "role": args.role}
    if s.as_json:
        write_json(s.stdout, record)
        return 0
    columns = [Column("key_id", "key id"), Column("role", "role"), Column("api_key", "API key")]
    _say(s, fields(record, columns))
    _say(s, "Store the API key now: it is shown only once.\n")
    return 0


_KEY_COLUMNS = [
    Column("key_id", "key id"),
    Column("name", "name"),
    Column("role", "role"),
    Column("created_at_ms", "created", timestamp),
    Column("last_used_at_ms", "last used", timestamp),
    Column("revoked_at_ms", "revoked", timestamp),
]


def _apikey_list(s: Session, args: argparse.Namespace) -> int:
    response = s.call(s.admin.ListApiKeys, admin_pb2.ListApiKeysRequest())
    records = [
        {
            "key_id": k.key_id,
            "name": k.name,
            "role": _role(k.role),
            "created_at_ms": k.created_at_ms,
            "last_used_at_ms": k.last_used_at_ms,
            "revoked_at_ms": k.revoked_at_ms,
        }
        for k in response.keys
    ]
    _records(s, records, _KEY_COLUMNS, "no API keys")
    return 0


def _apikey_revoke(s: Session, args: argparse.Namespace) -> int:
    s.call(s.admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(key_id=args.key_id))
    if s.as_json:
        write_json(s.stdout, {"key_id": args.key_id, "revoked": True})
    else:
        _say(s, f"API key {args.key_id} revoked\n")
    return 0


# --- employees --------------------------------------------------------------------------------


def _employee_create(s: Session, args: argparse.Namespace) -> int:
    response = s.call(
        s.admin.CreateEmployee,
        admin_pb2.CreateEmployeeRequest(name=args.name, number=args.number, tags=args.tags),
    )
    if s.as_json:
        write_json(s.stdout, {"employee_id": response.employee_id})
    else:
        _say(s, f"employee {response.employee_id} created\n")
    return 0


_EMPLOYEE_COLUMNS = [
    Column("employee_id", "employee"),
    Column("name", "name"),
    Column("number", "number"),
    Column("tags", "tags"),
    Column("active", "active"),
    Column("devices", "devices", lambda ds: str(sum(not d["revoked"] for d in ds)), right=True),
]


def _employee_list(s: Session, args: argparse.Namespace) -> int:
    response = s.call(s.admin.ListEmployees, admin_pb2.ListEmployeesRequest())
    records = [
        {
            "employee_id": e.employee_id,
            "name": e.name,
            "number": e.number,
            "tags": list(e.tags),
            "active": e.active,
            "devices": [
                {
                    "device_id": d.device_id,
                    "model": d.model,
                    "manufacturer": d.manufacturer,
                    "app_version": d.app_version,
                    "registered_at_ms": d.registered_at_ms,
                    "revoked": d.revoked,
                }
                for d in e.devices
            ],
        }
        for e in response.employees
    ]
    _records(
        s, records, _EMPLOYEE_COLUMNS, "no employees yet: add one with `callsight employee create`"
    )
    return 0


def _employee_import(s: Session, args: argparse.Namespace) -> int:
    try:
        rows = read_employees(args.file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not rows:
        raise UsageError(f"{args.file} has no employees after its header line")
    created: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for start in range(0, len(rows), IMPORT_CHUNK):
        chunk = rows[start : start + IMPORT_CHUNK]
        try:
            response = s.call(s.admin.ImportEmployees, _import_request(chunk))
        except Failure as exc:
            if not start:
                raise
            raise Failure(
                f"{exc} (lines up to {rows[start - 1].line} were sent before: "
                f"{len(created)} employees created, {len(refused)} refused)"
            ) from None
        for row, outcome in zip(chunk, response.employees, strict=True):
            record = {"line": row.line, "name": row.name, "number": row.number}
            if outcome.error:
                refused.append(record | {"error": outcome.error})
            else:
                created.append(record | {"employee_id": outcome.employee_id})
    if s.as_json:
        write_json(s.stdout, {"created": len(created), "employees": created, "refused": refused})
    else:
        _say(s, f"created {len(created)} of {len(rows)} employees from {args.file}\n")
        if refused:
            _say(s, f"refused {len(refused)}:\n")
            columns = [
                Column("line", "line", right=True),
                Column("name", "name"),
                Column("number", "number"),
                Column("error", "error"),
            ]
            _say(s, table(refused, columns, ""))
    return 1 if refused else 0


def _import_request(rows: Sequence[EmployeeRow]) -> admin_pb2.ImportEmployeesRequest:
    return admin_pb2.ImportEmployeesRequest(
        employees=[
            admin_pb2.CreateEmployeeRequest(name=r.name, number=r.number, tags=r.tags) for r in rows
        ]
    )


def _enroll(s: Session, args: argparse.Namespace) -> int:
    if args.ttl > _MAX_ENROLLMENT_TTL_S:
        raise UsageError("--ttl is at most 30d")
    response = s.call(
        s.admin.CreateEnrollment,
        admin_pb2.CreateEnrollmentRequest(employee_id=args.employee_id, ttl_s=args.ttl),
    )
    record = {
        "employee_id": args.employee_id,
        "enrollment_code": response.enrollment_code,
        "expires_at_ms": response.expires_at_ms,
    }
    if s.as_json:
        write_json(s.stdout, record)
        return 0
    columns = [
        Column("employee_id", "employee"),
        Column("enrollment_code", "code"),
        Column("expires_at_ms", "expires", timestamp),
    ]
    _say(s, fields(record, columns))
    if args.qr != "none":
        _say(s, "\n" + qr_code(response.enrollment_code, light_background=args.qr == "light"))
    _say(s, "Scan the QR code or type the code in the callsight app; it enrolls one phone once.\n")
    return 0


# --- devices ----------------------------------------------------------------------------------


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    name: str = enum_type.Name(value)
    return "-" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix).lower()


def _device_record(d: admin_pb2.DeviceStatus) -> dict[str, Any]:
    return {
        "device_id": d.device.device_id,
        "employee_id": d.employee_id,
        "model": d.device.model,
        "manufacturer": d.device.manufacturer,
        "app_version": d.app_version,
        "android_version": d.android_version,
        "registered_at_ms": d.device.registered_at_ms,
        "last_seen_at_ms": d.last_seen_at_ms,
        "last_sync_at_ms": d.last_sync_at_ms,
        "last_batch_result": _enum_name(
            ingest_pb2.UploadResult, d.last_batch_result, "UPLOAD_RESULT_"
        ),
        "battery_pct": d.battery_pct if d.battery_pct >= 0 else None,
        "network": _enum_name(ingest_pb2.NetworkType, d.network, "NETWORK_TYPE_"),
        "telemetry_at_ms": d.telemetry_at_ms,
        "revoked": d.device.revoked,
    }


def _battery(pct: int | None) -> str:
    return "-" if pct is None else f"{pct}%"


_DEVICE_COLUMNS = [
    Column("device_id", "device"),
    Column("employee_id", "employee"),
    Column("model", "model"),
    Column("app_version", "app"),
    Column("android_version", "android"),
    Column("last_seen_at_ms", "last seen", timestamp),
    Column("last_sync_at_ms", "last sync", timestamp),
    Column("last_batch_result", "last batch"),
    Column("battery_pct", "battery", _battery, right=True),
    Column("network", "network"),
]


def _devices(s: Session, args: argparse.Namespace) -> int:
    if args.silent is not None:
        return _silent_devices(s, args)
    records: list[dict[str, Any]] = []
    token = ""
    while True:
        page = s.call(
            s.admin.ListDevices,
            admin_pb2.ListDevicesRequest(
                employee_ids=args.employees,
                include_revoked=args.include_revoked,
                page_size=_DEVICE_PAGE,
                page_token=token,
            ),
        )
        records += [_device_record(d) for d in page.devices]
        token = page.next_page_token
        if not token:
            break
    columns = _DEVICE_COLUMNS + ([Column("revoked", "revoked")] if args.include_revoked else [])
    _records(s, records, columns, "no devices: enroll one with `callsight enroll EMPLOYEE_ID`")
    return 0


def _silent_devices(s: Session, args: argparse.Namespace) -> int:
    if args.silent > 0xFFFF_FFFF:
        raise UsageError("--silent is too long: give at most a few years, e.g. 365d")
    response = s.call(s.admin.DeviceHealth, admin_pb2.DeviceHealthRequest(silent_for_s=args.silent))
    wanted = set(args.employees)
    records = [
        _device_record(entry.status)
        | {"issues": [_enum_name(admin_pb2.HealthIssue, i, "HEALTH_ISSUE_") for i in entry.issues]}
        for entry in response.devices
        if admin_pb2.HEALTH_ISSUE_SILENT in entry.issues
        and (not wanted or entry.status.employee_id in wanted)
    ]
    columns = _DEVICE_COLUMNS + [Column("issues", "issues")]
    _records(s, records, columns, f"no device has been silent for {duration(args.silent)} or more")
    return 0


# --- reports ----------------------------------------------------------------------------------

# The Summary fields in the order a person reads them, with their labels; *_s are seconds.
_SUMMARY_FIELDS = [
    ("total_calls", "calls"),
    ("incoming_calls", "incoming"),
    ("outgoing_calls", "outgoing"),
    ("missed_calls", "missed"),
    ("rejected_calls", "rejected"),
    ("connected_calls", "connected"),
    ("never_attended_calls", "never attended"),
    ("not_picked_by_client_calls", "not picked by client"),
    ("unique_clients", "unique clients"),
    ("total_duration_s", "talk time"),
    ("incoming_duration_s", "incoming talk time"),
    ("outgoing_duration_s", "outgoing talk time"),
    ("working_seconds", "working time"),
]


def _report_summary(s: Session, args: argparse.Namespace) -> int:
    zone_name = args.timezone or s.env.get("CALLSIGHT_TIMEZONE") or "UTC"
    try:
        zone = parse_zone(zone_name)
        start, end = parse_instant(args.start, zone), parse_instant(args.end, zone)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if end <= start:
        raise UsageError(f"--to ({args.end}) must be after --from ({args.start})")
    request = report_pb2.CallSummaryRequest(
        filter=report_pb2.ReportFilter(
            from_ms=start, to_ms=end, timezone=zone_name, employee_ids=args.employees
        )
    )
    summary = s.call(s.reports.CallSummary, request).summary
    totals = {name: getattr(summary, name) for name, _ in _SUMMARY_FIELDS}
    if s.as_json:
        write_json(
            s.stdout, {"from_ms": start, "to_ms": end, "timezone": zone_name, "summary": totals}
        )
        return 0
    _say(s, f"calls from {args.start} to {args.end} ({zone_name})\n")
    columns = [
        Column(name, label, duration if name.endswith("_s") or name == "working_seconds" else str)
        for name, label in _SUMMARY_FIELDS
    ]
    _say(s, fields(totals, columns))
    return 0


def _records(
    s: Session, records: list[dict[str, Any]], columns: Sequence[Column], empty: str
) -> None:
    if s.as_json:
        write_json(s.stdout, records)
    else:
        _say(s, table(records, columns, empty))
