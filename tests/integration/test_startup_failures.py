"""``callsight serve`` started wrongly: one line on stderr, exit status 2, nothing created.

Real processes: the command as a user runs it, a socket holding the port, and a real server
holding a data directory."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from callsight.loadtest.harness import ServerProcess


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Metrics off: the default metrics port may be taken by another server on this machine.
    return subprocess.run(
        [sys.executable, "-m", "callsight.server", "serve", "--metrics-listen", "off", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        data = tmp_path / "data"
        line = _one_line(_serve("--listen", f"127.0.0.1:{port}", "--data-dir", str(data)))
    assert line == (
        f"callsight: cannot listen on 127.0.0.1:{port}: the address is in use (another callsight"
        " or another program serves there); stop it or pass --listen HOST:PORT"
    )
    assert not data.exists()  # no master key or operator token generated first


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    line = _one_line(_serve("--listen", "127.0.0.1:0", "--data-dir", str(data)))
    assert line == f"callsight: data directory {data} is not a directory; pass --data-dir DIR"


def test_a_data_dir_in_use_by_another_server_names_its_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data)
    first.start()
    try:
        line = _one_line(_serve("--listen", "127.0.0.1:0", "--data-dir", str(data)))
        assert line == (
            f"callsight: data directory {data} is in use by another callsight process (pid "
            f"{first.pid}); stop it, or give this one another --data-dir"
        )
    finally:
        first.kill()
    # The kernel drops the lock with the process, also after SIGKILL: a restart may go ahead.
    again = ServerProcess(data)
    again.start()
    again.kill()


def test_version_is_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callsight.server", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("callsight 0.")
