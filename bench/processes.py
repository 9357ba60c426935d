"""Real processes for the benchmark: a redis-server and the service, each on a free port.

Both are context managers that stop what they started (SIGTERM, then SIGKILL
after a grace period), so no run leaves a server behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProcessError(RuntimeError):
    """A server that did not start; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: IO[bytes] | None, chars: int = 3000) -> str:
    if log is None:
        return ""
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]


class RedisServer:
    """`redis-server` without persistence on a free local port."""

    def __init__(self, executable: str = "redis-server") -> None:
        found = shutil.which(executable)
        if found is None:
            raise ProcessError(f"{executable} not found: install redis-server (apt-get install redis-server)")
        self.executable = found
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProcessError(f"redis-server exited with code {self.process.returncode}")
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                time.sleep(0.05)
        _stop(self.process)
        raise ProcessError("redis-server did not answer PING within 10 s")

    def command(self, *words: str) -> bytes:
        """One inline command, first reply line (enough for PING / FLUSHALL / DBSIZE)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(4096).split(b"\r\n")[0]

    def flush(self) -> None:
        if self.command("FLUSHALL") != b"+OK":
            raise ProcessError("redis FLUSHALL failed")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            _stop(self.process)


class Service:
    """`ubs-embed serve` as a child process, ready once /readyz answers 200."""

    def __init__(self, bundle: Path, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.bundle = bundle
        self.port = free_port()
        self.env = {**os.environ, "UBS_LOG_LEVEL": "warning", **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Service:
        args = [sys.executable, "-m", "model.cli", "serve", "--bundle", str(self.bundle)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w+b") if self.log_path else open(os.devnull, "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(args, env=self.env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout_s=120)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProcessError(f"the service exited with code {self.process.returncode}:\n{_tail(self._log)}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ProcessError(f"the service was not ready within {timeout_s:.0f} s:\n{_tail(self._log)}")

    def peak_rss_mib(self) -> float:
        """Peak resident memory of the server process so far (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        raise ProcessError("VmHWM not found in /proc status")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            _stop(self.process)
        if self._log is not None:
            self._log.close()
