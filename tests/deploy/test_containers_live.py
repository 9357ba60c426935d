"""What the containers run, run here for real: the health check command, the nginx load
balancer in front of the service, and a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import REPO_ROOT, find_tool, post_embeds, run

HEALTHCHECK = REPO_ROOT / "deploy" / "healthcheck.py"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx" / "nginx.conf"
NGINX_HINT = "apt-get install nginx"


def healthcheck(port: int, route: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(HEALTHCHECK), route], env={"UBS_PORT": str(port), "PATH": "/usr/bin:/bin"})


def test_healthcheck_passes_on_the_live_service(deploy_service: Any) -> None:
    port = int(deploy_service.url.rsplit(":", 1)[1])
    for route in ("/healthz", "/readyz"):
        result = healthcheck(port, route)
        assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_answers_or_the_route_is_wrong(deploy_service: Any) -> None:
    from tests.app.service_helpers import free_port

    closed = healthcheck(free_port(), "/healthz")
    assert closed.returncode == 1 and "Connection refused" in closed.stderr
    port = int(deploy_service.url.rsplit(":", 1)[1])
    missing = healthcheck(port, "/no-such-route")
    assert missing.returncode == 1 and "404" in missing.stderr


def nginx_config(listen_port: int, service_url: str) -> str:
    """The deploy config, listening on a free port and forwarding to the local service instead of `api`."""
    text = NGINX_CONF.read_text()
    assert "listen 8000;" in text and "http://api:8000" in text
    return text.replace("listen 8000;", f"listen 127.0.0.1:{listen_port};").replace("http://api:8000", service_url)


def test_nginx_accepts_the_deploy_config() -> None:
    nginx = find_tool("nginx", NGINX_HINT)
    result = run([nginx, "-t", "-q", "-e", "/dev/stderr", "-c", str(NGINX_CONF)])
    assert result.returncode == 0, result.stderr


@pytest.fixture
def load_balancer(deploy_service: Any, tmp_path: Path) -> Iterator[str]:
    from tests.app.service_helpers import free_port, wait_until_answering

    nginx = find_tool("nginx", NGINX_HINT)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(port, deploy_service.url))
    with (tmp_path / "nginx.log").open("wb") as log:  # nginx keeps its own copy of the descriptor
        process = subprocess.Popen(
            [nginx, "-e", "/dev/stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, url + "/lb-healthz", (tmp_path / "nginx.log").read_text, 15.0, "nginx")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_load_balancer_forwards_embed_and_large_bodies(
    load_balancer: str, deploy_service: Any, ml100k_histories: list[list[dict[str, Any]]]
) -> None:
    assert post_embeds(load_balancer, ml100k_histories, requests=2) == 2
    assert httpx.get(load_balancer + "/readyz").status_code == 200
    # A body over nginx's default 1 MiB but under the service's 8 MiB still reaches the service.
    events = ml100k_histories[0] + ml100k_histories[1]  # 100 events, about 7 KB
    body = {"sequences": [{"id": f"s{i}", "events": events} for i in range(256)]}
    size = len(json.dumps(body))
    assert 1 << 20 < size < 8 << 20, size
    response = httpx.post(load_balancer + "/embed", json=body, timeout=60.0)
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 256


def test_sigterm_lets_the_request_in_flight_finish(
    ml100k_bundle: Any, tmp_path: Path, ml100k_histories: list[list[dict[str, Any]]]
) -> None:
    """The image's STOPSIGNAL: a request already being received when SIGTERM arrives still gets
    its 200, new connections are refused, and the process then shuts down cleanly (uvicorn
    re-raises the SIGTERM after its graceful shutdown, so the status is 0 or "killed by SIGTERM")."""
    from tests.app.service_helpers import start_service, wait_until

    service = start_service(Path(getattr(ml100k_bundle, "path", ml100k_bundle)), tmp_path)
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps({"sequences": [{"id": "u1", "events": ml100k_histories[0]}]}).encode()
    head = (
        f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head + body[:10])  # the request has started: headers and part of the body
            time.sleep(0.5)
            service.process.send_signal(signal.SIGTERM)

            def refusing() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return False
                except OSError:
                    return True

            wait_until(refusing, 10.0, "the service to stop accepting connections")
            assert service.process.poll() is None, "the service must wait for the request in flight"
            conn.sendall(body[10:])
            response = b""
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                response += chunk
        status_line = response.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 200 OK", response[:300]
        payload = json.loads(response.split(b"\r\n\r\n", 1)[1])
        assert payload["embeddings"][0]["id"] == "u1"
        assert service.process.wait(timeout=30) in (0, -signal.SIGTERM), service.log()
        assert "Application shutdown complete" in service.log()
    finally:
        service.stop()
