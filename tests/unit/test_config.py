"""server.config: precedence, every problem reported at once, secrets kept out of logs."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from callsight.core.errors import ConfigError
from callsight.server.config import Config, Secret, build_arg_parser, describe, load

TOKEN = "op-token-0123456789-abcdef"
KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
DSN_PASSWORD = "hunter2-dsn-pass"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default DSN is derived from ./data, so pin the working directory.
    monkeypatch.chdir(tmp_path)
    # load(env=None) reads os.environ; a developer's own CALLSIGHT_* must not leak in.
    for name in [name for name in os.environ if name.startswith("CALLSIGHT_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    return cert, key


def problems_of(argv: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(argv, env or {})
    return info.value.problems


def test_defaults(tmp_path: Path) -> None:
    config = load([], {})
    assert config == Config()
    assert config.listen == "127.0.0.1:50051"
    assert config.data_dir == Path("./data")
    assert config.dsn.reveal() == f"chdb://{tmp_path.resolve()}/data/clickhouse"
    assert config.dsn.reveal().startswith("chdb:///")
    assert config.is_embedded
    assert config.operator_token is None
    assert config.master_key is None
    assert config.tls_cert is None and config.tls_key is None
    assert config.log_level == "info"
    assert config.grace_period_s == 10.0
    assert config.batch_max_rows == 50_000
    assert config.batch_max_bytes == 32 * 1024 * 1024
    assert config.batch_max_age_ms == 200
    assert config.buffer_max_bytes == 256 * 1024 * 1024
    assert config.max_inserts_in_flight == 2


def test_default_dsn_follows_data_dir(tmp_path: Path) -> None:
    config = load(["--data-dir", str(tmp_path / "state")], {})
    assert config.dsn.reveal() == f"chdb://{tmp_path.resolve()}/state/clickhouse"


def test_flags_beat_env_beat_defaults() -> None:
    env = {
        "CALLSIGHT_LISTEN": "0.0.0.0:6000",
        "CALLSIGHT_BATCH_MAX_ROWS": "1000",
        "CALLSIGHT_DSN": "http://ch:8123/env",
        "CALLSIGHT_MASTER_KEY": KEY_B64,
    }
    config = load(["--listen", "127.0.0.1:7000", "--dsn=https://ch2:8443/flag"], env)
    assert config.listen == "127.0.0.1:7000"  # flag over env
    assert config.dsn.reveal() == "https://ch2:8443/flag"  # flag over env
    assert config.batch_max_rows == 1000  # env over default
    assert config.log_level == "info"  # default
    assert not config.is_embedded


def test_env_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSIGHT_GRACE_PERIOD_S", "2.5")
    monkeypatch.setenv("CALLSIGHT_OPERATOR_TOKEN", TOKEN)
    config = load()
    assert config.grace_period_s == 2.5
    assert config.operator_token == Secret(TOKEN)


def test_empty_env_value_counts_as_unset() -> None:
    config = load([], {"CALLSIGHT_LISTEN": "", "CALLSIGHT_MASTER_KEY": ""})
    assert config.listen == "127.0.0.1:50051"
    assert config.master_key is None


def test_every_problem_is_reported_at_once(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    _, key = tls_files
    missing_cert = tmp_path / "missing-cert.pem"
    problems = problems_of(
        ["--listen", "nonsense", "--tls-cert", str(missing_cert), "--tls-key", str(key)],
        {"CALLSIGHT_DSN": "postgres://u:p@db/x", "CALLSIGHT_MASTER_KEY": "c2hvcnQ="},
    )
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "CALLSIGHT_LISTEN / --listen: 'nonsense' is not HOST:PORT" in text
    assert (
        "CALLSIGHT_DSN / --dsn: unknown scheme 'postgres'; "
        "use chdb:///path, http://host:8123/db or https://..." in problems
    )
    assert (
        "CALLSIGHT_MASTER_KEY: not valid base64 of 32 bytes (got 5 bytes); generate one with: "
        "python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'" in problems
    )
    assert any(
        p.startswith("CALLSIGHT_TLS_CERT / --tls-cert:")
        and str(missing_cert) in p
        and "No such file or directory" in p
        for p in problems
    )


def test_config_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load(["--listen", "x", "--log-level", "loud"], {})
    assert "--listen" in str(info.value) and "--log-level" in str(info.value)


def test_valid_master_key_decodes_to_32_bytes() -> None:
    config = load([], {"CALLSIGHT_MASTER_KEY": KEY_B64 + "\n"})
    assert config.master_key == KEY
    urlsafe = load([], {"CALLSIGHT_MASTER_KEY": base64.urlsafe_b64encode(b"\xff" * 32).decode()})
    assert urlsafe.master_key == b"\xff" * 32


def test_master_key_that_is_not_base64_is_a_problem() -> None:
    (problem,) = problems_of([], {"CALLSIGHT_MASTER_KEY": "not base64 at all!"})
    assert problem.startswith("CALLSIGHT_MASTER_KEY: not valid base64 of 32 bytes")
    assert "generate one with" in problem


def test_secrets_are_env_only() -> None:
    (problem,) = problems_of(["--operator-token", TOKEN], {})
    assert "--operator-token" in problem
    assert "CALLSIGHT_OPERATOR_TOKEN" in problem
    assert TOKEN not in problem
    (problem,) = problems_of(["--master-key", KEY_B64], {})
    assert KEY_B64 not in problem


def test_secrets_never_show_in_repr_str_or_describe() -> None:
    env = {
        "CALLSIGHT_OPERATOR_TOKEN": TOKEN,
        "CALLSIGHT_MASTER_KEY": KEY_B64,
        "CALLSIGHT_DSN": f"http://analyst:{DSN_PASSWORD}@ch:8123/db?access_token={DSN_PASSWORD}",
    }
    config = load([], env)
    described = describe(config)
    forbidden = [TOKEN, KEY_B64, repr(KEY), KEY.hex(), DSN_PASSWORD]
    for text in (repr(config), str(config), repr(described), str(described)):
        for secret in forbidden:
            assert secret not in text
    assert described["operator_token"] == "set"
    assert described["master_key"] == "set"
    assert described["dsn"] == "http://analyst:****@ch:8123/db?access_token=****"
    assert described["embedded"] is False


def test_describe_of_defaults() -> None:
    described = describe(Config())
    assert described["operator_token"] == "unset"
    assert described["master_key"] == "unset"
    assert described["listen"] == "127.0.0.1:50051"
    assert described["embedded"] is True
    assert str(described["dsn"]).startswith("chdb:///")


def test_problems_never_echo_secrets() -> None:
    env = {
        "CALLSIGHT_OPERATOR_TOKEN": "short token",
        "CALLSIGHT_MASTER_KEY": "c2hvcnQ=",
        "CALLSIGHT_DSN": f"ftp://u:{DSN_PASSWORD}@h/x",
    }
    problems = problems_of([], env)
    assert len(problems) == 3
    for problem in problems:
        for secret in ("short token", "c2hvcnQ=", DSN_PASSWORD):
            assert secret not in problem
    assert any(p.startswith("CALLSIGHT_OPERATOR_TOKEN: too short") for p in problems)


def test_dsn_display_masks_password() -> None:
    config = Config(dsn=Secret("http://user:secret@host:8123/db"), master_key=KEY)
    assert config.dsn_display == "http://user:****@host:8123/db"
    server = Config(dsn=Secret("https://host:8443/db"), master_key=KEY)
    assert server.dsn_display == "https://host:8443/db"
    assert Config(dsn=Secret("chdb:///var/lib/ch")).dsn_display == "chdb:///var/lib/ch"


@pytest.mark.parametrize("dsn", ["http:///db", "https://:8443/db", "chdb://relative/path"])
def test_dsn_without_host_or_absolute_path_is_a_problem(dsn: str) -> None:
    (problem,) = problems_of(["--dsn", dsn], {})
    assert problem.startswith("CALLSIGHT_DSN / --dsn:")


def test_tls_cert_without_key_is_a_problem(tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    (problem,) = problems_of(["--tls-cert", str(cert)], {})
    assert problem.startswith("CALLSIGHT_TLS_KEY / --tls-key: not set")
    assert "CALLSIGHT_TLS_CERT / --tls-cert" in problem


def test_tls_pair_is_accepted(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    config = load([], {"CALLSIGHT_TLS_CERT": str(cert), "CALLSIGHT_TLS_KEY": str(key)})
    assert (config.tls_cert, config.tls_key) == (cert, key)


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:0", "0.0.0.0:50051", "[::]:50051", "[::1]:0", "localhost:65535"]
)
def test_listen_accepts_port_zero_and_ipv6(listen: str) -> None:
    assert load(["--listen", listen], {}).listen == listen


@pytest.mark.parametrize(
    "listen", ["50051", ":50051", "::1:50051", "host:65536", "host:http", "[nope]:1", "999.1.1.1:1"]
)
def test_bad_listen_is_a_problem(listen: str) -> None:
    (problem,) = problems_of(["--listen", listen], {})
    assert problem.startswith("CALLSIGHT_LISTEN / --listen:")


def test_numbers_are_checked() -> None:
    env = {
        "CALLSIGHT_BATCH_MAX_ROWS": "lots",
        "CALLSIGHT_BATCH_MAX_AGE_MS": "0",
        "CALLSIGHT_MAX_INSERTS_IN_FLIGHT": "-1",
        "CALLSIGHT_GRACE_PERIOD_S": "soon",
    }
    problems = problems_of(["--buffer-max-bytes", "2.5"], env)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    for name in (
        "CALLSIGHT_BATCH_MAX_ROWS / --batch-max-rows: not an integer: 'lots'",
        "CALLSIGHT_BATCH_MAX_AGE_MS / --batch-max-age-ms: must be an integer > 0",
        "CALLSIGHT_MAX_INSERTS_IN_FLIGHT / --max-inserts-in-flight: must be an integer > 0",
        "CALLSIGHT_GRACE_PERIOD_S / --grace-period-s: not a number: 'soon'",
        "CALLSIGHT_BUFFER_MAX_BYTES / --buffer-max-bytes: not an integer: '2.5'",
    ):
        assert name in text


def test_batch_larger_than_buffer_is_a_problem() -> None:
    (problem,) = problems_of(["--batch-max-bytes", "2000", "--buffer-max-bytes", "1000"], {})
    assert problem.startswith("CALLSIGHT_BATCH_MAX_BYTES / --batch-max-bytes:")


def test_log_level_is_case_insensitive_and_checked() -> None:
    assert load(["--log-level", "WARNING"], {}).log_level == "warning"
    (problem,) = problems_of([], {"CALLSIGHT_LOG_LEVEL": "verbose"})
    assert problem.startswith("CALLSIGHT_LOG_LEVEL / --log-level:")


def test_unknown_flag_is_a_problem() -> None:
    (problem,) = problems_of(["--lisen", "0.0.0.0:1"], {})
    assert "--lisen" in problem


def test_config_is_frozen_and_validated_when_built_directly() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]
    with pytest.raises(ConfigError):
        Config(grace_period_s=0)


def test_secret() -> None:
    secret = Secret("s3cr3t")
    assert repr(secret) == str(secret) == "Secret('****')"
    assert f"{secret}" == "Secret('****')"
    assert secret.reveal() == "s3cr3t"
    assert secret == Secret("s3cr3t")
    assert secret != Secret("other")
    assert len({secret, Secret("s3cr3t")}) == 1
    with pytest.raises(AttributeError):
        secret._value = "x"
    assert pickle.loads(pickle.dumps(secret)) == secret


def test_build_arg_parser_defaults_to_none_and_serves_as_parent() -> None:
    parser = build_arg_parser()
    assert all(value is None for value in vars(parser.parse_args([])).values())
    cli = argparse.ArgumentParser(prog="callsight")
    sub = cli.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[build_arg_parser()])
    args = cli.parse_args(["serve", "--listen", "0.0.0.0:1", "--batch-max-rows", "5"])
    assert (args.listen, args.batch_max_rows, args.dsn) == ("0.0.0.0:1", "5", None)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert "--listen" in flags and "--max-inserts-in-flight" in flags
    assert not any("token" in flag or "master" in flag for flag in flags)


def test_server_dsn_needs_a_shared_master_key() -> None:
    (problem,) = problems_of(["--dsn", "http://ch:8123/db"], {})
    assert problem.startswith("CALLSIGHT_MASTER_KEY:")
    assert "share" in problem


def test_a_cluster_needs_a_server_dsn_and_a_plain_name() -> None:
    env = {"CALLSIGHT_MASTER_KEY": KEY_B64}
    config = load(["--dsn", "http://ch:8123", "--cluster", "prod"], env)
    assert config.cluster == "prod"
    assert load([], {}).cluster is None
    with pytest.raises(ConfigError, match="cluster: needs a ClickHouse server DSN"):
        load(["--cluster", "prod"], {})
    with pytest.raises(ConfigError, match="cluster: 'a;b' is not a plain identifier"):
        load(["--dsn", "http://ch:8123", "--cluster", "a;b"], env)


def test_metrics_listen_default_flag_env_and_off() -> None:
    assert Config().metrics_address == "127.0.0.1:9464"
    env = {"CALLSIGHT_METRICS_LISTEN": "127.0.0.1:1"}
    assert load(["--metrics-listen", "0.0.0.0:9100"], env).metrics_address == "0.0.0.0:9100"
    assert load([], {"CALLSIGHT_METRICS_LISTEN": "[::1]:0"}).metrics_address == "[::1]:0"
    assert load(["--metrics-listen", "off"], env).metrics_address is None
    assert load([], {"CALLSIGHT_METRICS_LISTEN": "OFF"}).metrics_address is None
    # An empty value counts as unset in flags and env (the default); built directly, it is off.
    assert load([], {"CALLSIGHT_METRICS_LISTEN": ""}).metrics_address == "127.0.0.1:9464"
    assert Config(metrics_listen="").metrics_address is None
    assert describe(Config())["metrics_listen"] == "127.0.0.1:9464"


@pytest.mark.parametrize("address", ["9464", "host:99999", "[nope]:1", "on"])
def test_bad_metrics_listen_is_a_problem(address: str) -> None:
    (problem,) = problems_of(["--metrics-listen", address], {})
    assert problem.startswith("CALLSIGHT_METRICS_LISTEN / --metrics-listen:")
    assert problem.endswith("; or off for no metrics")


def test_metrics_need_a_port_of_their_own() -> None:
    (problem,) = problems_of(["--listen", "127.0.0.1:7000", "--metrics-listen", "127.0.0.1:7000"])
    assert problem == (
        "CALLSIGHT_METRICS_LISTEN / --metrics-listen: 127.0.0.1:7000 is also the gRPC --listen "
        "address; give metrics a port of their own"
    )
    both_free = load(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], {})
    assert both_free.metrics_address == "127.0.0.1:0"


def test_decode_workers_default_to_the_cpus_and_reach_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert load([], {}).decode_workers == 4  # at most 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert load([], {}).decode_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert load([], {}).decode_workers == 0  # one CPU: decode on the loop
    config = load(["--decode-workers", "2"], {})
    assert config.pipeline_settings().decode_workers == 2
    assert load([], {"CALLSIGHT_DECODE_WORKERS": "0"}).pipeline_settings().decode_workers == 0


def test_decode_workers_out_of_range_is_a_problem() -> None:
    (problem,) = problems_of(["--decode-workers", "-1"], {})
    assert problem == (
        "CALLSIGHT_DECODE_WORKERS / --decode-workers: must be a whole number from 0 to 64 (got -1)"
    )
