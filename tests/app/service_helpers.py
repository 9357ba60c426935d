"""Real servers for the service tests: throwaway redis-server and `ubs-embed serve` processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` until true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def wait_until_answering(
    process: subprocess.Popen[bytes], url: str, log: Callable[[], str], timeout_s: float, what: str
) -> None:
    """Poll GET `url` until it answers 200; fail at once, with the log, if the process exits."""

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout_s, f"{what} to answer {url}")


@dataclass
class RedisServer:
    """A throwaway redis-server on a free port; stop() and start() keep the port."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            # DEBUG SLEEP (local only) lets a test make Redis slow for real.
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10.0, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class Service:
    """`ubs-embed serve` in its own process, on a free port."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_service(bundle: Path, log_dir: Path, **env: str) -> Service:
    """Start the service with settings from `env` (UBS_* names) and wait until /readyz says ready."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UBS_") and k != "REDIS_URL"}
    clean.update(env)
    clean["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    log_path = log_dir / f"service-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "model.cli", "serve", "--bundle", str(bundle), "--port", str(port)],
            cwd=REPO_ROOT,
            env=clean,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log_path)
    wait_until_answering(process, service.url + "/readyz", service.log, START_TIMEOUT_S, "the service")
    return service
