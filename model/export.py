"""Export a trained compressor to an ONNX bundle (layout: model/bundle.py), with parity checks.

The graph takes `pad_batch` output (items, event_types, dense, mask) with
dynamic batch and sequence axes and returns float32 `embedding` [batch, dim].
It is traced with the TorchScript exporter in eval mode from a model whose
attention is written out, so no fused fast-path encoder op can appear; the
check below refuses a graph that contains one anyway.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle import (
    CONFIG_FILE,
    CURVES_FILE,
    HASHED_FILES,
    ITEM_EMBEDDINGS_FILE,
    ITEM_IDS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREPROCESS_FILE,
    VERSION_FILE,
    content_hash,
)
from model.features import INPUT_NAMES, OUTPUT_NAME, Encoded, Preprocessor, pad_batch

OPSET = 17
PARITY_ATOL = 1e-4  # onnxruntime vs torch
PADDING_ATOL = 1e-5  # padded in a batch vs alone
FORBIDDEN_OPS = ("TransformerEncoderLayer", "_transformer_encoder_layer_fwd", "NativeMultiHeadAttention")


class ParityError(AssertionError):
    """The exported graph does not compute what the PyTorch model computes."""


def torch_vectors(model: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(*(torch.from_numpy(batch[name]) for name in INPUT_NAMES)).numpy()


def export_onnx(model: Any, path: Path) -> bytes:
    """Trace the model (example length 3, batch 2) and return the serialized graph."""
    import torch

    model.eval()
    example = pad_batch(
        [
            Encoded(np.array([2, 3, 4]), np.array([2, 2, 2]), np.zeros((3, model.cfg.num_dense), np.float32), 0),
            Encoded(np.array([2, 3]), np.array([2, 2]), np.zeros((2, model.cfg.num_dense), np.float32), 0),
        ]
    )
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    axes = {"items": {0: "batch", 1: "length"}, "event_types": {0: "batch", 1: "length"}}
    axes.update({"dense": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}, OUTPUT_NAME: {0: "batch"}})
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the graph it writes is what we check below.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path.read_bytes()


def check_graph_ops(onnx_path: Path) -> list[str]:
    """Op types in the graph; raises if a fused encoder op is among them."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    ops = sorted({node.op_type for node in graph.node})
    bad = [op for op in ops if any(name in op for name in FORBIDDEN_OPS)]
    if bad:
        raise ParityError(f"exported graph contains fused encoder ops: {bad}")
    return ops


def parity_cases(pre: Preprocessor, histories: Sequence[Any], seed: int = 0) -> dict[str, list[Encoded]]:
    """Named batches of real sequences for the checks (see the issue's export criteria)."""
    rng = np.random.default_rng(seed)
    long = [h for h in histories if len(h.item_ids) > pre.max_len]
    pool = long or list(histories)
    if not pool:
        raise ValueError("parity checks need at least one real history")

    def cut(h: Any, n: int) -> Encoded:
        start = int(rng.integers(0, max(1, len(h.item_ids) - n + 1)))
        return pre.encode(
            h.item_ids[start : start + n],
            h.seconds[start : start + n],
            h.event_types[start : start + n],
            h.dwell[start : start + n],
        )

    def pick() -> Any:
        return pool[int(rng.integers(0, len(pool)))]

    lengths = [1, 2, 7, pre.max_len, pre.max_len + 13]
    cases: dict[str, list[Encoded]] = {}
    for n in lengths:
        cases[f"length {n}"] = [cut(pick(), n) for _ in range(3)]
    for size in (1, 3, 64):
        cases[f"batch {size}"] = [cut(pick(), int(rng.integers(1, pre.max_len + 20))) for _ in range(size)]
    h = pick()
    n = min(len(h.item_ids), 9)
    unknown = [f"never-seen-{i}" for i in range(n)]
    cases["all unknown items"] = [pre.encode(unknown, h.seconds[:n], h.event_types[:n], h.dwell[:n])]
    empty = pre.encode([], [], [])
    cases["empty history"] = [empty]
    cases["empty beside long"] = [empty, cut(pick(), pre.max_len), cut(pick(), 5)]
    return cases


def check_parity(model: Any, onnx_path: Path, pre: Preprocessor, histories: Sequence[Any]) -> dict[str, float]:
    """Max |onnx - torch| per case and max |padded - alone|; raises ParityError past the tolerances."""
    from model.evaluate import onnx_vectors

    run_onnx = onnx_vectors(str(onnx_path))
    report: dict[str, float] = {}
    padding_diff = 0.0
    for name, encoded in parity_cases(pre, histories).items():
        batch = pad_batch(encoded)
        got, want = run_onnx(batch), torch_vectors(model, batch)
        if got.dtype != np.float32 or got.shape != (len(encoded), model.cfg.dim):
            raise ParityError(f"{name}: output {got.dtype} {got.shape}, expected float32 ({len(encoded)}, dim)")
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            raise ParityError(f"{name}: non-finite output")
        report[name] = float(np.abs(got - want).max())
        if report[name] > PARITY_ATOL:
            raise ParityError(f"{name}: onnx differs from torch by {report[name]:.2e} > {PARITY_ATOL}")
        for row, e in enumerate(encoded):
            alone = run_onnx(pad_batch([e]))[0]
            padding_diff = max(padding_diff, float(np.abs(alone - got[row]).max()))
    report["padded vs alone"] = padding_diff
    if padding_diff > PADDING_ATOL:
        raise ParityError(f"a padded sequence differs from itself alone by {padding_diff:.2e} > {PADDING_ATOL}")
    return report


def write_metadata(onnx_path: Path, graph: bytes, props: dict[str, str]) -> None:
    import onnx

    proto = onnx.load_from_string(graph)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(onnx_path))


def export_bundle(
    model: Any,
    pre: Preprocessor,
    out: Path,
    histories: Sequence[Any],
    source_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the bundle into `out` and run the parity checks on real `histories`."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    graph = export_onnx(model, out / MODEL_FILE)
    ops = check_graph_ops(out / MODEL_FILE)
    (out / PREPROCESS_FILE).write_text(json.dumps(pre.to_json()))
    table = model.item_table().detach().numpy().astype(np.float32)
    np.save(out / ITEM_EMBEDDINGS_FILE, table, allow_pickle=False)
    (out / ITEM_IDS_FILE).write_text(json.dumps([None, None, *pre.item_ids]))
    version = content_hash([out / name for name in HASHED_FILES], extra=graph)
    write_metadata(
        out / MODEL_FILE, graph, {"model_version": version, "dim": str(model.cfg.dim), "max_len": str(pre.max_len)}
    )
    parity = check_parity(model, out / MODEL_FILE, pre, histories)
    config = {"dim": model.cfg.dim, "max_len": pre.max_len, "opset": OPSET, "network": model.cfg.to_dict()}
    config["parity_max_abs_diff"] = parity
    config["onnx_ops"] = ops
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if source_dir is not None and source_dir.resolve() != out.resolve():
        for name in (METRICS_FILE, CURVES_FILE):
            if (source_dir / name).exists():
                shutil.copyfile(source_dir / name, out / name)
    (out / VERSION_FILE).write_text(version + "\n")
    return config


def load_checkpoint(path: Path) -> tuple[Any, Preprocessor, dict[str, Any]]:
    """Rebuild (model, preprocessor, training log) from a checkpoint alone."""
    import torch

    from model.network import Compressor, NetworkConfig

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = Compressor(NetworkConfig(**state["network"]))
    model.load_state_dict(state["state_dict"])
    model.eval()
    return model, Preprocessor.from_json(state["preprocess"]), state["log"]


# -- command line ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.data import add_data_arguments

    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `ubs-embed train`")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    add_data_arguments(parser)  # real sequences for the parity checks


def run(args: argparse.Namespace) -> int:
    from model.data import events_from_args, user_histories

    checkpoint = Path(args.checkpoint)
    model, pre, _ = load_checkpoint(checkpoint)
    config = export_bundle(
        model, pre, Path(args.out), user_histories(events_from_args(args)), source_dir=checkpoint.parent
    )
    worst = max(config["parity_max_abs_diff"].values())
    sys.stdout.write(f"bundle written to {args.out}; parity max |onnx - torch| {worst:.2e}\n")
    return 0
