"""The ceiling: the service's own onnxruntime backend, in this process, no HTTP.

Two figures per batch size, on the same raw events the load generator sends:
`model` times padding + onnxruntime on inputs encoded beforehand (what the
model alone allows), `pipeline` adds the preprocessing from raw event dicts
(`Preprocessor.encode_events`, the service's path) to each batch. The service
can only approach these from below: it also parses JSON, validates, queues,
caches and answers over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import latency_summary


@dataclass(frozen=True)
class CeilingResult:
    batch_size: int
    batches: int
    model_sequences_per_s: float
    pipeline_sequences_per_s: float
    model_batch_ms: dict[str, float]  # latency of one batch, model only


def measure_ceiling(
    bundle: Any,
    sequences: Sequence[list[dict[str, Any]]],
    batch_sizes: Sequence[int],
    min_seconds: float = 2.0,
    provider: str = "auto",
    intra_op_threads: int = 0,
) -> list[CeilingResult]:
    """Throughput of the service's Engine over consecutive batches of `sequences`."""
    from app.engine import Engine

    engine = Engine(bundle.onnx_path, bundle.dim, provider, intra_op_threads)
    engine.warm_up(bundle.max_len)
    pre = bundle.preprocessor
    encoded = [pre.encode_events(events) for events in sequences]
    started = time.perf_counter()
    for events in sequences:
        pre.encode_events(events)
    encode_s_per_sequence = (time.perf_counter() - started) / max(1, len(sequences))

    results = []
    for size in batch_sizes:
        batches = [encoded[i : i + size] for i in range(0, len(encoded) - size + 1, size)]
        if not batches:
            raise ValueError(f"need at least {size} sequences for batch size {size}")
        times: list[float] = []
        began = time.perf_counter()
        while time.perf_counter() - began < min_seconds:
            batch = batches[len(times) % len(batches)]
            t0 = time.perf_counter()
            engine.embed(batch)
            times.append(time.perf_counter() - t0)
        model_s_per_sequence = sum(times) / (len(times) * size)
        results.append(
            CeilingResult(
                batch_size=size,
                batches=len(times),
                model_sequences_per_s=1.0 / model_s_per_sequence,
                pipeline_sequences_per_s=1.0 / (model_s_per_sequence + encode_s_per_sequence),
                model_batch_ms=latency_summary(times),
            )
        )
    return results
