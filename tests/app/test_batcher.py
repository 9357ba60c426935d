"""The dynamic batcher on its own, with a plain function as the model.

No timing assumptions: a huge max wait with a small batch size means a batch can
only close by filling up, so "nothing completed early" is a real check.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from app.batching import Batcher, BatcherClosed, BatchFailed, QueueFull
from app.metrics import Metrics
from model.features import Encoded, FloatArray

pytestmark = pytest.mark.asyncio

HOUR_S = 3600.0


def encoded(value: int, length: int = 1) -> Encoded:
    items = np.full(length, value, dtype=np.int64)
    return Encoded(items, items.copy(), np.zeros((length, 3), dtype=np.float32), 0)


class RecordingModel:
    """Returns each row's first item id as its vector and records the batches it saw."""

    def __init__(self, fail_when: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_when = fail_when
        self.threads: set[str] = set()

    def __call__(self, batch: Sequence[Encoded]) -> FloatArray:
        self.threads.add(threading.current_thread().name)
        values = [int(e.items[0]) for e in batch]
        self.batches.append(values)
        if self.fail_when is not None and self.fail_when in values:
            raise RuntimeError("model failure")
        return np.asarray(values, dtype=np.float32)[:, None]


async def settle() -> None:
    """Let every ready task run (no sleeping on the clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def started(model: RecordingModel, **kwargs: float) -> Batcher:
    options = {"max_batch_size": 3, "max_wait_s": HOUR_S, "max_queue": 100} | kwargs
    batcher = Batcher(
        model,
        max_batch_size=int(options["max_batch_size"]),
        max_wait_s=options["max_wait_s"],
        max_queue=int(options["max_queue"]),
    )
    await batcher.start()
    return batcher


async def test_batch_waits_until_full_then_answers_each_caller_its_own_rows() -> None:
    model = RecordingModel()
    batcher = await started(model)
    first = asyncio.create_task(batcher.embed([encoded(10), encoded(11)]))
    await settle()
    assert not first.done() and model.batches == []  # 2 of 3: nothing may run before max_wait
    second = asyncio.create_task(batcher.embed([encoded(20)]))
    a, b = await asyncio.gather(first, second)
    assert [float(v[0]) for v in a] == [10.0, 11.0]
    assert [float(v[0]) for v in b] == [20.0]
    assert model.batches == [[10, 11, 20]]
    assert model.threads and threading.current_thread().name not in model.threads  # ran off the loop
    await batcher.stop()


async def test_batch_closes_after_max_wait_from_its_first_item() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=64, max_wait_s=0.0)
    result = await batcher.embed([encoded(5)])
    assert float(result[0][0]) == 5.0
    assert model.batches == [[5]]
    await batcher.stop()


async def test_request_larger_than_a_batch_is_split_and_keeps_its_order() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=2, max_wait_s=0.0)
    result = await batcher.embed([encoded(v) for v in range(1, 6)])
    assert [float(v[0]) for v in result] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert model.batches == [[1, 2], [3, 4], [5]]
    await batcher.stop()


async def test_cancelled_caller_is_dropped_before_inference() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=2)
    gone = asyncio.create_task(batcher.embed([encoded(1)]))
    await settle()
    assert batcher.depth() == 1
    gone.cancel()
    await settle()
    assert gone.cancelled()
    assert batcher.depth() == 0  # left the queue at once, not only when a batch is taken
    a = asyncio.create_task(batcher.embed([encoded(2)]))
    b = asyncio.create_task(batcher.embed([encoded(3)]))
    await asyncio.gather(a, b)
    assert model.batches == [[2, 3]]  # the cancelled sequence never reached the model
    await batcher.stop()


async def test_failed_batch_fails_every_caller_in_it_and_only_them() -> None:
    model = RecordingModel(fail_when=13)
    batcher = await started(model, max_batch_size=2)
    bad = asyncio.create_task(batcher.embed([encoded(13)]))
    unlucky = asyncio.create_task(batcher.embed([encoded(14)]))
    results = await asyncio.gather(bad, unlucky, return_exceptions=True)
    assert all(isinstance(r, BatchFailed) for r in results)
    a = asyncio.create_task(batcher.embed([encoded(15)]))
    b = asyncio.create_task(batcher.embed([encoded(16)]))
    assert [float(v[0][0]) for v in await asyncio.gather(a, b)] == [15.0, 16.0]  # the worker goes on
    await batcher.stop()


async def test_wrong_number_of_outputs_fails_the_batch() -> None:
    def short(batch: Sequence[Encoded]) -> FloatArray:
        return np.zeros((len(batch) - 1, 4), dtype=np.float32)

    batcher = Batcher(short, max_batch_size=2, max_wait_s=0.0, max_queue=10)
    await batcher.start()
    with pytest.raises(BatchFailed):
        await batcher.embed([encoded(1), encoded(2)])
    await batcher.stop()


async def test_identical_sequences_in_one_batch_are_computed_once() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=3)
    a = asyncio.create_task(batcher.embed([encoded(7)], keys=["k7"]))
    b = asyncio.create_task(batcher.embed([encoded(7), encoded(8)], keys=["k7", "k8"]))
    ra, rb = await asyncio.gather(a, b)
    assert model.batches == [[7, 8]]
    assert float(ra[0][0]) == 7.0 and [float(v[0]) for v in rb] == [7.0, 8.0]
    await batcher.stop()


async def test_full_queue_refuses_at_once_all_or_nothing() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=10, max_queue=3)
    waiting = asyncio.create_task(batcher.embed([encoded(1), encoded(2)]))
    await settle()
    with pytest.raises(QueueFull):
        batcher.submit([encoded(3), encoded(4)])
    assert batcher.depth() == 2  # the refused request left nothing behind
    await batcher.stop()  # stopping flushes what is queued
    assert [float(v[0]) for v in await waiting] == [1.0, 2.0]


async def test_stop_finishes_queued_work_and_refuses_new_work() -> None:
    model = RecordingModel()
    batcher = await started(model, max_batch_size=10)
    pending = asyncio.create_task(batcher.embed([encoded(4)]))
    await settle()
    await batcher.stop()
    assert float((await pending)[0][0]) == 4.0
    with pytest.raises(BatcherClosed):
        batcher.submit([encoded(5)])


async def test_metrics_count_batches_and_queue_depth() -> None:
    metrics = Metrics()
    model = RecordingModel()
    batcher = Batcher(model, max_batch_size=2, max_wait_s=HOUR_S, max_queue=10, metrics=metrics)
    await batcher.start()
    first = asyncio.create_task(batcher.embed([encoded(1)]))
    await settle()
    assert metrics.registry.get_sample_value("ubs_embed_queue_depth") == 1.0
    await batcher.embed([encoded(2)])
    await first
    assert metrics.registry.get_sample_value("ubs_embed_batch_size_count") == 1.0
    assert metrics.registry.get_sample_value("ubs_embed_batch_size_sum") == 2.0
    assert metrics.registry.get_sample_value("ubs_embed_queue_wait_seconds_count") == 2.0
    assert metrics.registry.get_sample_value("ubs_embed_inference_seconds_count") == 1.0
    assert metrics.registry.get_sample_value("ubs_embed_queue_depth") == 0.0
    await batcher.stop()
