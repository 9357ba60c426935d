"""docker-compose.yml (and the GPU override), validated by a real Docker Compose v2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings, env_name
from tests.deploy.conftest import REPO_ROOT, compose_command, run
from tests.deploy.dockerfile import read_stages

BASE = ["-f", "docker-compose.yml"]
GPU = [*BASE, "-f", "docker-compose.gpu.yml"]
SETTINGS_ENV = {env_name(field) for field in Settings.model_fields}


def compose_config(files: list[str], repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The project as Compose resolves it, with the defaults (no UBS_* or compose variables set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UBS_", "COMPOSE_", "DOCKER_", "GRAFANA_"))}
    env.pop("REDIS_URL", None)
    env.pop("PROMETHEUS_PORT", None)
    cmd = [*compose_command(), "--project-directory", str(repo), *files, "config", "--format", "json"]
    result = run(cmd, cwd=repo, env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return compose_config(BASE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return compose_config(GPU)


def test_compose_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The validator is real: the same file with one wrong key fails."""
    text = (REPO_ROOT / "docker-compose.yml").read_text().replace("    healthcheck:\n", "    helthcheck:\n", 1)
    (tmp_path / "docker-compose.yml").write_text(text)
    cmd = [*compose_command(), "--project-directory", str(tmp_path), *BASE, "config", "--quiet"]
    result = run(cmd, cwd=tmp_path)
    assert result.returncode != 0 and "helthcheck" in result.stderr


@pytest.mark.parametrize("which", ["base", "gpu"])
def test_every_mounted_and_built_path_exists_in_the_repo(which: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(which)
    checked = 0
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.is_relative_to(REPO_ROOT), f"{name} mounts {source}, outside the repo"
                assert source.exists(), f"{name} mounts {source}, which does not exist"
                checked += 1
        if "build" in service:
            context = Path(service["build"]["context"])
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name} builds from {dockerfile}, which does not exist"
            assert service["build"]["target"] in read_stages(dockerfile), f"{name}: no such Dockerfile target"
            checked += 1
    assert checked >= 6


def test_redis_is_a_cache_without_persistence(base: dict[str, Any]) -> None:
    command = base["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--maxmemory-policy"] == "allkeys-lru"
    assert flags["--maxmemory"].endswith(("mb", "gb"))
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    assert not base["services"]["redis"].get("volumes")


def test_the_stack_comes_up_in_order(base: dict[str, Any]) -> None:
    services = base["services"]
    api = services["api"]
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("redis", "api", "lb", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "/readyz" in api["healthcheck"]["test"]
    assert services["trainer"]["restart"] == "no"


def test_trainer_writes_the_bundle_the_api_reads(base: dict[str, Any]) -> None:
    services = base["services"]
    trainer_mounts = {v["target"]: v for v in services["trainer"]["volumes"]}
    api_mounts = {v["target"]: v for v in services["api"]["volumes"]}
    assert trainer_mounts["/bundles"]["source"] == api_mounts["/bundles"]["source"] == "bundles"
    assert api_mounts["/bundles"]["read_only"] is True
    assert trainer_mounts["/data"]["type"] == "bind" and trainer_mounts["/data"]["read_only"] is True
    bundle = services["api"]["environment"]["UBS_BUNDLE_DIR"]
    assert bundle == services["trainer"]["environment"]["UBS_BUNDLE_DIR"] == "/bundles/default"


def test_api_on_cpu_by_default_and_on_a_reserved_gpu_with_the_override(
    base: dict[str, Any], gpu: dict[str, Any]
) -> None:
    cpu_api, gpu_api = base["services"]["api"], gpu["services"]["api"]
    assert cpu_api["build"]["target"] == "cpu" and "reservations" not in cpu_api.get("deploy", {}).get("resources", {})
    assert gpu_api["build"]["target"] == "gpu"
    assert gpu_api["environment"]["UBS_PROVIDER"] == "cuda"
    (device,) = gpu_api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert gpu_api["environment"]["REDIS_URL"] == cpu_api["environment"]["REDIS_URL"]


@pytest.mark.parametrize("which", ["base", "gpu"])
def test_api_environment_names_are_real_settings(which: str, request: pytest.FixtureRequest) -> None:
    environment = request.getfixturevalue(which)["services"]["api"]["environment"]
    unknown = {name for name in environment if name.startswith("UBS_") or name == "REDIS_URL"} - SETTINGS_ENV
    assert not unknown, f"not settings of app/config.py: {sorted(unknown)}"


def test_published_ports(base: dict[str, Any]) -> None:
    published = {
        name: {int(p["published"]) for p in service.get("ports", [])} for name, service in base["services"].items()
    }
    assert published["lb"] == {8000} and published["prometheus"] == {9090} and published["grafana"] == {3000}
    # The api publishes nothing itself, so `--scale api=N` cannot collide on a host port.
    assert not published["api"]
