"""The operator's bearer tokens, and their rotation without a restart.

The tokens come from CALLSIGHT_OPERATOR_TOKEN (fixed for the life of the process), or from a file
(CALLSIGHT_OPERATOR_TOKEN_FILE; in embedded mode without either, the generated
``<data_dir>/operator.token``) that holds one token per line. The file is read again when it
changes, checked at most once per ``check_every_s`` when an operator token is presented, so a
rotation is: write the file with the old and the new token, move the operator's tools to the new
one, write the file with the new token alone. A file that no longer reads (empty, a bad line)
leaves the tokens as they were and is logged: a half-written file never locks the operator out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class TokenHasher(Protocol):
    """What this module needs of ``server.auth.TokenHasher`` (named here, not imported: auth
    imports this module)."""

    def hash(self, token: str) -> bytes:
        """The keyed hash stored for ``token``."""
        ...

    def matches(self, token: str, stored_hash: bytes) -> bool:
        """Whether ``token`` hashes to ``stored_hash`` (constant time)."""
        ...


MIN_TOKEN_CHARS = 16
# A rotation needs two; a few more cost nothing, a long file is a mistake.
MAX_TOKENS = 8


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be an operator token, or None."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"too short ({len(token)} characters, need {MIN_TOKEN_CHARS}+)"
    if not all(33 <= ord(ch) <= 126 for ch in token):
        return (
            "must be printable ASCII without spaces (it is sent as 'authorization: Bearer <token>')"
        )
    return None


def read_tokens(path: Path) -> list[str]:
    """The tokens of a token file: one per line, blank lines and ``#`` comments left out.

    Raises ValueError naming what is wrong (unreadable, no token, a bad line, too many).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        problem = token_problem(token)
        if problem is not None:
            raise ValueError(f"{path} line {number}: {problem}")
        tokens.append(token)
    if not tokens:
        raise ValueError(f"{path} holds no token (one per line)")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"{path} holds {len(tokens)} tokens; at most {MAX_TOKENS}")
    return tokens


class OperatorTokens:
    """Checks bearer tokens against the operator's, reading the token file again when it changes."""

    def __init__(
        self,
        hasher: TokenHasher,
        token: str | None = None,
        path: Path | None = None,
        check_every_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Either a fixed ``token`` or a token file at ``path`` (read now: it must hold one)."""
        if (token is None) == (path is None):
            raise ValueError("give either an operator token or a token file")
        self._hasher = hasher
        self._path = path
        self._check_every_s = check_every_s
        self._monotonic = monotonic
        self._hashes: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = monotonic()
        if token is not None:
            self._hashes = (hasher.hash(token),)
        else:
            assert path is not None
            self._stamp = _stamp(path)
            self._hashes = tuple(map(hasher.hash, read_tokens(path)))

    def matches(self, token: str) -> bool:
        """Whether ``token`` is one of the operator's tokens now."""
        self._reload_if_changed()
        # Every hash is compared, so the time taken does not tell which one matched.
        found = [self._hasher.matches(token, h) for h in self._hashes]
        return any(found)

    def _reload_if_changed(self) -> None:
        path = self._path
        now = self._monotonic()
        if path is None or now - self._checked_at < self._check_every_s:
            return
        self._checked_at = now
        try:
            stamp = _stamp(path)
        except OSError as exc:
            log.error(
                "operator token file unreadable; keeping the tokens", path=str(path), error=str(exc)
            )
            return
        if stamp == self._stamp:
            return
        try:
            tokens = read_tokens(path)
        except ValueError as exc:
            log.error("operator token file not usable; keeping the tokens", error=str(exc))
            return
        self._stamp = stamp
        self._hashes = tuple(map(self._hasher.hash, tokens))
        log.warning("operator tokens read again", path=str(path), tokens=len(tokens))


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when the file is written or replaced: (inode, size, mtime in ns)."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
