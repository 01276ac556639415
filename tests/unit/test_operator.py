"""The operator token file: what it may hold, and that it is read again only when it changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callsight.server.auth import TokenHasher
from callsight.server.operator import OperatorTokens, read_tokens

OLD = "old-token-0123456789abcdef"
NEW = "new-token-0123456789abcdef"


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_read_tokens_skips_blanks_and_comments_and_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotating\n\n  {OLD}  \n{NEW}\n")
    assert read_tokens(path) == [OLD, NEW]
    for text, problem in (
        ("", "holds no token"),
        ("# only a comment\n", "holds no token"),
        (f"{OLD}\nshort\n", "line 2: too short (5 characters, need 16+)"),
        (f"{OLD} {NEW}\n", "line 1: must be printable ASCII without spaces"),
        ("".join(f"{OLD}{i}\n" for i in range(9)), "holds 9 tokens; at most 8"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            read_tokens(path)
        assert problem in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        read_tokens(tmp_path / "missing")


def test_the_file_is_read_again_at_most_once_per_interval_and_a_bad_one_is_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens"
    path.write_text(OLD + "\n")
    ticks = Ticks()
    tokens = OperatorTokens(
        TokenHasher(os.urandom(32)), path=path, check_every_s=1.0, monotonic=ticks
    )
    assert tokens.matches(OLD) and not tokens.matches(NEW)

    path.write_text(f"{OLD}\n{NEW}\n")
    ticks.now = 0.5
    assert not tokens.matches(NEW)  # not checked again yet
    ticks.now = 1.0
    assert tokens.matches(NEW) and tokens.matches(OLD)

    path.write_text("")  # half-written: the tokens stay as they were
    ticks.now = 2.0
    assert tokens.matches(NEW) and tokens.matches(OLD)
    path.unlink()
    ticks.now = 3.0
    assert tokens.matches(NEW)

    path.write_text(NEW + "\n")
    ticks.now = 4.0
    assert tokens.matches(NEW) and not tokens.matches(OLD)
    assert not tokens.matches("")


def test_a_fixed_token_never_reads_a_file() -> None:
    tokens = OperatorTokens(TokenHasher(os.urandom(32)), token=OLD)
    assert tokens.matches(OLD) and not tokens.matches(NEW)
    with pytest.raises(ValueError):
        OperatorTokens(TokenHasher(os.urandom(32)))
