"""Dynamic batching: concurrent requests share one model call, each caller gets its own rows.

Requests queue on the event loop and are taken in arrival order until a batch would exceed
`max_batch_size` rows; one model call runs in a worker thread (so the loop keeps accepting
while the model computes) and its output is split back by row counts. Requests arriving while
a call runs form the next batch, which is where the throughput comes from. `max_wait` bounds
how long the oldest request waits for company; a batch leaves early once as many rows are
queued as the previous batch carried (at first: a full batch), so a lone client pays the wait
once, not on every request, and a steady crowd is dispatched as soon as it has all arrived.

A call whose last run with as many rows took less than `inline_below` runs on the event
loop's own thread instead: handing it to the model thread and back costs about as much, and
the loop would read little meanwhile. Every call on the loop's thread cost the CNN 31% at 32
clients (nothing is read while a 7 ms batch holds the loop); gated, only short calls go there.

Decisions are taken in plain loop callbacks, not by a dispatcher task that must first be
woken: one callback per loop iteration looks at the queue once every request read in that
iteration has joined it (so a crowd arriving together shares a batch rather than being cut at
the first request that meets the target), a timer dispatches a batch whose oldest request has
waited `max_wait`, and the model thread hands its output to a single callback that answers the
callers and starts the next batch. Under load one loop iteration runs dozens of request
handlers, and every extra hop through the ready queue (a future, then a task) queued the
answers behind all of them once more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

ModelCall = Callable[[np.ndarray], np.ndarray]

INLINE_CALL_SECONDS = 0.001
"""Calls known to take less run on the event loop's thread (see the module docstring)."""


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
        inline_below: float = INLINE_CALL_SECONDS,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._call = model_call
        self._inline_below = inline_below
        self._seconds: dict[int, float] = {}  # each batch size's last call, as it took
        self._max_rows = max_batch_size
        self._max_wait = max_wait
        self._threads = threads
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._target_rows = max_batch_size
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._dispatch_soon = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="model")

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Fail whatever is still queued, then let running calls finish and stop the threads."""
        self._closed = True
        self._cancel_timer()
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(RuntimeError("server is shutting down"))
        self._queued_rows = 0
        self._executor.shutdown(wait=True)

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for `rows`, computed in some batch together with others."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("server is shutting down")
        request = _Request(rows, loop.create_future(), loop.time())
        self._queue.append(request)
        self._queued_rows += len(rows)
        if not self._dispatch_soon:  # once all the requests this iteration reads are queued
            self._dispatch_soon = True
            loop.call_soon(self._on_arrivals)
        return await request.future

    def _on_arrivals(self) -> None:
        self._dispatch_soon = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Start batches while a thread is free and the queue is ready to go; else make sure
        a timer will look again when the oldest request has waited long enough."""
        assert self._loop is not None, "start() the batcher on the event loop first"
        while self._queue and self._running < self._threads and not self._closed:
            deadline = self._queue[0].enqueued + self._max_wait
            short = self._queued_rows < min(self._target_rows, self._max_rows)
            if short and self._loop.time() < deadline:
                self._arm_timer(deadline)
                return
            batch = self._take()
            if batch:
                self._run(batch)
        self._cancel_timer()

    def _arm_timer(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None and self._timer.when() <= deadline:
            return
        self._cancel_timer()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

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

    def _run(self, batch: list[_Request]) -> None:
        """One model call: a short one here and now, else in a thread that hands the output
        straight to `_finish`."""
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch], axis=0)
        self._target_rows = max(1, len(rows))
        if self._on_batch is not None:
            self._on_batch(len(rows))
        if self._running == 0 and self._seconds.get(len(rows), math.inf) < self._inline_below:
            inline: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
            try:
                inline.set_result(self._timed_call(rows))
            except Exception as error:
                inline.set_exception(error)
            self._answer(batch, inline)  # `_dispatch`, which called this, goes on
            return
        self._running += 1
        loop = self._loop
        assert loop is not None
        call = self._executor.submit(self._timed_call, rows)

        def done(call: concurrent.futures.Future[np.ndarray]) -> None:  # in the worker thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(self._finish, batch, call)

        call.add_done_callback(done)

    def _timed_call(self, rows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._call(rows)
        finally:
            self._seconds[len(rows)] = time.perf_counter() - started

    def _finish(self, batch: list[_Request], call: concurrent.futures.Future[np.ndarray]) -> None:
        """Answer every caller of a threaded call, then start the next batch at once."""
        self._running -= 1
        self._answer(batch, call)
        self._dispatch()

    def _answer(self, batch: list[_Request], call: concurrent.futures.Future[np.ndarray]) -> None:
        error = call.exception()
        if error is not None:  # one failure answers every caller in the batch
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            output = call.result()
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
