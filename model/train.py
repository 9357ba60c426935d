"""`ubs-embed train`: fit the compressor on an event log, evaluate it, export the bundle.

Training objective: next-item cross-entropy over the full item table at every
prefix of every training window (causal attention + causal pooling: one
forward pass per window gives all prefixes), plus an optional auxiliary loss
on the next few items after the next one (`future_k`), which rewards a vector
that describes where the user is heading rather than one exact next click.
The training part of a user is everything before the validation target (see
model/split.py); early stopping watches validation NDCG@10, never the test
targets. torch is imported inside functions so `--help` works without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.features import DENSE_FEATURES, NUM_RESERVED, UNKNOWN, Encoded, Preprocessor, pad_batch

CHECKPOINT_FILE = "checkpoint.pt"


def knob(default: Any, help: str) -> Any:
    """A TrainConfig field with its --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    max_len: int = knob(30, "events kept per history (the newest)")
    d_model: int = knob(64, "Transformer width")
    n_layers: int = knob(2, "Transformer blocks")
    n_heads: int = knob(2, "attention heads")
    d_ff: int = knob(256, "feed-forward width")
    dropout: float = knob(0.4, "dropout on embeddings, attention and residuals")
    dim: int = knob(64, "size of the output vector")
    pooling: str = knob("last", "'last' (last valid position) or 'last+mean' (with the causal running mean)")
    tied_items: bool = knob(False, "score items with a map of the input item embeddings (no separate table)")
    exclude_history: bool = knob(
        True, "subtract a learned multiple of the history's item vectors (seen items rank lower)"
    )
    exclude_map: bool = knob(True, "with --exclude-history: also subtract a learned linear map of those vectors")
    # optimisation
    epochs: int = knob(80, "epochs; the learning rate follows a warm-up and a cosine decay over all of them")
    patience: int = knob(80, "stop after this many epochs without a better validation NDCG@10")
    batch_size: int = knob(64, "windows per step")
    lr: float = knob(3e-3, "AdamW peak learning rate")
    weight_decay: float = knob(0.1, "AdamW weight decay (matrices and embeddings only)")
    warmup_epochs: int = knob(3, "linear warm-up epochs")
    item_dropout: float = knob(0.2, "share of input items replaced by 'unknown' in training")
    label_smoothing: float = knob(0.0, "label smoothing of the next-item cross-entropy")
    future_k: int = knob(0, "also predict the k items after the next one (auxiliary loss)")
    future_weight: float = knob(0.5, "weight of that auxiliary loss")
    seen_weight: float = knob(0.0, "weight of a loss that ranks the next item above the items already seen")
    ema_decay: float = knob(0.995, "> 0: validate and export an exponential moving average of the weights")
    seed: int = 0  # --seed on the command line (shared with the synthetic generator)
    threads: int = knob(0, "torch threads (0 = all cores)")
    time_budget_s: float = knob(480.0, "stop training after this many seconds, keeping the best epoch")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclass
class UserArrays:
    """One user's training part as index/feature columns (time-ordered)."""

    items: np.ndarray  # (m,) int64 vocabulary indices
    types: np.ndarray  # (m,) int64
    seconds: np.ndarray  # (m,) float64
    dwell: np.ndarray  # (m,) float64, NaN = missing


def user_arrays(pre: Preprocessor, train: Sequence[Any]) -> list[UserArrays]:
    unbounded = dataclasses.replace(pre, max_len=max(1, *(len(h.item_ids) for h in train)))
    out = []
    for h in train:
        if len(h.item_ids) < 2:
            continue  # nothing to predict from a non-empty history
        e = unbounded.encode(h.item_ids, h.seconds, h.event_types, h.dwell)
        out.append(
            UserArrays(e.items, e.event_types, np.asarray(h.seconds, np.float64), np.asarray(h.dwell, np.float64))
        )
    return out


def windows(rng: np.random.Generator, users: Sequence[UserArrays], max_len: int) -> list[tuple[int, int, int]]:
    """(user, start, end) windows covering every training target, with a random phase.

    A window feeds events start..end-1 and predicts targets start..end (the
    BOS position predicts `start` only when start == 0, where the history
    really is empty). The newest window of every user always ends at the last
    target, like the validation input.
    """
    out = []
    for u, arrays in enumerate(users):
        last = arrays.items.shape[0] - 1
        ends = {last}
        end = last - int(rng.integers(0, max_len))
        while end >= 1:
            ends.add(end)
            end -= max_len
        out.extend((u, max(0, e - max_len), e) for e in sorted(ends))
    return out


def collate(
    pre: Preprocessor,
    users: Sequence[UserArrays],
    batch: Sequence[tuple[int, int, int]],
    future_k: int,
    rng: np.random.Generator | None = None,
    item_dropout: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs (pad_batch layout) and targets (B, T, 1 + future_k), -100 = no target."""
    encoded = []
    width = max(e - s for _, s, e in batch) + 1
    targets = np.full((len(batch), width, 1 + future_k), -100, dtype=np.int64)
    for row, (u, s, e) in enumerate(batch):
        a = users[u]
        items = a.items[s:e].copy()
        if rng is not None and item_dropout > 0:
            items[rng.random(items.shape[0]) < item_dropout] = UNKNOWN
        dense = pre.dense_features(a.seconds[s:e], a.dwell[s:e])
        encoded.append(Encoded(items, a.types[s:e], dense, 0))
        m = a.items.shape[0]
        for j in range(1 + future_k):
            # position k (history s..s+k-1) -> target s+k+j, only within the training part
            lo, hi = s + j, min(e + 1 + j, m)
            if hi > lo:
                targets[row, : hi - lo, j] = a.items[lo:hi]
        if s > 0:
            targets[row, 0, :] = -100  # the BOS position's history is not really empty here
    targets[targets < NUM_RESERVED] = -100  # unknown items are not a prediction target
    return pad_batch(encoded), targets


def set_seeds(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_model(
    histories: Sequence[Any], cfg: TrainConfig, progress: bool = True
) -> tuple[Any, Preprocessor, dict[str, Any]]:
    """Train on the leave-one-out training part; returns (best model, preprocessor, log)."""
    import torch
    from tqdm import tqdm

    from model.evaluate import batched_vectors, encode_targets, score_metrics
    from model.network import Compressor, NetworkConfig
    from model.split import leave_one_out

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    set_seeds(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    split = leave_one_out(histories)
    pre = Preprocessor.fit(split.train, cfg.max_len)
    users = user_arrays(pre, split.train)
    if not users:
        raise ValueError("no user has 2 or more training events: nothing to train on")
    valid_inputs, valid_targets = encode_targets(pre, split.valid)

    # The model knobs of TrainConfig carry the same names as NetworkConfig's fields.
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(NetworkConfig) if hasattr(cfg, f.name)}
    net_cfg = NetworkConfig(
        num_items=pre.num_items, num_event_types=pre.num_event_types, num_dense=len(DENSE_FEATURES), **shared
    )
    model = Compressor(net_cfg)
    # The averaged weights (when on) are what validation sees and what is exported.
    averaged = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        if cfg.ema_decay > 0
        else None
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    steps_per_epoch = math.ceil(len(windows(rng, users, cfg.max_len)) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_epochs * steps_per_epoch, total_steps)
    )

    def evaluated() -> Any:
        return model if averaged is None else averaged.module

    def validate() -> dict[str, float]:
        net = evaluated()
        net.eval()
        with torch.no_grad():

            def vectors(batch: dict[str, np.ndarray]) -> np.ndarray:
                return net(*(torch.from_numpy(batch[k]) for k in ("items", "event_types", "dense", "mask"))).numpy()

            vecs = batched_vectors(vectors, valid_inputs, batch_size=256)
            table = net.item_table().detach().numpy()
        return score_metrics(vecs, table, valid_targets)

    log: dict[str, Any] = {"epochs": [], "config": dataclasses.asdict(cfg), "network": net_cfg.to_dict()}
    best_ndcg, best_state, best_epoch, stale = -1.0, None, -1, 0
    started = time.monotonic()
    bar = tqdm(range(cfg.epochs), desc="train", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        order = windows(rng, users, cfg.max_len)
        perm = rng.permutation(len(order))
        total_loss, n_batches = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            batch = [order[j] for j in perm[i : i + cfg.batch_size]]
            inputs, targets = collate(pre, users, batch, cfg.future_k, rng, cfg.item_dropout)
            tensors = [torch.from_numpy(inputs[k]) for k in ("items", "event_types", "dense", "mask")]
            loss = sequence_loss(model, tensors, torch.from_numpy(targets), cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total_loss += float(loss.detach())
            n_batches += 1
        metrics = validate()
        elapsed = time.monotonic() - started
        log["epochs"].append({"epoch": epoch, "loss": total_loss / n_batches, "elapsed_s": elapsed, **metrics})
        bar.set_postfix(loss=f"{total_loss / n_batches:.3f}", val_ndcg10=f"{metrics['ndcg@10']:.4f}")
        if metrics["ndcg@10"] > best_ndcg:
            best_ndcg, best_epoch, stale = metrics["ndcg@10"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in evaluated().state_dict().items()}
        else:
            stale += 1
        if stale >= cfg.patience or elapsed > cfg.time_budget_s:
            break
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    log.update(best_epoch=best_epoch, best_valid_ndcg10=best_ndcg, train_seconds=time.monotonic() - started)
    return model, pre, log


def sequence_loss(model: Any, tensors: list[Any], targets: Any, cfg: TrainConfig) -> Any:
    """Cross-entropy on the next item at every position, plus the optional future-items term."""
    import torch
    import torch.nn.functional as F

    states = model.sequence_states(*tensors)  # (B, T, dim)
    logits = states @ model.item_table()[NUM_RESERVED:].t()  # (B, T, V) real items only
    shifted = torch.where(targets >= 0, targets - NUM_RESERVED, targets)  # (B, T, 1+K)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, shifted[..., 0].reshape(-1), ignore_index=-100, label_smoothing=cfg.label_smoothing)
    if cfg.future_k:
        logp = torch.log_softmax(logits, dim=-1)
        future = shifted[..., 1:]
        valid = future >= 0
        picked = logp.gather(-1, future.clamp(min=0))  # (B, T, K)
        loss = loss + cfg.future_weight * -(picked * valid).sum() / valid.sum().clamp(min=1)
    if cfg.seen_weight:
        loss = loss + cfg.seen_weight * seen_items_loss(logits, tensors[0], tensors[3], shifted[..., 0])
    return loss


def seen_items_loss(logits: Any, items: Any, mask: Any, target: Any) -> Any:
    """Cross-entropy of the next item against only the items already seen at each position.

    The full softmax weighs a seen item like any of the thousands of others; here
    they are the only competitors, so the vector learns to rank them below the
    next item (the evaluation does not mask seen items).
    logits (B, T, V) over real items; items, mask (B, L); target (B, T) real-item index or -100.
    """
    import torch
    import torch.nn.functional as F

    b, length = items.shape
    v = logits.shape[-1]
    real = (items >= NUM_RESERVED) & mask  # (B, L) dropped-out and padded items are not "seen"
    onehot = torch.zeros(b, length, v, device=logits.device)
    onehot.scatter_(2, (items - NUM_RESERVED).clamp(min=0).unsqueeze(-1), real.unsqueeze(-1).to(onehot.dtype))
    seen = torch.cumsum(onehot, dim=1) > 0  # (B, L, V) among events 0..t
    seen = torch.cat([torch.zeros(b, 1, v, dtype=torch.bool, device=logits.device), seen], dim=1)  # before t
    valid = (target >= 0) & seen.any(dim=-1)  # (B, T)
    keep = seen | F.one_hot(target.clamp(min=0), v).bool()
    restricted = logits.masked_fill(~keep, float("-inf"))
    labels = torch.where(valid, target, torch.full_like(target, -100))
    return F.cross_entropy(restricted.reshape(-1, v), labels.reshape(-1), ignore_index=-100)


def save_checkpoint(path: Path, model: Any, pre: Preprocessor, log: dict[str, Any]) -> None:
    import torch

    torch.save(
        {
            "network": model.cfg.to_dict(),
            "preprocess": pre.to_json(),
            "state_dict": model.state_dict(),
            "log": json.loads(json.dumps(log)),
        },
        path,
    )


def plot_curves(log: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in log["epochs"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [e["loss"] for e in log["epochs"]])
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [e["ndcg@10"] for e in log["epochs"]], label="NDCG@10")
    right.plot(epochs, [e["recall@10"] for e in log["epochs"]], label="Recall@10")
    right.axvline(log["best_epoch"], color="grey", linestyle=":", label="best epoch")
    right.set(xlabel="epoch", title="validation")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- command line ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.data import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show the progress bar")
    defaults = TrainConfig()
    knobs = parser.add_argument_group("model and training")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "seed":
            continue  # --seed comes with the data options and seeds training too
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        text = f"{f.metadata['help']} (default: {value})"
        if isinstance(value, bool):
            knobs.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=value, help=text)
        else:
            knobs.add_argument(flag, dest=f.name, type=type(value), default=value, help=text)


def run(args: argparse.Namespace) -> int:
    from model.data import events_from_args, user_histories
    from model.evaluate import evaluate_bundle, format_table
    from model.export import export_bundle

    started = time.monotonic()
    histories = user_histories(events_from_args(args))
    cfg = TrainConfig.from_args(args)
    model, pre, log = train_model(histories, cfg, progress=args.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / CHECKPOINT_FILE, model, pre, log)
    plot_curves(log, out / "training_curves.png")
    export_bundle(model, pre, out, histories=histories)
    report = evaluate_bundle(str(out), histories, cfg.threads)
    report["training"] = {k: log[k] for k in ("best_epoch", "best_valid_ndcg10", "train_seconds", "config")}
    report["wall_seconds"] = time.monotonic() - started
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"bundle written to {out} (training {log['train_seconds']:.0f} s, total {report['wall_seconds']:.0f} s)")
    return 0
