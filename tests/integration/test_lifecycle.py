"""Start-up, restart, shutdown, TLS, bad configuration and what lands at rest and in logs."""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from callsight.server.app import Service
from callsight.storage.database import Database
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.conftest import OPERATOR_TOKEN, make_config, master_key_b64
from tests.integration.calls import BASE_MS, DAY_MS, batch, call
from tests.integration.helpers import (
    auth,
    enroll,
    expect_status,
    free_port,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[2]
CALLSIGHT = [sys.executable, "-m", "callsight.server"]


async def test_restart_on_the_same_data_keeps_tenants_keys_and_devices(data_dir: Path) -> None:
    config = make_config(data_dir, f"restart_{secrets.token_hex(4)}")
    first = Service(config)
    await first.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        tenant = await new_tenant(channel)
        employee = await new_employee(channel, tenant, "Ravi Kumar", "+91 98450 12345", ("sales",))
        device = await enroll(channel, tenant, employee)
    await first.stop()

    second = Service(config)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            listed = await admin.ListEmployees(
                admin_pb2.ListEmployeesRequest(), metadata=tenant.admin
            )
            (row,) = listed.employees
            assert (row.employee_id, row.name, row.number, list(row.tags)) == (
                employee,
                "Ravi Kumar",
                "+919845012345",
                ["sales"],
            )
            assert [d.device_id for d in row.devices] == [device.device_id]
            # The device token survives too.
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            ack = await ingest.Upload(batch(1, [call(1)]), metadata=auth(device.device_token))
            assert ack.accepted == 1
    finally:
        await second.stop()


async def test_no_plaintext_number_at_rest_or_in_logs(
    channel: grpc.aio.Channel, service: Service, log_file: Path
) -> None:
    tenant = await new_tenant(channel, region="IN")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    numbers = {"9812345678": "+91 98123 45678", "9898989898": "09898989898"}
    for digits, shown in numbers.items():
        await new_employee(channel, tenant, f"Employee {digits[-3:]}", shown)
    # A rejected number must not reach the log either.
    await expect_status(
        admin.CreateEmployee(
            admin_pb2.CreateEmployeeRequest(name="Bad", number="+91 8787 87"), metadata=tenant.admin
        ),
        CODE.INVALID_ARGUMENT,
    )
    listed = await admin.ListEmployees(admin_pb2.ListEmployeesRequest(), metadata=tenant.admin)
    assert sorted(e.number for e in listed.employees) == sorted(f"+91{d}" for d in numbers)

    # The number inside every free-text field a phone or an import fills: recorders name files
    # after it, and ids and lead fields are whatever the sender typed.
    inside = "9812345678"
    code = await admin.CreateEnrollment(
        admin_pb2.CreateEnrollmentRequest(employee_id=listed.employees[0].employee_id),
        metadata=tenant.admin,
    )
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    device = await ingest.RegisterDevice(
        ingest_pb2.RegisterDeviceRequest(
            enrollment_code=code.enrollment_code,
            device=ingest_pb2.DeviceInfo(
                model="Pixel 8", fcm_id=f"fcm:{inside}", sim_ids=[f"8991{inside}"]
            ),
        )
    )
    token = auth(device.device_token)
    recording = f"content://recordings/call_{inside}_2026.m4a"
    ack = await ingest.Upload(
        batch(1, [call(1, recording_uri=recording, sim_id=f"8991{inside}")]), metadata=token
    )
    assert ack.accepted == 1
    sample = ingest_pb2.Telemetry(
        captured_at_ms=BASE_MS,
        battery_pct=50,
        latitude=12.971598,
        longitude=77.594562,
        fcm_id=f"fcm:{inside}",
        sim_ids=[f"8991{inside}"],
    )
    ack = await ingest.Upload(
        ingest_pb2.UploadRequest(
            seq=2, batch_id="t", telemetry=ingest_pb2.TelemetryBatch(records=[sample])
        ),
        metadata=token,
    )
    assert ack.accepted == 1
    await admin.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[
                admin_pb2.Lead(
                    primary_number="9876512345",
                    company=f"Traders {inside}",
                    city=f"Pune {inside}",
                    zipcode=inside,
                )
            ]
        ),
        metadata=tenant.admin,
    )
    # The API still returns the recording's URI.
    reports = report_pb2_grpc.ReportServiceStub(channel)
    history = await reports.CallHistory(
        report_pb2.CallHistoryRequest(
            filter=report_pb2.ReportFilter(from_ms=BASE_MS - DAY_MS, to_ms=BASE_MS + DAY_MS)
        ),
        metadata=tenant.admin,
    )
    assert [c.recording_uri for c in history.calls] == [recording]

    db = Database(service.config.dsn.reveal(), service.config.database)
    try:
        tables = [r[0] for r in await db.query("SHOW TABLES")]
        assert "employees" in tables
        dump = ""
        for table in tables:
            rows = await db.run(
                lambda c, t=table: c.raw_query(f"SELECT * FROM `{t}` FORMAT TSVRaw")  # type: ignore[misc]
            )
            dump += rows.decode("latin-1")
    finally:
        db.close()
    logged = log_file.read_text()
    assert '"method": "/callsight.v1.AdminService/CreateEmployee"' in logged
    for digits in [*numbers, "8787 87"]:
        assert digits not in dump, f"{digits} found at rest"
        assert not re.search(digits, logged), f"{digits} found in the log"
    # Coordinates are kept to about a kilometre.
    assert "12.97\t77.59" in dump
    assert "12.9715" not in dump and "77.5945" not in dump
    assert OPERATOR_TOKEN not in logged and tenant.admin_key not in logged


def test_bad_config_exits_non_zero_listing_every_problem_before_binding(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CALLSIGHT_MASTER_KEY": "not-base64!",
        "CALLSIGHT_DSN": "postgres://db/x",
        "CALLSIGHT_TLS_CERT": str(tmp_path / "missing.pem"),
        "CALLSIGHT_TLS_KEY": str(tmp_path / "missing.key"),
    }
    started = time.monotonic()
    done = subprocess.run(
        [*CALLSIGHT, "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    for setting in (
        "CALLSIGHT_MASTER_KEY",
        "CALLSIGHT_DSN",
        "CALLSIGHT_TLS_CERT",
        "CALLSIGHT_TLS_KEY",
    ):
        assert setting in done.stderr, done.stderr
    assert "not-base64!" not in done.stderr
    assert not (tmp_path / "data").exists()
    # Nothing listened: the port is still free.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert time.monotonic() - started < 60


def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CALLSIGHT_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "CALLSIGHT_MASTER_KEY": master_key_b64(),
    }
    proc = subprocess.Popen(
        [*CALLSIGHT, "serve", "--listen", f"127.0.0.1:{port}", "--grace-period-s", "3"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if json.loads(line).get("event") == "serving":
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    events = [json.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
    assert events[:1] == ["shutting down"] and events[-1] == "stopped"


def _self_signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
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
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem


async def test_tls_when_configured(data_dir: Path, tmp_path: Path) -> None:
    cert, key, pem = _self_signed(tmp_path)
    svc = Service(make_config(data_dir, f"tls_{secrets.token_hex(4)}", tls_cert=cert, tls_key=key))
    await svc.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pem)
        async with grpc.aio.secure_channel(f"localhost:{svc.port}", credentials) as channel:
            tenant = await new_tenant(channel)
            assert tenant.admin_key.startswith("csk_")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as plain:
            admin = admin_pb2_grpc.AdminServiceStub(plain)
            await expect_status(
                admin.ListEmployees(admin_pb2.ListEmployeesRequest(), timeout=5),
                CODE.UNAVAILABLE,
            )
    finally:
        await svc.stop()
