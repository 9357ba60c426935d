"""Fixtures for the service tests: real Redis servers, real uvicorn servers, real ml-100k histories."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import RedisServer, Service, start_service

from model.bundle import VERSION_FILE, load_bundle

# -- bundles ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle_dir(ml100k_bundle: Path) -> Path:
    """The real model trained on ml-100k (from tests/conftest.py)."""
    return ml100k_bundle


@pytest.fixture(scope="session")
def second_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model under another model_version: what a redeploy of a new model looks like to the cache."""
    import onnx

    target = tmp_path_factory.mktemp("bundle-v2") / "bundle"
    shutil.copytree(bundle_dir, target)
    version = load_bundle(bundle_dir).model_version + "-v2"
    (target / VERSION_FILE).write_text(version + "\n")
    graph = onnx.load(str(target / "model.onnx"))
    for prop in graph.metadata_props:
        if prop.key == "model_version":
            prop.value = version
    onnx.save(graph, str(target / "model.onnx"))
    return target


@pytest.fixture(scope="session")
def mismatched_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose vocabulary lists items the ONNX embedding table lacks.

    Encoding one of those items gives an index past the table, and onnxruntime's
    Gather fails for real: the one fault the service can meet inside a batch.
    """
    target = tmp_path_factory.mktemp("bundle-mismatch") / "bundle"
    shutil.copytree(bundle_dir, target)
    state = json.loads((target / "preprocess.json").read_text())
    state["item_ids"] = [*state["item_ids"], *(f"beyond-table-{i}" for i in range(1000))]
    (target / "preprocess.json").write_text(json.dumps(state))
    return target


# -- real data --------------------------------------------------------------------


@pytest.fixture(scope="session")
def ml100k_events(data_dir: Path) -> list[list[dict[str, Any]]]:
    """Every ml-100k user's history as raw API events, oldest first."""
    from model.data import load_events, user_histories

    histories = user_histories(load_events(data_dir / "ml-100k", "movielens"))
    return [
        [
            {"item_id": str(item), "timestamp": int(ts), "event_type": str(kind)}
            for item, ts, kind in zip(h.item_ids, h.seconds, h.event_types, strict=True)
        ]
        for h in histories
    ]


# -- Redis ------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


# -- the service ------------------------------------------------------------------


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start services for one test; all are stopped afterwards."""
    started: list[Service] = []

    def factory(bundle: Path, **env: str) -> Service:
        service = start_service(bundle, tmp_path, **env)
        started.append(service)
        return service

    yield factory
    for service in started:
        service.stop()
