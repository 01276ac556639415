"""The operator CLI's usage errors: one line on stderr, exit status 2, nothing sent."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from callsight.server import cli

# Nothing listens there: a command that wrongly got as far as an RPC would exit 1, not 2.
ENV = {
    "CALLSIGHT_TARGET": "127.0.0.1:9",
    "CALLSIGHT_API_KEY": "csk_x",
    "CALLSIGHT_OPERATOR_TOKEN": "op",
}


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), env=ENV if env is None else env, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def usage_error(*argv: str, env: dict[str, str] | None = None) -> str:
    status, out, err = run(*argv, env=env)
    assert (status, out) == (2, ""), err
    assert err.startswith("callsight: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "the following arguments are required: COMMAND (see 'callsight --help')"),
        (("tenants",), "invalid choice: 'tenants'"),
        (("tenant", "create", "Acme"), "required: --region, --timezone"),
        (("apikey", "create", "crm", "--role", "owner"), "invalid choice: 'owner'"),
        (("employee", "create", "Asha"), "required: --number (see 'callsight employee create"),
        (("devices", "--silent", "24"), "'24' is not a duration"),
        (("enroll", "e1", "--ttl", "31d"), "--ttl is at most 30d"),
        (("enroll", "e1", "--timeout", "soon"), "argument --timeout: 'soon' is not a duration"),
        (("report", "summary", "--from", "2026-11-01"), "required: --to"),
        (
            ("report", "summary", "--from", "2026-12-01", "--to", "2026-11-01"),
            "--to (2026-11-01) must be after --from (2026-12-01)",
        ),
        (("report", "summary", "--from", "1/11/26", "--to", "2026-12-01"), "YYYY-MM-DD"),
        (
            ("report", "summary", "--from", "2026-11-01", "--to", "2026-12-01", "--timezone", "X"),
            "unknown time zone 'X'",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: tuple[str, ...], message: str) -> None:
    assert message in usage_error(*argv)


def test_a_missing_credential_names_the_variable_and_the_flag() -> None:
    err = usage_error("tenant", "list", env={})
    assert err == (
        "callsight: tenant list needs the operator token: set CALLSIGHT_OPERATOR_TOKEN (an "
        "embedded server writes it to data/operator.token) or pass --operator-token\n"
    )
    err = usage_error("employee", "list", env={"CALLSIGHT_OPERATOR_TOKEN": "op"})
    assert err == (
        "callsight: employee list needs a tenant API key: set CALLSIGHT_API_KEY or pass --api-key\n"
    )
    # The operator token never stands in for an API key, nor the other way round.
    assert "tenant create needs" in usage_error(
        "tenant",
        "create",
        "A",
        "--region",
        "IN",
        "--timezone",
        "UTC",
        env={"CALLSIGHT_API_KEY": "k"},
    )


def test_import_files_that_cannot_be_used(tmp_path: Path) -> None:
    err = usage_error("employee", "import", str(tmp_path / "none.csv"))
    assert "cannot read" in err and "No such file" in err
    (tmp_path / "bare.csv").write_text("name,number,tags\n\n")
    assert "has no employees after its header line" in usage_error(
        "employee", "import", str(tmp_path / "bare.csv")
    )
    (tmp_path / "noheader.csv").write_text("Asha,0987654321\n")
    assert "(missing: name, number)" in usage_error(
        "employee", "import", str(tmp_path / "noheader.csv")
    )


def test_an_unreadable_ca_file() -> None:
    assert "cannot read the CA file /nonexistent.pem" in usage_error(
        "employee", "list", "--ca", "/nonexistent.pem"
    )


def test_help_shows_defaults_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("devices", "--help")[0] == 0
    text = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "default 127.0.0.1:50051" in text and "env CALLSIGHT_API_KEY" in text
    assert "--silent DURATION" in text and "(default 30s)" in text
    assert run("--help")[0] == 0
    listing = capsys.readouterr().out
    for command in ("serve", "tenant", "apikey", "employee", "enroll", "devices", "report"):
        assert f"\n    {command} " in listing


def test_a_token_with_a_line_break_is_refused_before_sending() -> None:
    err = usage_error("employee", "list", env={"CALLSIGHT_API_KEY": "csk_a\nadmin"})
    assert err == (
        "callsight: CALLSIGHT_API_KEY holds spaces, line breaks or other characters no token has\n"
    )
    assert "--operator-token holds" in usage_error("tenant", "list", "--operator-token", "a b")
    # A file's trailing newline is not part of the token: this one gets as far as connecting.
    status, _, err = run(
        "employee", "list", "--timeout", "5", env={**ENV, "CALLSIGHT_API_KEY": "csk_a\n"}
    )
    assert (status, err.split(":")[:2]) == (1, ["callsight", " cannot reach 127.0.0.1"]), err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"callsight {importlib.metadata.version('callsight')}\n"
