"""The exported bundle: one directory that holds everything serving needs.

Layout (all plain files, no pickle):
    model.onnx            the compressor; inputs features.INPUT_NAMES, output "embedding"
    preprocess.json       Preprocessor state (max_len, vocabulary, type map, statistics)
    item_embeddings.npy   float32 (num_items, dim), row i scores the item of index i
    item_ids.json         item id of every row (reserved rows are null)
    metrics.json          evaluation of this bundle
    training_curves.png   loss and validation metric per epoch
    model_version         content hash of the files above (also in the ONNX metadata)

numpy only, like features.py: the service imports it without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from model.features import Preprocessor

MODEL_FILE = "model.onnx"
PREPROCESS_FILE = "preprocess.json"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
ITEM_IDS_FILE = "item_ids.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
VERSION_FILE = "model_version"
CONFIG_FILE = "config.json"

# Files whose bytes define the model version. model.onnx itself carries the
# version in its metadata, so the hash is taken over the graph before that
# metadata is written (see model/export.py); here it is over the state files.
HASHED_FILES = (PREPROCESS_FILE, ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE)


class BundleError(RuntimeError):
    """A bundle directory that is missing or incomplete."""


def content_hash(paths: list[Path], extra: bytes = b"") -> str:
    """Short content hash over the given files (in order) and extra bytes."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(extra)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Bundle:
    path: Path
    preprocessor: Preprocessor
    model_version: str
    config: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def max_len(self) -> int:
        return self.preprocessor.max_len

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @cached_property
    def item_embeddings(self) -> np.ndarray:
        return np.load(self.path / ITEM_EMBEDDINGS_FILE, allow_pickle=False)

    @cached_property
    def item_ids(self) -> list[str | None]:
        ids: list[str | None] = json.loads((self.path / ITEM_IDS_FILE).read_text())
        return ids

    @cached_property
    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.exists() else {}


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle directory; a clear BundleError when something is missing."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist (train one with `ubs-embed train`)")
    for name in (MODEL_FILE, PREPROCESS_FILE, VERSION_FILE, CONFIG_FILE):
        if not (root / name).is_file():
            raise BundleError(f"bundle {root} is incomplete: {name} is missing")
    preprocessor = Preprocessor.from_json(json.loads((root / PREPROCESS_FILE).read_text()))
    config = json.loads((root / CONFIG_FILE).read_text())
    version = (root / VERSION_FILE).read_text().strip()
    return Bundle(root, preprocessor, version, config)
