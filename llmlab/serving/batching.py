"""Dynamic batching: a bounded queue, one model thread, isolation of bad items, a supervised
worker. Built in lab 10; lab 14's generation engine sheds with its `QueueFull`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llmlab.serving.classifier import Classifier

log = logging.getLogger("llmlab.serve")


class ModelError(RuntimeError):
    """The model failed on this text; its request gets a 500, the others in the batch do not."""


class QueueFull(RuntimeError):
    """The queue cannot take the request's texts: shed it at once (429) instead of queueing."""


@dataclass
class Pending:
    """One queued text, the future its request awaits, and when it was enqueued."""

    text: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


def predict_isolating(classifier: Classifier, texts: Sequence[str]) -> list[Any]:
    """Predictions for `texts`; if the batch fails (or gives the wrong number of rows), split it
    in halves and retry, so that one bad text fails alone: its slot holds the exception."""
    try:
        outputs = classifier.predict(texts)
        if len(outputs) != len(texts):
            raise ModelError(f"the model gave {len(outputs)} rows for {len(texts)} texts")
        return outputs
    except Exception as error:
        if len(texts) == 1:
            return [error]
        half = len(texts) // 2
        return predict_isolating(classifier, texts[:half]) + predict_isolating(
            classifier, texts[half:]
        )


class DynamicBatcher:
    """Gather concurrent requests into one forward pass: up to `max_batch_size` texts, waiting at
    most `max_wait_ms` from the first text's enqueue; at most `max_queue` texts wait."""

    def __init__(
        self,
        classifier: Classifier,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[Classifier, list[dict[str, Any]], float], None] | None = None,
        max_queue: int = 1024,
        max_restarts: int = 3,
        on_wait: Callable[[list[float]], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.classifier = classifier  # hot reload swaps it; each batch reads it once
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_restarts = max_restarts
        self.on_batch = on_batch
        self.on_wait = on_wait
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        # One model thread: forward passes run one after another, each using every core.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.worker: asyncio.Task | None = None
        self.in_flight: list[Pending] = []
        self.busy_since: float | None = None  # monotonic start of the running batch
        self.restarts = 0
        self.last_error: str | None = None
        self.peak_depth = 0
        self.computed = 0  # texts that reached the model

    def submit(self, texts: Sequence[str]) -> list[asyncio.Future]:
        """Enqueue `texts` (all or none) and return their futures; QueueFull when they don't fit."""
        if self.queue.qsize() + len(texts) > self.max_queue:
            raise QueueFull(f"{self.queue.qsize()} texts queued, at most {self.max_queue}")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures, strict=True):
            self.queue.put_nowait(Pending(text, future))
        self.peak_depth = max(self.peak_depth, self.queue.qsize())
        return futures

    async def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Queue `texts` and wait for their predictions."""
        return list(await asyncio.gather(*self.submit(texts)))

    def busy_for(self) -> float:
        """Seconds the running batch has taken so far (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    @property
    def alive(self) -> bool:
        """The worker task runs."""
        return self.worker is not None and not self.worker.done()

    async def _next_batch(self) -> list[Pending]:
        batch = [await self.queue.get()]
        deadline = batch[0].enqueued + self.max_wait_s  # counted from enqueue, not dequeue
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        # Requests that timed out or whose client left were cancelled: no compute for them.
        return [item for item in batch if not item.future.done()]

    async def run(self) -> None:
        """The worker: form a batch, run it in the model thread, hand out the results."""
        loop = asyncio.get_running_loop()
        while True:
            self.in_flight = await self._next_batch()
            if not self.in_flight:
                continue
            if self.on_wait:
                now = time.monotonic()
                self.on_wait([now - item.enqueued for item in self.in_flight])
            classifier = self.classifier
            texts = [item.text for item in self.in_flight]
            self.computed += len(texts)
            self.busy_since = time.monotonic()
            try:
                results = await loop.run_in_executor(
                    self.executor, predict_isolating, classifier, texts
                )
            finally:
                seconds, self.busy_since = self.busy_for(), None
            outputs = []
            for item, result in zip(self.in_flight, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(ModelError(f"{type(result).__name__}: {result}"))
                else:
                    item.future.set_result(result)
                    outputs.append(result)
            self.in_flight = []
            if self.on_batch and outputs:
                self.on_batch(classifier, outputs, seconds)

    def _worker_done(self, task: asyncio.Task) -> None:
        """Supervisor: fail what the dead worker held, then restart it (up to `max_restarts`)."""
        if task.cancelled():
            return
        error = task.exception()
        self.last_error = f"{type(error).__name__}: {error}"
        for item in self.in_flight:
            if not item.future.done():
                item.future.set_exception(ModelError(f"the batch worker died: {self.last_error}"))
        self.in_flight = []
        log.error("batch worker died (%s); restarts so far: %d", self.last_error, self.restarts)
        if self.restarts < self.max_restarts:
            self.restarts += 1
            self.start()

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self.worker = asyncio.get_running_loop().create_task(self.run())
        self.worker.add_done_callback(self._worker_done)

    async def stop(self) -> None:
        """Stop the worker and the model thread."""
        if self.worker and not self.worker.done():  # a dead one was reported when it died
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.executor.shutdown(wait=False, cancel_futures=True)
