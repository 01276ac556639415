"""The start-up log says where the master key and operator token come from, never what they
are."""

from __future__ import annotations

from pathlib import Path

from callsight.server.app import secret_sources
from callsight.server.config import load
from tests.conftest import master_key_b64


def test_generated_secrets_name_their_files(tmp_path: Path) -> None:
    config = load(["--data-dir", str(tmp_path)], {})
    assert secret_sources(config) == {
        "master_key": f"file {tmp_path / 'master.key'} (generated on first start)",
        "operator_token": f"file {tmp_path / 'operator.token'} (generated on first start)",
    }


def test_secrets_from_the_environment_say_so_and_show_nothing(tmp_path: Path) -> None:
    token = "op-" + "x" * 30
    env = {"CALLSIGHT_MASTER_KEY": master_key_b64(), "CALLSIGHT_OPERATOR_TOKEN": token}
    sources = secret_sources(load(["--data-dir", str(tmp_path)], env))
    assert sources == {
        "master_key": "env CALLSIGHT_MASTER_KEY",
        "operator_token": "env CALLSIGHT_OPERATOR_TOKEN",
    }
    assert token not in str(sources) and master_key_b64() not in str(sources)


def test_a_token_file_is_named(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("op-" + "y" * 30 + "\n")
    config = load(["--data-dir", str(tmp_path)], {"CALLSIGHT_OPERATOR_TOKEN_FILE": str(tokens)})
    assert secret_sources(config)["operator_token"] == (
        f"file {tokens} (CALLSIGHT_OPERATOR_TOKEN_FILE)"
    )
