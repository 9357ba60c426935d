"""Quality benchmark: what the vector keeps, against how much smaller it is than the raw log.

For each dim the trainer's own Python API trains a model with its default
settings otherwise (`model.train.TrainConfig`), exports a bundle and scores the
exported ONNX graph with the leave-one-out protocol of `model.evaluate` (test
targets). The baselines are the two of that protocol: most-popular (the same
for every dim) and the mean trained item embedding of the history (it uses the
item table of each model, so it has one row per dim).

Compression ratio: bytes of a user's whole raw history as the compact JSON of
an `/embed` request (`[{"item_id","timestamp","event_type"}, ...]`) over the
bytes of the float32 vector (4 * dim), median over users.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.machine import machine_info
from bench.workload import api_events

DIMS = (16, 32, 64, 128)
QUICK_DIMS = (16, 32)


@dataclass
class QualityRow:
    method: str
    dim: int | None  # None: the method has no vector (most popular)
    ndcg10: float
    recall10: float
    compression: float | None  # median raw JSON bytes / vector bytes
    train_seconds: float | None = None
    best_epoch: int | None = None


@dataclass
class QualityReport:
    started: str
    machine: dict[str, Any]
    users: int
    items: int
    median_history_json_bytes: float
    overrides: dict[str, Any]
    rows: list[QualityRow] = field(default_factory=list)
    wall_s: float = 0.0


def history_json_bytes(histories: Sequence[Any]) -> np.ndarray:
    """Bytes of each user's whole history as compact request JSON."""
    return np.array([len(orjson.dumps(api_events(h))) for h in histories], dtype=np.float64)


def run_quality(
    histories: Sequence[Any],
    work_dir: Path,
    dims: Sequence[int] = DIMS,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> QualityReport:
    """Train, export and evaluate one model per dim; `overrides` are TrainConfig fields (e.g. epochs)."""
    from model.evaluate import evaluate_bundle
    from model.export import export_bundle
    from model.train import TrainConfig, train_model

    started = time.monotonic()
    sizes = history_json_bytes(histories)
    report = QualityReport(
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        users=len(histories),
        items=0,
        median_history_json_bytes=float(np.median(sizes)),
        overrides=dict(overrides or {}),
    )
    popular: QualityRow | None = None
    for dim in dims:
        cfg = dataclasses.replace(TrainConfig(), dim=dim, **(overrides or {}))
        if progress:
            print(f"[quality {time.monotonic() - started:6.0f}s] training dim {dim}", flush=True)
        model, pre, log = train_model(histories, cfg, progress=progress)
        bundle_dir = work_dir / f"bundle-dim{dim}"
        export_bundle(model, pre, bundle_dir, histories=histories)
        result = evaluate_bundle(str(bundle_dir), histories)
        report.items = result["items"]
        test = result["test"]
        ratio = float(np.median(sizes / (4.0 * dim)))
        report.rows.append(
            QualityRow(
                "model",
                dim,
                test["model"]["ndcg@10"],
                test["model"]["recall@10"],
                ratio,
                log["train_seconds"],
                log["best_epoch"],
            )
        )
        report.rows.append(
            QualityRow(
                "mean_item_embedding",
                dim,
                test["mean_item_embedding"]["ndcg@10"],
                test["mean_item_embedding"]["recall@10"],
                ratio,
            )
        )
        if popular is None:
            popular = QualityRow(
                "most_popular", None, test["most_popular"]["ndcg@10"], test["most_popular"]["recall@10"], None
            )
        if progress:
            print(format_quality(report), flush=True)
    if popular is not None:
        report.rows.append(popular)
    report.wall_s = time.monotonic() - started
    return report


def format_quality(report: QualityReport) -> str:
    m = report.machine
    changed = ", ".join(f"{k}={v}" for k, v in report.overrides.items()) or "none"
    lines = [
        f"Quality benchmark, {report.started}; {m['cpu']}, {m['cores']} cores; ml-100k, {report.users} users, "
        f"{report.items} items; leave-one-out by time, test targets, full ranking; wall {report.wall_s:.0f} s",
        f"Training: trainer defaults, changed: {changed}. Median raw history {report.median_history_json_bytes:.0f} "
        "bytes of JSON",
        f"{'method':<20} {'dim':>4} {'NDCG@10':>8} {'Recall@10':>9} {'compression':>11} {'train s':>8} {'epoch':>5}",
    ]
    for row in report.rows:
        dim = "-" if row.dim is None else str(row.dim)
        comp = "-" if row.compression is None else f"{row.compression:.0f}x"
        train = "-" if row.train_seconds is None else f"{row.train_seconds:.0f}"
        epoch = "-" if row.best_epoch is None else str(row.best_epoch)
        lines.append(
            f"{row.method:<20} {dim:>4} {row.ndcg10:>8.4f} {row.recall10:>9.4f} {comp:>11} {train:>8} {epoch:>5}"
        )
    return "\n".join(lines)


def plot_quality(report: QualityReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for method, style in (("model", "-o"), ("mean_item_embedding", "--s")):
        rows = [r for r in report.rows if r.method == method]
        axis.plot([r.dim for r in rows], [r.ndcg10 for r in rows], style, label=method)
    for row in report.rows:
        if row.method == "most_popular":
            axis.axhline(row.ndcg10, color="grey", linestyle=":", label="most_popular")
    dims = sorted({r.dim for r in report.rows if r.dim is not None})
    axis.set(xscale="log", xlabel="vector dim", ylabel="NDCG@10 (test)", title="ml-100k, leave-one-out")
    axis.set_xticks(dims)
    axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report_from_json(data: dict[str, Any]) -> QualityReport:
    rest = {k: v for k, v in data.items() if k != "rows"}
    return QualityReport(**rest, rows=[QualityRow(**r) for r in data["rows"]])
