"""The Kubernetes manifests, validated against the Kubernetes OpenAPI schemas and against each other."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings, env_name
from tests.deploy.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
# The oldest release the manifests support (the preStop `sleep` action) and the newest schemas.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
API = {"app.kubernetes.io/name": "ubs-embed", "app.kubernetes.io/component": "api"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = sorted(K8S.rglob("*.yaml"))


def by_kind(kind: str, folder: Path = K8S) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in documents(path) if doc["kind"] == kind]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (vendors the Kubernetes JSON schemas)"
    )
    docs = documents(path)
    assert docs
    for doc in docs:
        # strict: unknown fields (a misspelt key) are errors, as `kubectl apply --validate=strict` has them.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    broken = yaml.safe_load(yaml.safe_dump(api_deployments()[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def api_deployments() -> list[dict[str, Any]]:
    """The CPU Deployment (deploy/k8s/) and its GPU variant (deploy/k8s/gpu/), in that order."""
    deployments = by_kind("Deployment") + by_kind("Deployment", K8S / "gpu")
    return [d for d in deployments if d["metadata"]["name"] == "ubs-embed-api"]


def test_cpu_and_gpu_variants_are_the_same_deployment_behind_one_service() -> None:
    cpu, gpu = api_deployments()
    assert cpu["metadata"]["name"] == gpu["metadata"]["name"] == "ubs-embed-api"
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "ubs-embed-api"]
    (pdb,) = by_kind("PodDisruptionBudget")
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    for deployment in (cpu, gpu):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == API
        assert service["spec"]["selector"].items() <= labels.items()
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ubs-embed-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_probes_resources_and_graceful_stop(variant: str) -> None:
    deployment = dict(zip(["cpu", "gpu"], api_deployments(), strict=True))[variant]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["image"] == f"ubs-embed:{variant}"
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
    gpus = resources["limits"].get("nvidia.com/gpu")
    assert gpus == (1 if variant == "gpu" else None)
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env.get("UBS_PROVIDER") == ("cuda" if variant == "gpu" else None)
    # preStop pause + the service's 30 s graceful shutdown (app/serve.py) fit in the grace period.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + 30
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/bundles"]["readOnly"] is True


def test_configuration_comes_from_the_configmap_and_the_secret() -> None:
    (configmap,) = by_kind("ConfigMap")
    (secret,) = by_kind("Secret")
    settings_env = {env_name(field) for field in Settings.model_fields}
    assert set(configmap["data"]) <= settings_env, set(configmap["data"]) - settings_env
    assert set(secret["stringData"]) == {"UBS_API_KEY"}
    assert "UBS_API_KEY" not in configmap["data"]
    assert configmap["data"]["REDIS_URL"].startswith("redis://ubs-embed-redis:6379")
    assert configmap["data"]["UBS_HOST"] == "0.0.0.0"
    # The values parse as real settings.
    fields = {env_name(field): field for field in Settings.model_fields}
    settings = Settings(**{fields[name]: value for name, value in configmap["data"].items()})
    assert settings.port == 8000 and str(settings.bundle_dir) == "/bundles/default"
    for deployment in api_deployments():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert sources == {configmap["metadata"]["name"], secret["metadata"]["name"]}


def test_redis_is_a_cache_without_persistence() -> None:
    (redis,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "ubs-embed-redis"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    flags = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert flags["--maxmemory-policy"] == "allkeys-lru"
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "ubs-embed-redis"]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()


def test_the_bundle_job_writes_the_volume_the_api_reads() -> None:
    (job,) = by_kind("Job")
    pod = job["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    (configmap,) = by_kind("ConfigMap")
    assert env["UBS_BUNDLE_DIR"] == configmap["data"]["UBS_BUNDLE_DIR"]
    pvcs = {p["metadata"]["name"] for p in by_kind("PersistentVolumeClaim")}
    assert set(mounts.values()) <= pvcs
    for deployment in api_deployments():
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        (bundles,) = [v for v in volumes if v["name"] == "bundles"]
        assert bundles["persistentVolumeClaim"]["claimName"] == mounts["/bundles"]


def container_env(container: dict[str, Any], configmap: dict[str, Any] | None = None) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: the ConfigMap (envFrom), then `env`, which wins."""
    env = dict(configmap["data"]) if configmap else {}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_onnxruntime_threads_match_each_variants_cpu_limit(variant: str) -> None:
    """The ConfigMap's UBS_INTRA_OP_THREADS fits the CPU pod; the GPU pod, with more CPUs, sets its own."""
    deployment = dict(zip(["cpu", "gpu"], api_deployments(), strict=True))[variant]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (configmap,) = by_kind("ConfigMap")
    threads = int(container_env(container, configmap)["UBS_INTRA_OP_THREADS"])
    assert threads == cpus(container["resources"]["limits"]["cpu"])


def wait_script(container: dict[str, Any]) -> str:
    shell, flag, script = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    return str(script)


def still_waiting(script: str, seconds: float = 1.0, **env: str) -> bool:
    """Run an init container's script here with `env`; True when it is still waiting after `seconds`."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", script],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # so that its `sleep` goes with it
    )
    try:
        code = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True
    assert code == 0, f"the wait script exited with {code}"
    return False


def test_the_training_job_waits_until_the_data_is_in(tmp_path: Path) -> None:
    """`kubectl apply -f deploy/k8s/` creates the data volume and the Job together: the Job must not
    train (on the synthetic generator) before ml-100k is copied in, or USE_SYNTHETIC asks for it."""
    (job,) = by_kind("Job")
    pod = job["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    (trainer,) = pod["containers"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    data = container_env(trainer)["UBS_TRAIN_DATA"]
    (trainer_mount,) = [m for m in trainer["volumeMounts"] if m["mountPath"] == data]
    (wait_mount,) = [m for m in wait["volumeMounts"] if m["mountPath"] == data]
    assert claims[wait_mount["name"]] == claims[trainer_mount["name"]] == "ubs-embed-data"
    # The data is copied in through the waiting container (`kubectl cp -c wait-for-data`): it alone may write.
    assert trainer_mount.get("readOnly") is True and not wait_mount.get("readOnly", False)
    assert wait["image"] == trainer["image"] == "ubs-embed:train"
    assert container_env(wait)["UBS_TRAIN_DATA"] == data

    script = wait_script(wait)
    folder = tmp_path / "data"
    folder.mkdir()
    assert still_waiting(script, UBS_TRAIN_DATA=str(folder))
    (folder / "ml-100k.partial").mkdir()  # a copy in progress, under its temporary name
    (folder / "ml-100k.partial" / "u.data").write_text("1\t2\t3\t881250949\n")
    assert still_waiting(script, UBS_TRAIN_DATA=str(folder))
    (folder / "ml-100k.partial").rename(folder / "ml-100k")
    assert not still_waiting(script, UBS_TRAIN_DATA=str(folder))
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    (synthetic / "USE_SYNTHETIC").touch()
    assert not still_waiting(script, UBS_TRAIN_DATA=str(synthetic))


def test_retraining_runs_the_same_job_with_UBS_RETRAIN() -> None:
    """The Job trains once (train-bundle.sh keeps an existing bundle); the suspended CronJob is the
    same Job with UBS_RETRAIN=1, run by hand with `kubectl create job --from=cronjob/...`."""
    (job,) = by_kind("Job")
    (cronjob,) = by_kind("CronJob")
    assert cronjob["spec"]["suspend"] is True
    retrain = yaml.safe_load(yaml.safe_dump(cronjob["spec"]["jobTemplate"]["spec"]))
    (trainer,) = retrain["template"]["spec"]["containers"]
    assert container_env(trainer).get("UBS_RETRAIN") == "1"
    trainer["env"] = [e for e in trainer["env"] if e["name"] != "UBS_RETRAIN"]
    assert retrain == job["spec"], "the retraining Job differs from ubs-embed-train in more than UBS_RETRAIN"
    (first,) = job["spec"]["template"]["spec"]["containers"]
    assert container_env(first).get("UBS_RETRAIN", "0") != "1"


def test_api_pods_wait_for_the_bundle(tmp_path: Path) -> None:
    """An API pod created before the Job has finished waits in an init container instead of crash-looping."""
    (configmap,) = by_kind("ConfigMap")
    scripts = set()
    for deployment in api_deployments():
        pod = deployment["spec"]["template"]["spec"]
        (wait,) = pod["initContainers"]
        (api,) = pod["containers"]
        assert wait["image"] == api["image"]
        (source,) = [e["valueFrom"]["configMapKeyRef"] for e in wait["env"] if e["name"] == "UBS_BUNDLE_DIR"]
        assert source == {"name": configmap["metadata"]["name"], "key": "UBS_BUNDLE_DIR"}
        mounts = {m["mountPath"]: m for m in wait["volumeMounts"]}
        assert mounts["/bundles"]["name"] == "bundles" and mounts["/bundles"]["readOnly"] is True
        scripts.add(wait_script(wait))
    (script,) = scripts
    bundle = tmp_path / "bundles" / "default"
    assert still_waiting(script, UBS_BUNDLE_DIR=str(bundle))
    bundle.mkdir(parents=True)
    (bundle / "model_version").write_text("0123456789abcdef\n")
    assert not still_waiting(script, UBS_BUNDLE_DIR=str(bundle))
