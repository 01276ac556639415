"""A server as a child process, and a sampler of its CPU time and memory: for tests and load.

``ServerProcess`` runs ``python -m callsight.server serve`` (or another module logging the same
"serving" line) on a free port with its own data directory, operator token and master key, and
drains its stderr so it never blocks on a full pipe. Nothing here imports callsight.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
LOG_LINES = 10_000  # the tail of the server's log kept for error reports


class ServerError(RuntimeError):
    """The server did not start, or died."""


class ServerProcess:
    """``python -m MODULE serve`` as a child process on a port of the OS's choosing."""

    def __init__(
        self,
        data_dir: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        module: str = "callsight.server",
    ) -> None:
        """``args`` are extra ``serve`` flags; ``env`` extra variables (CALLSIGHT_*)."""
        self.module = module
        self.data_dir = data_dir
        self.host = host
        self.operator_token = "op-" + secrets.token_urlsafe(24)
        self.master_key = os.urandom(32)
        self.port = 0
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self._args = list(args)
        self._env = dict(env or {})
        self._proc: subprocess.Popen[str] | None = None
        self._serving = threading.Event()

    @property
    def address(self) -> str:
        """``host:port`` to dial once started."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The child's pid, for psutil or py-spy."""
        if self._proc is None:
            raise ServerError("the server was not started")
        return self._proc.pid

    def start(self, timeout_s: float = 120.0) -> None:
        """Starts the child and returns once it logs "serving"; ServerError if it does not.

        The first start takes a free port; a later one (a restart) listens on the same port."""
        env = {
            **os.environ,
            "CALLSIGHT_OPERATOR_TOKEN": self.operator_token,
            "CALLSIGHT_MASTER_KEY": base64.b64encode(self.master_key).decode(),
            # Metrics on a free port too, so that servers side by side do not collide.
            "CALLSIGHT_METRICS_LISTEN": f"{self.host}:0",
            **self._env,
        }
        command = [sys.executable, "-m", self.module, "serve", "--listen", self.address]
        command += ["--data-dir", str(self.data_dir), *self._args]
        self._serving.clear()
        self._proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, args=(self._proc,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self._serving.wait(0.1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise ServerError("the server did not start:\n" + "".join(self.log))

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)
            if not self._serving.is_set() and '"event": "serving"' in line:
                self.port = int(json.loads(line)["port"])
                self._serving.set()

    def running(self) -> bool:
        """True while the child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful: buffered batches are written), SIGKILL after ``timeout_s``."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Sends ``sig`` and waits for the child to exit; returns its exit status."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
        return self._proc.wait(timeout=60)

    def restart(self, timeout_s: float = 120.0) -> None:
        """SIGKILL (a crash: nothing is flushed), then a start on the same port and data."""
        self.kill()
        self.start(timeout_s)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a process used between ``ProcessSampler.start()`` and ``stop()``."""

    cpu_s: float
    peak_rss_bytes: int
    samples: int


class ProcessSampler:
    """Samples a process's RSS every ``interval_s`` in a thread; CPU time is taken at the ends.

    Both count the process's children too (the server's decode workers): RSS summed over the
    tree at each sample, CPU over the processes alive at each end (a child that exited between
    samples is missed).
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_start = 0.0
        self._peak_rss = 0
        self._samples = 0

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.Error:
            return [self._process]

    def _cpu(self) -> float:
        total = 0.0
        for process in self._tree():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue  # exited since it was listed
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        try:
            rss = int(self._process.memory_info().rss)
        except psutil.Error:
            return  # the process is gone; keep what was seen
        for child in self._tree()[1:]:
            try:
                rss += int(child.memory_info().rss)
            except psutil.Error:
                continue
        self._peak_rss = max(self._peak_rss, rss)
        self._samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def start(self) -> None:
        """Takes the starting CPU time and starts sampling."""
        self._cpu_start = self._cpu()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> Usage:
        """Stops sampling; CPU seconds used since start() and the peak RSS seen."""
        self._sample()
        cpu_s = self._cpu() - self._cpu_start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return Usage(cpu_s=cpu_s, peak_rss_bytes=self._peak_rss, samples=self._samples)
