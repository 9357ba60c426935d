"""The exported bundle: layout, ONNX graph, and torch-vs-onnxruntime parity on real sequences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from model.bundle import HASHED_FILES, content_hash, load_bundle
from model.cli import main
from model.data import load_events, user_histories
from model.evaluate import onnx_vectors
from model.export import PADDING_ATOL, PARITY_ATOL, check_parity, load_checkpoint, parity_cases
from model.features import INPUT_NAMES, OUTPUT_NAME, pad_batch
from model.train import CHECKPOINT_FILE


@pytest.fixture(scope="module")
def ml100k_histories(data_dir: Path) -> list:
    return user_histories(load_events(data_dir / "ml-100k", "movielens"))


def test_bundle_loads_with_consistent_version_and_metadata(ml100k_bundle: Path) -> None:
    bundle = load_bundle(ml100k_bundle)
    proto = onnx.load(str(bundle.onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == {"model_version": bundle.model_version, "dim": str(bundle.dim), "max_len": str(bundle.max_len)}
    assert bundle.dim == 64
    # The version is the content hash of the state files and the graph before its metadata was added.
    del proto.metadata_props[:]
    expected = content_hash([ml100k_bundle / name for name in HASHED_FILES], extra=proto.SerializeToString())
    assert bundle.model_version == expected
    assert bundle.item_embeddings.shape == (bundle.preprocessor.num_items, bundle.dim)
    assert bundle.item_embeddings.dtype == np.float32
    assert bundle.item_ids[:2] == [None, None] and bundle.item_ids[2:] == bundle.preprocessor.item_ids
    assert (ml100k_bundle / "training_curves.png").stat().st_size > 0
    assert "test" in bundle.metrics


def test_graph_is_opset_17_with_dynamic_axes_and_no_fused_encoder(ml100k_bundle: Path) -> None:
    proto = onnx.load(str(ml100k_bundle / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in proto.graph.node}
    assert not any("Transformer" in op or "MultiHeadAttention" in op for op in ops)
    assert {"MatMul", "Softmax"} <= ops
    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == list(INPUT_NAMES)
    for name in INPUT_NAMES:
        dims = inputs[name].type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, f"{name} batch and length must be dynamic"
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]


def test_onnx_matches_torch_on_real_sequences(ml100k_bundle: Path, ml100k_histories: list) -> None:
    model, pre, _ = load_checkpoint(ml100k_bundle / CHECKPOINT_FILE)
    report = check_parity(model, ml100k_bundle / "model.onnx", pre, ml100k_histories)
    expected = {"length 1", "length 2", "length 7", f"length {pre.max_len}", f"length {pre.max_len + 13}"}
    expected |= {"batch 1", "batch 3", "batch 64", "all unknown items", "empty history", "empty beside long"}
    assert expected <= set(report)
    assert max(v for k, v in report.items() if k != "padded vs alone") <= PARITY_ATOL
    assert report["padded vs alone"] <= PADDING_ATOL
    # the export run recorded the same checks
    saved = json.loads((ml100k_bundle / "config.json").read_text())["parity_max_abs_diff"]
    assert set(saved) == set(report)


def test_parity_cases_are_real_sequences_of_the_requested_shapes(ml100k_bundle: Path, ml100k_histories: list) -> None:
    bundle = load_bundle(ml100k_bundle)
    cases = parity_cases(bundle.preprocessor, ml100k_histories)
    assert [e.length for e in cases["length 7"]] == [7, 7, 7]
    assert all(e.length == bundle.max_len for e in cases[f"length {bundle.max_len + 13}"])  # truncated
    assert len(cases["batch 64"]) == 64
    assert cases["all unknown items"][0].n_unknown == cases["all unknown items"][0].length > 0
    assert cases["empty history"][0].length == 0
    assert sum(e.n_unknown for e in cases["batch 64"]) < sum(e.length for e in cases["batch 64"]) / 2


def test_empty_history_vector_is_finite_alone_and_beside_long(ml100k_bundle: Path, ml100k_histories: list) -> None:
    bundle = load_bundle(ml100k_bundle)
    run = onnx_vectors(str(bundle.onnx_path))
    pre = bundle.preprocessor
    empty = pre.encode([], [], [])
    h = ml100k_histories[0]
    long = pre.encode(h.item_ids, h.seconds, h.event_types, h.dwell)
    alone = run(pad_batch([empty]))[0]
    beside = run(pad_batch([long, empty]))[1]
    assert np.isfinite(alone).all()
    np.testing.assert_allclose(beside, alone, atol=PADDING_ATOL)


def test_export_cli_rebuilds_the_bundle_from_the_checkpoint(
    ml100k_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "re-exported"
    argv = ["export", "--checkpoint", str(ml100k_bundle / CHECKPOINT_FILE), "--out", str(out)]
    assert main([*argv, "--data", str(data_dir / "ml-100k"), "--format", "movielens"]) == 0
    original, rebuilt = load_bundle(ml100k_bundle), load_bundle(out)
    assert rebuilt.model_version == original.model_version
    np.testing.assert_array_equal(rebuilt.item_embeddings, original.item_embeddings)
    assert rebuilt.metrics == original.metrics  # copied from beside the checkpoint
