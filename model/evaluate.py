"""Honest evaluation: leave-one-out by time, full ranking of all items, no masking.

`ubs-embed evaluate` runs the exported bundle through onnxruntime (the artifact
that is served), preprocesses with `model.features` and scores with the
bundle's item embedding matrix. Reported beside the model, under the same
protocol: the most-popular items (counted on the training part) and the mean
of the trained item embeddings of the history (no attention). A target item
that never occurs in the training part has no embedding: it counts as a miss,
and the number of such targets is reported.

numpy + onnxruntime only; no torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from model.features import NUM_RESERVED, UNKNOWN, Encoded, Preprocessor, pad_batch
from model.metrics import METRIC_NAMES, ranking_metrics, target_ranks
from model.split import LeaveOneOut, Target, leave_one_out

Vectors = Callable[[dict[str, np.ndarray]], npt.NDArray[np.float32]]
BASELINES = ("most_popular", "mean_item_embedding")
SEEN_MASKED = "model_seen_masked"  # not the protocol: the history's own items masked


def encode_targets(pre: Preprocessor, targets: Sequence[Target]) -> tuple[list[Encoded], npt.NDArray[np.int64]]:
    """Inputs (the events before each target) and target indices (UNKNOWN if unseen)."""
    encoded = [
        pre.encode(t.history.item_ids, t.history.seconds, t.history.event_types, t.history.dwell) for t in targets
    ]
    indices = np.array([pre.item_index(t.item_id) for t in targets], dtype=np.int64)
    return encoded, indices


def batched_vectors(vectors: Vectors, encoded: Sequence[Encoded], batch_size: int = 64) -> npt.NDArray[np.float32]:
    """Run `vectors` (padded batch -> (B, dim)) over all inputs, in order."""
    parts = [vectors(pad_batch(encoded[i : i + batch_size])) for i in range(0, len(encoded), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def onnx_vectors(onnx_path: str, threads: int = 0) -> Vectors:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    def run(batch: dict[str, np.ndarray]) -> npt.NDArray[np.float32]:
        return np.asarray(session.run(["embedding"], batch)[0])

    return run


def score_metrics(
    vectors: npt.NDArray[np.float32], table: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]
) -> dict[str, float]:
    """Dot-product scores against the whole item table -> ranking metrics."""
    return ranking_metrics(target_ranks(vectors @ table.T, targets))


def popularity_scores(pre: Preprocessor, train: Sequence[Any]) -> npt.NDArray[np.float32]:
    """(num_items,) how often each item occurs in the training part."""
    counts = np.zeros(pre.num_items, dtype=np.float32)
    for h in train:
        np.add.at(counts, [pre.item_index(str(i)) for i in h.item_ids], 1.0)
    return counts


def mean_embedding_vectors(encoded: Sequence[Encoded], table: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Mean trained embedding of each history's known items (zero vector if none)."""
    out = np.zeros((len(encoded), table.shape[1]), dtype=np.float32)
    for row, e in enumerate(encoded):
        known = e.items[e.items >= NUM_RESERVED]
        if known.size:
            out[row] = table[known].mean(axis=0)
    return out


def history_items(pre: Preprocessor, targets: Sequence[Target]) -> list[npt.NDArray[np.int64]]:
    """Vocabulary indices of the known items of each target's whole history."""
    out = []
    for t in targets:
        indices = np.array([pre.item_index(str(i)) for i in t.history.item_ids], dtype=np.int64)
        out.append(np.unique(indices[indices >= NUM_RESERVED]))
    return out


def mask_seen(
    scores: npt.NDArray[np.float32], seen: Sequence[npt.NDArray[np.int64]], targets: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """A copy of `scores` with each row's history items at -inf (never its target)."""
    masked = scores.copy()
    for row, items in enumerate(seen):
        masked[row, items[items != targets[row]]] = -np.inf
    return masked


def seen_share_at_10(scores: npt.NDArray[np.float32], seen: Sequence[npt.NDArray[np.int64]]) -> float:
    """Share of the top-10 slots (reserved columns excluded) taken by items of the row's history."""
    real = scores[:, NUM_RESERVED:]
    top = np.argpartition(-real, 10, axis=1)[:, :10] + NUM_RESERVED
    return float(np.mean([np.isin(top[row], items).mean() for row, items in enumerate(seen)]))


def log_items(split: LeaveOneOut) -> set[str]:
    """Distinct items of the whole log: the training part and every held-out target."""
    items = {str(i) for h in split.train for i in h.item_ids}
    return items | {t.item_id for t in (*split.valid, *split.test)}


def evaluate(
    pre: Preprocessor,
    vectors: Vectors,
    table: npt.NDArray[np.float32],
    split: LeaveOneOut,
    baselines: bool = True,
) -> dict[str, Any]:
    """The full report: model (and baselines) on the validation and test targets."""
    report: dict[str, Any] = {
        "protocol": "leave-one-out by time, full ranking of all items, history not masked",
        "users": len(split.test),
        "items": pre.num_items - NUM_RESERVED,  # ranked: the vocabulary of the training part
        "log_items": len(log_items(split)),
    }
    popularity = popularity_scores(pre, split.train) if baselines else None
    for part, targets in (("valid", split.valid), ("test", split.test)):
        encoded, indices = encode_targets(pre, targets)
        report[f"{part}_unseen_targets"] = int((indices == UNKNOWN).sum())
        model_vectors = batched_vectors(vectors, encoded)
        if not np.isfinite(model_vectors).all():
            raise ValueError(f"the model returned non-finite vectors on the {part} inputs")
        scores = model_vectors @ table.T
        results = {"model": ranking_metrics(target_ranks(scores, indices))}
        # A diagnostic beside the protocol, labelled as such: how much of the top 10 goes to
        # items the user already has, and the metrics with those masked.
        seen = history_items(pre, targets)
        report[f"{part}_seen_share@10"] = seen_share_at_10(scores, seen)
        results[SEEN_MASKED] = ranking_metrics(target_ranks(mask_seen(scores, seen, indices), indices))
        if popularity is not None:
            pop = np.broadcast_to(popularity, (len(encoded), popularity.shape[0]))
            results["most_popular"] = ranking_metrics(target_ranks(pop, indices))
            results["mean_item_embedding"] = score_metrics(mean_embedding_vectors(encoded, table), table, indices)
        report[part] = results
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table, one row per (split, method)."""
    lines = [
        f"{report['users']} users, {report['log_items']} items in the log, {report['items']} ranked "
        f"(those of the training part); {report['protocol']}",
        f"unseen targets (counted as misses): valid {report['valid_unseen_targets']}, "
        f"test {report['test_unseen_targets']}",
        f"{'split':<6} {'method':<20} " + " ".join(f"{name:>9}" for name in METRIC_NAMES),
    ]
    for part in ("valid", "test"):
        for method, values in report[part].items():
            lines.append(f"{part:<6} {method:<20} " + " ".join(f"{values[name]:>9.4f}" for name in METRIC_NAMES))
    if "test_seen_share@10" in report:
        lines.append(
            f"{SEEN_MASKED}: the same vectors with the history's own items masked (a diagnostic, not the protocol); "
            f"top-10 slots on items already in the history: valid {report['valid_seen_share@10']:.1%}, "
            f"test {report['test_seen_share@10']:.1%}"
        )
    return "\n".join(lines)


def flat_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """One flat JSON object: test metrics of the model as `ndcg@10`..., the rest prefixed."""
    keys = ("users", "items", "log_items", "valid_unseen_targets", "test_unseen_targets")
    keys += ("valid_seen_share@10", "test_seen_share@10")
    out: dict[str, Any] = {k: report[k] for k in keys}
    out.update(report["test"]["model"])
    for part in ("valid", "test"):
        for method, values in report[part].items():
            for name, value in values.items():
                out[f"{part}/{method}/{name}"] = value
    return out


def evaluate_bundle(bundle_dir: str, histories: Sequence[Any], threads: int = 0) -> dict[str, Any]:
    from model.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    vectors = onnx_vectors(str(bundle.onnx_path), threads)
    return evaluate(bundle.preprocessor, vectors, bundle.item_embeddings, leave_one_out(histories))


# -- command line ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.data import add_data_arguments

    parser.add_argument("--bundle", required=True, help="bundle directory written by `ubs-embed train`/`export`")
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its choice)")


def run(args: argparse.Namespace) -> int:
    from model.data import events_from_args, user_histories

    report = evaluate_bundle(args.bundle, user_histories(events_from_args(args)), args.threads)
    if args.json:
        print(json.dumps(flat_metrics(report)))
    else:
        print(format_table(report))
    return 0
