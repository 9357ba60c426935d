"""Dynamic batching: sequences from concurrent requests share model calls.

A batch closes when it holds `max_batch_size` sequences or `max_wait_s` after
its first sequence arrived, whichever comes first. Inference runs in one
executor thread, off the event loop. Every sequence has its own future, so each
caller gets exactly its own vectors. The queue is bounded: a request that does
not fit is refused at once (`QueueFull`) instead of waiting.

The model function never sees queues or futures; callers never see threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.metrics import Metrics
from model.features import Encoded, FloatArray

log = logging.getLogger(__name__)

InferFn = Callable[[Sequence[Encoded]], FloatArray]


class QueueFull(Exception):
    """The queue cannot take the request's sequences now."""


class BatchFailed(Exception):
    """The batch holding this sequence failed; every caller in it gets this error."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass(eq=False)
class _Pending:
    item: Encoded
    key: str | None  # equal keys in one batch are computed once
    future: asyncio.Future[FloatArray]
    enqueued_at: float


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        if metrics is not None:
            metrics.track_queue_depth(self.depth)

    def depth(self) -> int:
        return len(self._queue)

    # -- lifecycle (called from the app's lifespan) --------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ubs-embed-infer")
        self._task = asyncio.create_task(self._loop(), name="ubs-embed-batcher")

    async def stop(self) -> None:
        """Stop taking work, finish what is queued, then release the thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # -- callers ---------------------------------------------------------------

    def submit(self, items: Sequence[Encoded], keys: Sequence[str | None] | None = None) -> list[_Pending]:
        """Queue all of a request's sequences, or none of them."""
        if self._closing or self._task is None:
            raise BatcherClosed("the service is shutting down")
        if len(self._queue) + len(items) > self.max_queue:
            raise QueueFull(f"queue holds {len(self._queue)} of {self.max_queue} sequences")
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = [
            _Pending(item, None if keys is None else keys[i], loop.create_future(), now) for i, item in enumerate(items)
        ]
        self._queue.extend(pending)
        self._wakeup.set()
        return pending

    async def embed(self, items: Sequence[Encoded], keys: Sequence[str | None] | None = None) -> list[FloatArray]:
        """Vectors for `items`, in their order. Cancelling the caller drops its queued sequences."""
        pending = self.submit(items, keys)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except BaseException:
            for p in pending:
                # gather() has usually cancelled the futures already when the caller is cancelled.
                p.future.cancel()  # no-op for those already done
                if p.future.cancelled():
                    self._drop(p)
            raise

    def _drop(self, pending: _Pending) -> None:
        # Removed at once, so the queue depth and the batch-size trigger count live sequences only.
        try:
            self._queue.remove(pending)
        except ValueError:
            pass  # already taken into a batch

    # -- the loop ----------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued_at + self.max_wait_s
            while not self._closing and len(self._queue) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[_Pending]:
        """Up to max_batch_size live sequences; cancelled callers are dropped here, before inference."""
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if not pending.future.done():
                batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rows: list[int] = []
        inputs: list[Encoded] = []
        first_row: dict[str, int] = {}
        for pending in batch:
            if pending.key is not None and pending.key in first_row:
                rows.append(first_row[pending.key])
                continue
            if pending.key is not None:
                first_row[pending.key] = len(inputs)
            rows.append(len(inputs))
            inputs.append(pending.item)
        t0 = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self._executor, self._infer, inputs)
            if len(vectors) != len(inputs):
                raise BatchFailed(f"model returned {len(vectors)} vectors for {len(inputs)} sequences")
        except Exception as exc:
            log.error("batch of %d sequences failed: %s: %s", len(inputs), type(exc).__name__, exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(BatchFailed("inference failed for this batch"))
            return
        if self._metrics is not None:
            self._metrics.inference.observe(time.perf_counter() - t0)
            self._metrics.batch_size.observe(len(inputs))
            for pending in batch:
                self._metrics.queue_wait.observe(started - pending.enqueued_at)
        for pending, row in zip(batch, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(vectors[row])
