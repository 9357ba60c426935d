"""The images' commands, run outside a container: the Dockerfile's install, train and serve steps
in fresh virtual environments, so that a broken install step cannot hide behind a missing Docker engine.

- the wheel: built once from the files the Dockerfile's `wheel` stage copies, with its own `pip wheel` line;
- the service (`cpu` target): `pip install --constraint deploy/constraints.txt <wheel>` in a fresh venv,
  which must import onnxruntime, app and model but not torch, and hold only pinned packages;
- the trainer (`train` target): CPU torch, then `<wheel>[train]`, then deploy/train-bundle.sh, its
  entrypoint, on the synthetic path: trains once, skips when the bundle exists, retrains on request;
- serving: `ubs-embed serve` from the service venv on that bundle, probed with deploy/healthcheck.py
  as the image's HEALTHCHECK does, one real /embed call, then SIGTERM and a clean exit.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.app.service_helpers import START_TIMEOUT_S, Service, free_port, wait_until_answering
from tests.deploy.conftest import DEPLOY, REPO_ROOT
from tests.deploy.dockerfile import Stage, read_stages

pytestmark = pytest.mark.slow

CONSTRAINTS = DEPLOY / "constraints.txt"
TRAIN_BUNDLE = DEPLOY / "train-bundle.sh"
HEALTHCHECK = DEPLOY / "healthcheck.py"
# Installed by `python -m venv` or as packaging tools, not by the project. (In the train venv setuptools is
# also a requirement of torch, `setuptools>=77.0.3`; the constraints file pins the release pip takes there.)
TOOLING = {"pip", "setuptools", "wheel", "ubs-embed"}
# Small and short, so the whole file stays well under a few minutes on two busy cores.
SHORT_TRAINING = [
    "--synthetic-users",
    "200",
    "--synthetic-items",
    "300",
    "--epochs",
    "2",
    "--time-budget-s",
    "20",
    "--no-progress",
]
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return read_stages(REPO_ROOT / "Dockerfile")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings of the service, of the dev venv or of the repo checkout.

    pip's own configuration (its config files, PIP_FIND_LINKS) stays: it is how this machine finds its wheels.
    """
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REDIS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("UBS_")}
    # As the images set them.
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def sh(
    cmd: list[str], *, cwd: Path | None = None, timeout_s: float = 120, stdout_only: bool = False, **env: str
) -> str:
    """Run a command to success and return its stdout and stderr (or stdout only); fail with both otherwise.

    It runs in `cwd`, else in an empty folder: never in the checkout, whose app/ and model/ would
    shadow the installed ones for `python -c`.
    """
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run(
            cmd, cwd=cwd or empty, env=clean_env(**env), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} exited with {result.returncode}:\n{output}"
    return result.stdout if stdout_only else output


def constraint_pins() -> dict[str, str]:
    """deploy/constraints.txt as {canonical name: version}; every line is `name==version`."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: not an exact pin: {line}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def installed(venv: Path) -> dict[str, str]:
    """{canonical name: version} of every distribution in the venv, as that venv's pip lists them."""
    listing = sh([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], stdout_only=True)
    return {canonicalize_name(row["name"]): row["version"] for row in json.loads(listing)}


def unpinned(venv: Path) -> list[str]:
    """Installed distributions that constraints.txt does not pin at the installed version.

    A pin `==2.13.0` is met by the local build `2.13.0+cpu`, exactly as pip applies it.
    """
    pins = constraint_pins()
    wrong = []
    for name, version in sorted(installed(venv).items()):
        if name in TOOLING:
            continue
        if name not in pins:
            wrong.append(f"{name}=={version} (not in constraints.txt)")
        elif not SpecifierSet(f"=={pins[name]}").contains(Version(version), prereleases=True):
            wrong.append(f"{name}=={version} (constraints.txt pins {pins[name]})")
    return wrong


def make_venv(path: Path) -> Path:
    """A fresh virtual environment without system site packages, from this Python's base interpreter."""
    sh([sys.executable, "-m", "venv", str(path)])
    assert "include-system-site-packages = false" in (path / "pyvenv.cfg").read_text()
    return path


def dockerignored(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatch(relative, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(name, pattern[3:]))
        for pattern in patterns
    )


@pytest.fixture(scope="module")
def wheel(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project wheel, built like the Dockerfile's `wheel` stage: its COPY lines (less what
    .dockerignore keeps out of the context), then its `pip wheel` line with the output folder here."""
    stage = stages["wheel"]
    root = tmp_path_factory.mktemp("wheel")
    src, wheels = root / "src", root / "wheels"
    ignore_lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip().rstrip("/") for p in ignore_lines if p.strip() and not p.startswith("#")]

    def ignore(folder: str, names: list[str]) -> set[str]:
        base = Path(folder).relative_to(REPO_ROOT).as_posix()
        return {n for n in names if dockerignored(f"{base}/{n}", patterns)}

    for args in stage.args("COPY"):
        *sources, target = args.split()
        assert not any(s.startswith("--") for s in sources), f"wheel stage: COPY {args}"
        for source in sources:
            origin = REPO_ROOT / source
            to = src / target / origin.name if target.endswith("/") else src / target
            if origin.is_dir():
                shutil.copytree(origin, to, ignore=ignore)
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, to)
    (command,) = stage.args("RUN")
    words = command.split()
    assert words[:2] == ["pip", "wheel"] and "--wheel-dir" in words, f"wheel stage: RUN {command}"
    words[words.index("--wheel-dir") + 1] = str(wheels)
    sh([sys.executable, "-m", *words], cwd=src, timeout_s=INSTALL_TIMEOUT_S)
    (built,) = wheels.glob("ubs_embed-*.whl")
    return built


@pytest.fixture(scope="module")
def service_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `cpu` target's install: the wheel with the constraints, nothing else."""
    venv = make_venv(tmp_path_factory.mktemp("service") / "venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    sh([*pip, "--constraint", str(CONSTRAINTS), str(wheel)], timeout_s=INSTALL_TIMEOUT_S)
    return venv


def torch_requirement(stages: dict[str, Stage]) -> str:
    """The torch requirement of the Dockerfile's `train` stage, e.g. `torch==2.13.0+cpu`."""
    (match,) = {m for args in stages["train"].args("RUN") for m in re.findall(r"torch==[\w.+]+", args)}
    return match


@pytest.fixture(scope="module")
def train_venv(wheel: Path, stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `train` target's install: CPU torch first, then `<wheel>[train]`, both with the constraints.

    constraints.txt pins `torch==2.13.0` and the Dockerfile asks for `torch==2.13.0+cpu`: a pin without
    a local label is met by every local build of that version (PEP 440), so the two do not conflict
    (test_the_torch_pin_admits_the_cpu_build checks it). The Dockerfile finds the +cpu build on
    PyTorch's own index (--extra-index-url); this machine has it on disk where pip looks (find-links),
    so the index is left out: only that build can match, and no CUDA build (gigabytes) is ever fetched.
    """
    venv = make_venv(tmp_path_factory.mktemp("train") / "venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--constraint", str(CONSTRAINTS)]
    sh([*pip, torch_requirement(stages)], timeout_s=INSTALL_TIMEOUT_S)
    sh([*pip, f"{wheel}[train]"], timeout_s=INSTALL_TIMEOUT_S)
    return venv


def train_bundle(train_venv: Path, bundle: Path, no_data: Path, **env: str) -> str:
    """deploy/train-bundle.sh (the train image's entrypoint) with that venv's commands first on PATH."""
    path = f"{train_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return sh(
        ["/bin/sh", str(TRAIN_BUNDLE), *SHORT_TRAINING],
        timeout_s=300,
        PATH=path,
        UBS_BUNDLE_DIR=str(bundle),
        UBS_TRAIN_DATA=str(no_data),
        **env,
    )


@pytest.fixture(scope="module")
def bundle(train_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained by train-bundle.sh on the synthetic path (its data folder holds no ml-100k)."""
    root = tmp_path_factory.mktemp("bundles")
    path, no_data = root / "bundles" / "default", root / "data"
    no_data.mkdir()
    output = train_bundle(train_venv, path, no_data)
    assert "training on the synthetic generator" in output, output
    assert (path / "model_version").is_file(), output
    assert f"model_version {(path / 'model_version').read_text().strip()}" in output, output
    return path


def test_the_torch_pin_admits_the_cpu_build(stages: dict[str, Stage]) -> None:
    pinned = constraint_pins()["torch"]
    wanted = torch_requirement(stages).removeprefix("torch==")
    assert Version(wanted).local == "cpu", f"the train image must install the CPU build, not torch=={wanted}"
    assert SpecifierSet(f"=={pinned}").contains(wanted), f"constraints.txt torch=={pinned} refuses torch=={wanted}"


def test_the_service_install_has_the_runtime_and_no_torch(service_venv: Path) -> None:
    python = str(service_venv / "bin" / "python")
    where = sh([python, "-c", "import onnxruntime, app, model; print(app.__file__); print(model.__file__)"])
    for line in where.split():
        assert Path(line).is_relative_to(service_venv), f"imported from outside the venv: {line}"
    result = subprocess.run(
        [python, "-c", "import torch"], cwd=service_venv, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr, result.stdout + result.stderr


def test_every_service_package_is_pinned(service_venv: Path) -> None:
    assert unpinned(service_venv) == []


def test_the_command_line_works_without_torch(service_venv: Path) -> None:
    command = str(service_venv / "bin" / "ubs-embed")
    assert "serve" in sh([command, "--help"])
    assert "--bundle" in sh([command, "serve", "--help"])


def test_every_training_package_is_pinned(train_venv: Path) -> None:
    versions = installed(train_venv)
    assert Version(versions["torch"]).local == "cpu", f"torch {versions['torch']} is not the CPU build"
    assert unpinned(train_venv) == []


def test_train_bundle_skips_an_existing_bundle_and_retrains_on_request(bundle: Path, train_venv: Path) -> None:
    no_data = bundle.parents[1] / "data"
    version = (bundle / "model_version").read_text().strip()
    marker = bundle / "left-by-the-first-run"
    marker.touch()

    again = train_bundle(train_venv, bundle, no_data)
    assert f"bundle {bundle} exists (model_version {version})" in again, again
    assert "training on" not in again, again
    assert marker.exists(), "the second run touched the bundle"

    retrained = train_bundle(train_venv, bundle, no_data, UBS_RETRAIN="1")
    assert "training on the synthetic generator" in retrained, retrained
    assert "ready (model_version" in retrained, retrained
    # The new bundle replaced the folder as a whole, and nothing half-written is left beside it.
    assert not marker.exists() and (bundle / "model_version").is_file()
    assert sorted(p.name for p in bundle.parent.iterdir()) == [bundle.name]


def healthcheck(service_venv: Path, route: str, port: int) -> subprocess.CompletedProcess[str]:
    """deploy/healthcheck.py as the image's HEALTHCHECK runs it: the image's python, UBS_PORT from the env."""
    return subprocess.run(
        [str(service_venv / "bin" / "python"), str(HEALTHCHECK), route],
        cwd=service_venv,
        env=clean_env(UBS_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=10,
    )


def start_installed_service(service_venv: Path, bundle: Path, log_dir: Path) -> tuple[Service, int]:
    """`ubs-embed serve` as the `cpu` image's CMD runs it: no arguments, settings from the environment.

    (tests/app/service_helpers.start_service runs the repo checkout with the dev interpreter; this one
    must run the installed wheel, so only its waiting and stopping are reused.)
    """
    port = free_port()
    log_path = log_dir / f"service-{port}.log"
    env = clean_env(UBS_BUNDLE_DIR=str(bundle), UBS_HOST="127.0.0.1", UBS_PORT=str(port))
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(service_venv / "bin" / "ubs-embed"), "serve"],
            cwd=log_dir,  # not the checkout: only the installed packages can be imported
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log_path)
    wait_until_answering(process, service.url + "/readyz", service.log, START_TIMEOUT_S, "the installed service")
    return service, port


def test_the_installed_service_serves_the_trained_bundle(service_venv: Path, bundle: Path, tmp_path: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    preprocess = json.loads((bundle / "preprocess.json").read_text())
    version = (bundle / "model_version").read_text().strip()
    items, kinds = preprocess["item_ids"][:3], preprocess["event_types"]
    service, port = start_installed_service(service_venv, bundle, tmp_path)
    try:
        for route in ("/healthz", "/readyz"):
            probe = healthcheck(service_venv, route, port)
            assert probe.returncode == 0, f"healthcheck {route}: {probe.stdout}{probe.stderr}"
        events = [
            {"item_id": item, "timestamp": 1_700_000_000 + 60 * i, "event_type": kinds[i % len(kinds)]}
            for i, item in enumerate(items)
        ]
        response = httpx.post(
            service.url + "/embed", json={"sequences": [{"id": "u1", "events": events}]}, timeout=30.0
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == version and body["dim"] == config["dim"]
        (row,) = body["embeddings"]
        assert row["id"] == "u1" and row["events_used"] == 3 and row["unknown_items"] == 0
        assert len(row["embedding"]) == config["dim"]
    finally:
        code = service.stop(signal.SIGTERM, timeout_s=40.0)
    log = service.log()
    # uvicorn re-raises SIGTERM once its graceful shutdown is done (tests/app/test_service_http.py), so the
    # status alone cannot tell a clean stop from a kill by the signal: the shutdown must be in the log too.
    assert code in (0, -signal.SIGTERM), f"exit status {code} after SIGTERM:\n{log}"
    assert "Application shutdown complete" in log and "Finished server process" in log, log
    assert "Traceback" not in log, log
    # Down is down for the HEALTHCHECK too.
    assert healthcheck(service_venv, "/healthz", port).returncode == 1
