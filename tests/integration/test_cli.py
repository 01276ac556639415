"""The operator CLI (``callsight tenant|apikey|employee|enroll|devices|report``) against a real
server: what it prints, as a table and as JSON, and its exit status and one-line errors.

The CLI is synchronous, so it runs on a worker thread while the session's server answers on the
event loop; one test runs the installed console script in a subprocess.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from callsight.server import cli
from callsight.server.app import Service
from callsight.server.cli_output import qr_code
from callsight.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import OPERATOR_TOKEN, make_config
from tests.integration.calls import BASE_MS, batch, call
from tests.integration.helpers import auth, enroll, new_employee, new_tenant

ONE_LINE = re.compile(r"callsight: [^\n]+\n")


@dataclass
class Ran:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.status == 0, self.err
        return json.loads(self.out)

    def failed(self, status: int = 1) -> str:
        """The one error line of a command that had to fail with ``status``."""
        assert (self.status, self.out) == (status, ""), (self.status, self.out, self.err)
        assert ONE_LINE.fullmatch(self.err), self.err
        return self.err


async def callsight(
    target: Service | str, *argv: str, key: str | None = None, stdin: str = "", **env: str
) -> Ran:
    """Runs ``callsight *argv`` in-process against ``target`` with ``key`` as the API key."""
    address = target if isinstance(target, str) else f"127.0.0.1:{target.port}"
    environ = {"CALLSIGHT_TARGET": address, "CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN} | env
    if key is not None:
        environ["CALLSIGHT_API_KEY"] = key
    out, err = io.StringIO(), io.StringIO()
    status = await asyncio.to_thread(
        cli.main, list(argv), env=environ, stdin=io.StringIO(stdin), stdout=out, stderr=err
    )
    return Ran(status, out.getvalue(), err.getvalue())


def _field(text: str, label: str) -> str:
    match = re.search(rf"^{label} +(\S+)$", text, re.MULTILINE)
    assert match, text
    return match.group(1)


# --- tenants ----------------------------------------------------------------------------------


async def test_tenant_create_prints_the_tenant_and_its_admin_key(service: Service) -> None:
    name = f"Acme {secrets.token_hex(3)}"
    ran = await callsight(
        service, "tenant", "create", name, "--region", "IN", "--timezone", "Asia/Kolkata"
    )
    assert ran.status == 0, ran.err
    tenant_id, key = _field(ran.out, "tenant"), _field(ran.out, "admin key")
    assert key.startswith("csk_") and "shown only once" in ran.out
    # The key is the new tenant's ADMIN key: it can add employees there.
    created = await callsight(
        service, "employee", "create", "Asha", "--number", "098765 43210", key=key
    )
    assert created.status == 0, created.err

    as_json = await callsight(
        service, "tenant", "create", name, "--region", "US", "--timezone", "UTC", "--json"
    )
    assert set(as_json.json()) == {"tenant_id", "admin_api_key"}
    assert as_json.json()["tenant_id"] != tenant_id


async def test_tenant_create_errors(service: Service) -> None:
    bad = await callsight(
        service, "tenant", "create", "Acme", "--region", "ZZ", "--timezone", "UTC"
    )
    assert bad.failed().startswith("callsight: INVALID_ARGUMENT: ")
    assert "ZZ" in bad.err

    other = await new_tenant_key(service)
    as_key = await callsight(
        service,
        "tenant",
        "create",
        "Acme",
        "--region",
        "IN",
        "--timezone",
        "UTC",
        CALLSIGHT_OPERATOR_TOKEN=other,
    )
    denied = as_key.failed()
    assert denied.startswith("callsight: PERMISSION_DENIED: ")
    assert denied.endswith(" (is CALLSIGHT_OPERATOR_TOKEN the operator token?)\n")
    wrong = await callsight(
        service,
        "tenant",
        "list",
        "--operator-token",
        "not-the-token",
    )
    assert wrong.failed() == (
        "callsight: UNAUTHENTICATED: unknown token "
        "(is --operator-token the operator token of this server?)\n"
    )


async def new_tenant_key(service: Service) -> str:
    ran = await callsight(
        service, "tenant", "create", "Other", "--region", "IN", "--timezone", "UTC", "--json"
    )
    key: str = ran.json()["admin_api_key"]
    return key


async def test_tenant_list_and_delete(service: Service, channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    await new_employee(channel, tenant, "Asha", "+91 98450 12345")
    listed = {
        t["tenant_id"]: t for t in (await callsight(service, "tenant", "list", "--json")).json()
    }
    mine = listed[tenant.tenant_id]
    assert (mine["default_region"], mine["timezone"], mine["employees"]) == (
        "IN",
        "Asia/Kolkata",
        1,
    )
    assert mine["created_at_ms"] > 0
    table = await callsight(service, "tenant", "list")
    assert table.status == 0, table.err
    assert table.out.startswith("TENANT ")
    assert any(line.startswith(tenant.tenant_id) for line in table.out.splitlines())

    # Without --yes the tenant id must be typed; anything else deletes nothing.
    slip = await callsight(service, "tenant", "delete", tenant.tenant_id, stdin="yes\n")
    assert slip.status == 1 and slip.out == ""
    assert slip.err.endswith("callsight: not deleted: what was typed is not the tenant id\n")
    silent = await callsight(service, "tenant", "delete", tenant.tenant_id)
    assert "no confirmation on standard input; pass --yes" in silent.err and silent.status == 1
    assert (await callsight(service, "employee", "list", key=tenant.admin_key)).status == 0
    with_key = await callsight(
        service, "tenant", "delete", tenant.tenant_id, "--yes",
        CALLSIGHT_OPERATOR_TOKEN=tenant.admin_key,
    )  # fmt: skip
    assert "PERMISSION_DENIED" in with_key.failed()

    deleted = await callsight(
        service, "tenant", "delete", tenant.tenant_id, stdin=tenant.tenant_id + "\n"
    )
    assert deleted.status == 0, deleted.err
    assert deleted.out.startswith(f"tenant {tenant.tenant_id} deleted (")
    refused = await callsight(service, "employee", "list", key=tenant.admin_key)
    assert refused.failed().startswith("callsight: UNAUTHENTICATED: unknown or revoked API key")
    listed_after = (await callsight(service, "tenant", "list", "--json")).json()
    assert tenant.tenant_id not in {t["tenant_id"] for t in listed_after}
    again = await callsight(service, "tenant", "delete", tenant.tenant_id, "--yes", "--json")
    assert again.failed().startswith("callsight: NOT_FOUND: ")


# --- API keys ---------------------------------------------------------------------------------


async def test_apikey_create_list_and_revoke(service: Service, channel: grpc.aio.Channel) -> None:
    tenant, other = await new_tenant(channel), await new_tenant(channel)
    created = await callsight(
        service, "apikey", "create", "dashboard", "--role", "reports", key=tenant.admin_key
    )
    assert created.status == 0, created.err
    key_id, secret = _field(created.out, "key id"), _field(created.out, "API key")
    assert _field(created.out, "role") == "reports" and secret.startswith("csk_")

    listed = await callsight(service, "apikey", "list", "--json", key=tenant.admin_key)
    keys = {k["key_id"]: k for k in listed.json()}
    assert len(keys) == 2 and keys[key_id]["name"] == "dashboard"
    assert {k["role"] for k in keys.values()} == {"admin", "reports"}
    assert keys[key_id]["revoked_at_ms"] == 0 and keys[key_id]["created_at_ms"] > 0
    table = await callsight(service, "apikey", "list", key=tenant.admin_key)
    assert secret not in table.out + listed.out and tenant.admin_key not in table.out
    assert re.search(rf"^{key_id} +dashboard +reports ", table.out, re.MULTILINE), table.out

    # A REPORTS key reads reports but is not an ADMIN key.
    summary = await callsight(
        service, "report", "summary", "--from", "2026-01-01", "--to", "2026-02-01", key=secret
    )
    assert summary.status == 0, summary.err
    denied = await callsight(service, "employee", "list", key=secret)
    assert denied.failed() == (
        "callsight: PERMISSION_DENIED: this RPC needs a tenant API key with role ROLE_ADMIN "
        "(is CALLSIGHT_API_KEY an ADMIN key (`apikey create NAME --role admin`)?)\n"
    )

    # Another tenant's admin can neither see nor revoke the key.
    theirs = await callsight(service, "apikey", "list", "--json", key=other.admin_key)
    assert key_id not in {k["key_id"] for k in theirs.json()}
    foreign = await callsight(service, "apikey", "revoke", key_id, key=other.admin_key)
    assert foreign.failed().startswith("callsight: NOT_FOUND: ")

    revoked = await callsight(service, "apikey", "revoke", key_id, key=tenant.admin_key)
    assert (revoked.status, revoked.out) == (0, f"API key {key_id} revoked\n"), revoked.err
    refused = await callsight(service, "report", "summary", "--from", "2026-01-01",
                              "--to", "2026-02-01", key=secret)  # fmt: skip
    assert refused.failed().startswith("callsight: UNAUTHENTICATED: unknown or revoked API key")
    after = {k["key_id"]: k for k in (await callsight(
        service, "apikey", "list", "--json", key=tenant.admin_key)).json()}  # fmt: skip
    assert after[key_id]["revoked_at_ms"] > 0
    unknown = await callsight(service, "apikey", "revoke", "nope", key=tenant.admin_key)
    assert unknown.failed().startswith("callsight: NOT_FOUND: ")


# --- employees --------------------------------------------------------------------------------


async def test_employee_create_and_list(service: Service, channel: grpc.aio.Channel) -> None:
    tenant, other = await new_tenant(channel), await new_tenant(channel)
    created = await callsight(
        service, "employee", "create", "Asha Rao", "--number", "098765 43210",
        "--tag", "sales", "--tag", "north", key=tenant.admin_key,
    )  # fmt: skip
    assert created.status == 0, created.err
    employee_id = re.fullmatch(r"employee (\S+) created\n", created.out).group(1)  # type: ignore[union-attr]

    table = await callsight(service, "employee", "list", key=tenant.admin_key)
    assert table.out.splitlines()[0].split() == [
        "EMPLOYEE", "NAME", "NUMBER", "TAGS", "ACTIVE", "DEVICES"
    ]  # fmt: skip
    assert re.search(
        rf"^{employee_id} +Asha Rao +\+919876543210 +north, sales +yes +0$", table.out, re.M
    ), table.out
    (row,) = (await callsight(service, "employee", "list", "--json", key=tenant.admin_key)).json()
    assert row == {
        "employee_id": employee_id,
        "name": "Asha Rao",
        "number": "+919876543210",
        "tags": ["north", "sales"],
        "active": True,
        "devices": [],
    }

    bad = await callsight(
        service, "employee", "create", "X", "--number", "12", key=tenant.admin_key
    )
    assert bad.failed().startswith("callsight: INVALID_ARGUMENT: ")
    twice = await callsight(
        service, "employee", "create", "Asha 2", "--number", "+919876543210", key=tenant.admin_key
    )
    assert twice.failed().startswith("callsight: ALREADY_EXISTS: ")
    empty = await callsight(service, "employee", "list", key=other.admin_key)
    assert empty.out == "no employees yet: add one with `callsight employee create`\n"


async def test_employee_import_reports_each_refused_row_by_line(
    service: Service, channel: grpc.aio.Channel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await new_tenant(channel)
    await new_employee(channel, tenant, "Existing", "+91 98450 00001")
    staff = tmp_path / "staff.csv"
    staff.write_text(
        "name,number,tags\n"
        "Asha Rao,098765 43210,sales;north\n"
        "\n"
        "Taken,+919845000001,\n"
        '"Kumar, Ravi",+91 98450 12345,sales|south\n'
        "Bad Number,12,\n"
        "Lee,098765 43211,\n"
    )
    # Two rows a call: the line numbers must survive the chunking.
    monkeypatch.setattr(cli, "IMPORT_CHUNK", 2)
    ran = await callsight(service, "employee", "import", str(staff), key=tenant.admin_key)
    assert ran.status == 1, ran.err
    lines = ran.out.splitlines()
    assert lines[0] == f"created 3 of 5 employees from {staff}"
    assert lines[1] == "refused 2:"
    assert lines[2].split() == ["LINE", "NAME", "NUMBER", "ERROR"]
    assert re.match(r" *4 +Taken +\+919845000001 +\S", lines[3]), lines[3]
    assert re.match(r" *6 +Bad Number +12 +\S", lines[4]), lines[4]
    assert len(lines) == 5

    employees = (
        await callsight(service, "employee", "list", "--json", key=tenant.admin_key)
    ).json()
    by_name = {e["name"]: e for e in employees}
    assert set(by_name) == {"Existing", "Asha Rao", "Kumar, Ravi", "Lee"}
    assert by_name["Kumar, Ravi"]["tags"] == ["sales", "south"]

    more = tmp_path / "more.csv"
    more.write_text("number,name\n+91 98450 20000,Meera\n")
    as_json = await callsight(
        service, "employee", "import", str(more), "--json", key=tenant.admin_key
    )
    result = as_json.json()
    assert (result["created"], result["refused"]) == (1, [])
    assert result["employees"][0]["line"] == 2 and result["employees"][0]["employee_id"]


# --- enrollment -------------------------------------------------------------------------------


async def test_enroll_prints_a_code_and_its_qr_code_that_register_a_phone(
    service: Service, channel: grpc.aio.Channel
) -> None:
    tenant, other = await new_tenant(channel), await new_tenant(channel)
    employee_id = await new_employee(channel, tenant, "Asha", "+91 98450 12345")
    ran = await callsight(service, "enroll", employee_id, key=tenant.admin_key)
    assert ran.status == 0, ran.err
    code = _field(ran.out, "code")
    assert code.startswith("cse_")
    assert qr_code(code, light_background=False) in ran.out
    assert "it enrolls one phone once" in ran.out
    registered = await ingest_pb2_grpc.IngestServiceStub(channel).RegisterDevice(
        ingest_pb2.RegisterDeviceRequest(
            enrollment_code=code, device=ingest_pb2.DeviceInfo(model="Pixel 8", sdk_int=34)
        )
    )
    assert registered.employee_id == employee_id

    before = int(time.time() * 1000)
    as_json = (
        await callsight(
            service, "enroll", employee_id, "--ttl", "2h", "--json", key=tenant.admin_key
        )
    ).json()
    assert as_json["employee_id"] == employee_id and as_json["enrollment_code"].startswith("cse_")
    assert before + 7_200_000 <= as_json["expires_at_ms"] <= int(time.time() * 1000) + 7_200_000
    plain = await callsight(service, "enroll", employee_id, "--qr", "none", key=tenant.admin_key)
    assert plain.status == 0 and "█" not in plain.out and "▀" not in plain.out

    missing = await callsight(service, "enroll", "no-such-employee", key=tenant.admin_key)
    assert missing.failed().startswith("callsight: NOT_FOUND: employee no-such-employee")
    foreign = await callsight(service, "enroll", employee_id, key=other.admin_key)
    assert foreign.failed().startswith("callsight: NOT_FOUND: ")


# --- devices ----------------------------------------------------------------------------------


async def test_devices_and_silent_devices(service: Service, channel: grpc.aio.Channel) -> None:
    tenant, other = await new_tenant(channel), await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "+91 98450 12345")
    ravi = await new_employee(channel, tenant, "Ravi", "+91 98450 12346")
    synced = await enroll(channel, tenant, asha)
    quiet = await enroll(channel, tenant, ravi)
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        batch(1, [call(i) for i in range(3)]), metadata=auth(synced.device_token)
    )
    assert ack.accepted == 3

    listed = await callsight(service, "devices", "--json", key=tenant.admin_key)
    devices = {d["device_id"]: d for d in listed.json()}
    assert set(devices) == {synced.device_id, quiet.device_id}
    mine = devices[synced.device_id]
    assert (mine["employee_id"], mine["model"], mine["revoked"]) == (asha, "Pixel 8", False)
    assert mine["last_sync_at_ms"] > 0 and mine["last_batch_result"] == "accepted"
    assert devices[quiet.device_id]["last_sync_at_ms"] == 0
    table = await callsight(service, "devices", key=tenant.admin_key)
    assert table.out.splitlines()[0].split()[:4] == ["DEVICE", "EMPLOYEE", "MODEL", "APP"]
    assert re.search(rf"^{synced.device_id} +{asha} +Pixel 8 ", table.out, re.M), table.out

    only_ravi = await callsight(
        service, "devices", "--employee", ravi, "--json", key=tenant.admin_key
    )
    assert [d["device_id"] for d in only_ravi.json()] == [quiet.device_id]

    # The device that never synced is silent; the one that synced a moment ago is not.
    silent = await callsight(service, "devices", "--silent", "1h", "--json", key=tenant.admin_key)
    rows = silent.json()
    assert [d["device_id"] for d in rows] == [quiet.device_id]
    assert "silent" in rows[0]["issues"]
    silent_table = await callsight(service, "devices", "--silent", "1h", key=tenant.admin_key)
    assert silent_table.out.splitlines()[0].split()[-1] == "ISSUES"
    none_of_asha = await callsight(
        service, "devices", "--silent", "1h", "--employee", asha, key=tenant.admin_key
    )
    assert none_of_asha.out == "no device has been silent for 01:00:00 or more\n"

    theirs = await callsight(service, "devices", key=other.admin_key)
    assert theirs.out == "no devices: enroll one with `callsight enroll EMPLOYEE_ID`\n"


# --- reports ----------------------------------------------------------------------------------


async def test_report_summary_table_and_json(service: Service, channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "+91 98450 12345")
    ravi = await new_employee(channel, tenant, "Ravi", "+91 98450 12346")
    device = await enroll(channel, tenant, asha)
    # 30 calls one second apart: incoming, outgoing, missed in turn; missed ones last 0 s.
    records = [call(i) for i in range(30)]
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        batch(1, records), metadata=auth(device.device_token)
    )
    assert ack.accepted == 30
    day = datetime.datetime.fromtimestamp(BASE_MS / 1000, datetime.UTC).date()
    start, end = str(day - datetime.timedelta(days=1)), str(day + datetime.timedelta(days=2))
    talk = sum(r.duration_s for r in records)

    ran = await callsight(
        service, "report", "summary", "--from", start, "--to", end, "--json", key=tenant.admin_key
    )
    result = ran.json()
    assert result["timezone"] == "UTC"
    assert (
        result["from_ms"]
        == int(
            datetime.datetime.combine(
                day - datetime.timedelta(days=1), datetime.time(), datetime.UTC
            ).timestamp()
        )
        * 1000
    )
    totals = result["summary"]
    assert (totals["total_calls"], totals["incoming_calls"], totals["outgoing_calls"]) == (
        30,
        10,
        10,
    )
    assert (totals["missed_calls"], totals["connected_calls"]) == (10, 20)
    assert totals["total_duration_s"] == talk and totals["unique_clients"] == 30

    table = await callsight(
        service, "report", "summary", "--from", start, "--to", end,
        "--timezone", "Asia/Kolkata", key=tenant.admin_key,
    )  # fmt: skip
    assert table.status == 0, table.err
    assert table.out.splitlines()[0] == f"calls from {start} to {end} (Asia/Kolkata)"
    assert re.search(r"^calls +30$", table.out, re.M), table.out
    hours, rest = divmod(talk, 3600)
    assert re.search(rf"^talk time +{hours:02d}:{rest // 60:02d}:{rest % 60:02d}$", table.out, re.M)

    ravis = await callsight(
        service, "report", "summary", "--from", start, "--to", end, "--employee", ravi, "--json",
        key=tenant.admin_key,
    )  # fmt: skip
    assert ravis.json()["summary"]["total_calls"] == 0
    too_long = await callsight(
        service, "report", "summary", "--from", "2020-01-01", "--to", "2026-01-01",
        key=tenant.admin_key,
    )  # fmt: skip
    assert too_long.failed().startswith("callsight: INVALID_ARGUMENT: ")


# --- connection failures ------------------------------------------------------------------------


async def test_an_unreachable_server_is_one_line_with_what_to_do() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        ran = await callsight(f"127.0.0.1:{port}", "employee", "list", key="csk_x")
    assert ran.failed() == (
        f"callsight: cannot reach 127.0.0.1:{port}: is the server running? start it with "
        "`make serve` (--target or CALLSIGHT_TARGET names another; --tls must match it)\n"
    )


async def test_an_rpc_the_server_lacks_is_reported_as_unimplemented() -> None:
    # A gRPC server without callsight's services answers every RPC UNIMPLEMENTED, as an
    # older callsight answers the RPCs it does not have.
    bare = grpc.aio.server()
    port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()
    try:
        ran = await callsight(f"127.0.0.1:{port}", "devices", "--silent", "24h", key="csk_x")
    finally:
        await bare.stop(None)
    assert ran.failed() == (
        f"callsight: UNIMPLEMENTED: the server at 127.0.0.1:{port} does not offer DeviceHealth "
        "yet; it needs a newer callsight\n"
    )


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_with_a_ca_file(data_dir: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    svc = Service(
        make_config(data_dir, f"clitls_{secrets.token_hex(4)}", tls_cert=cert, tls_key=key)
    )
    await svc.start()
    try:
        target = f"localhost:{svc.port}"
        created = await callsight(
            target, "tenant", "create", "Acme", "--region", "IN", "--timezone", "UTC",
            "--ca", str(cert), "--json",
        )  # fmt: skip
        admin_key = created.json()["admin_api_key"]
        listed = await callsight(target, "employee", "list", "--ca", str(cert), key=admin_key)
        assert listed.status == 0, listed.err
        plain = await callsight(target, "employee", "list", "--timeout", "5", key=admin_key)
        assert plain.failed().startswith(f"callsight: cannot reach {target}")
    finally:
        await svc.stop()


async def _script(*argv: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("callsight")),
        *argv,
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_console_script(service: Service) -> None:
    env = {
        "CALLSIGHT_TARGET": f"127.0.0.1:{service.port}",
        "CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    status, out, err = await _script(
        "tenant", "create", "Acme", "--region", "IN", "--timezone", "UTC", "--json", **env
    )
    assert status == 0, err
    admin_key = json.loads(out)["admin_api_key"]
    status, out, err = await _script(
        "employee", "list", "--json", CALLSIGHT_API_KEY=admin_key, **env
    )
    assert (status, json.loads(out)) == (0, []), err
    status, out, err = await _script("employee", "list", CALLSIGHT_API_KEY="csk_nope", **env)
    assert (status, out) == (1, "") and ONE_LINE.fullmatch(err), err
    assert err.startswith("callsight: UNAUTHENTICATED: ")
    status, out, err = await _script("devices", "--silent", "soon", **env)
    assert (status, out) == (2, "") and ONE_LINE.fullmatch(err), err
