"""Dynamic batching: concurrent requests share one model call, each caller gets its own rows.

Requests queue on the event loop; a dispatcher takes queued requests in arrival order until
the batch would exceed `max_batch_size` rows, runs one model call in a worker thread (so the
loop keeps accepting while the model computes), then splits the output back by row counts.
Requests arriving while a call runs form the next batch, which is where the throughput
comes from. `max_wait` bounds how long the oldest request waits for company; the
dispatcher stops waiting early once as many rows are queued as the previous batch carried
(at first: a full batch), so a lone client pays the wait once, not on every request, and a
steady crowd is dispatched as soon as it has all arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

ModelCall = Callable[[np.ndarray], np.ndarray]


@dataclass(eq=False)
class _Request:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float


class Batcher:
    """Coalesces `predict` calls into model calls of at most `max_batch_size` rows."""

    def __init__(
        self,
        model_call: ModelCall,
        *,
        max_batch_size: int,
        max_wait: float,
        threads: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._call = model_call
        self._max_rows = max_batch_size
        self._max_wait = max_wait
        self._threads = threads
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._target_rows = max_batch_size
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="model")
        self._dispatchers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._dispatchers = [
            asyncio.create_task(self._dispatch_forever(), name=f"batcher-{i}")
            for i in range(self._threads)
        ]

    async def close(self) -> None:
        """Fail whatever is still queued, stop the dispatchers and the worker threads."""
        for task in self._dispatchers:
            task.cancel()
        for task in self._dispatchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=True)

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for `rows`, computed in some batch together with others."""
        loop = asyncio.get_running_loop()
        request = _Request(rows, loop.create_future(), loop.time())
        self._queue.append(request)
        self._queued_rows += len(rows)
        self._arrived.set()
        return await request.future

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                await self._wait_for_arrival(None)
            deadline = self._queue[0].enqueued + self._max_wait
            want = min(self._target_rows, self._max_rows)
            while self._queued_rows < want:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[_Request]:
        """Queued requests in order, up to the row limit (a single oversized one goes alone)."""
        batch: list[_Request] = []
        rows = 0
        while self._queue:
            request = self._queue[0]
            n = len(request.rows)
            if batch and rows + n > self._max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= n
            if request.future.done():  # the caller went away while it waited
                continue
            batch.append(request)
            rows += n
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch], axis=0)
        self._target_rows = max(1, len(rows))
        if self._on_batch is not None:
            self._on_batch(len(rows))
        loop = asyncio.get_running_loop()
        try:
            output = await loop.run_in_executor(self._executor, self._call, rows)
        except Exception as error:  # one failure answers every caller in the batch
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        start = 0
        for request in batch:
            end = start + len(request.rows)
            if not request.future.done():
                request.future.set_result(output[start:end])
            start = end


class Unbatched:
    """Same interface, no coalescing: every request is its own model call in a thread."""

    def __init__(
        self, model_call: ModelCall, *, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._call = model_call
        self._on_batch = on_batch

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        if self._on_batch is not None:
            self._on_batch(len(rows))
        return await asyncio.to_thread(self._call, rows)
