"""The container files: what can be checked without a Docker daemon (none runs on the test
machines). The Dockerfile copies only what exists and installs from the lock; compose.yaml and
envoy.yaml agree on services, ports and health checks; Envoy keeps a device on one replica."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def test_the_dockerfile_copies_what_exists_runs_as_non_root_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert "uv export --frozen --no-dev" in text  # runtime dependencies from uv.lock only
    assert re.search(r"^USER callsight$", text, re.M)
    assert "HEALTHCHECK" in text and "HealthCheckResponse.SERVING" in text
    assert 'ENTRYPOINT ["callsight"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored


def test_the_health_check_command_imports() -> None:
    text = (ROOT / "Dockerfile").read_text()
    command = re.search(r'"python", "-c", "(.*)"\]', text)
    assert command is not None
    imports = command.group(1).split(";")[0:2]
    exec(";".join(imports))  # the modules the check needs are installed with the server


def test_compose_runs_clickhouse_two_replicas_and_envoy() -> None:
    compose = _load("compose.yaml")
    services = compose["services"]
    assert {"clickhouse", "callsight-1", "callsight-2", "envoy"} <= set(services)
    for name in ("callsight-1", "callsight-2"):
        replica = services[name]
        assert replica["build"] == "."
        env = replica["environment"]
        dsn = env["CALLSIGHT_DSN"]
        assert dsn.startswith("http://") and "@clickhouse:8123" in dsn
        # Both replicas must share the master key and operator token.
        assert env["CALLSIGHT_MASTER_KEY"].startswith("${CALLSIGHT_MASTER_KEY:?")
        assert env["CALLSIGHT_OPERATOR_TOKEN"].startswith("${CALLSIGHT_OPERATOR_TOKEN:?")
        assert replica["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert "./envoy.yaml:/etc/envoy/envoy.yaml:ro" in services["envoy"]["volumes"]
    assert "50051:50051" in services["envoy"]["ports"]


def test_envoy_balances_grpc_with_device_affinity_and_health_checks() -> None:
    envoy = _load("envoy.yaml")
    [cluster] = envoy["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    options = cluster["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]
    endpoints = {
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    }
    assert endpoints == {("callsight-1", 50051), ("callsight-2", 50051)}
    [listener] = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [route] = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "authorization"}}]
    assert route["route"]["timeout"] == "0s"  # streams live as long as the device keeps them
    assert manager["stream_idle_timeout"] == "0s"
