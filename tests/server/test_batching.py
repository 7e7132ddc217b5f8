"""Dynamic batching: concurrent requests share model calls and each gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import ExportedModels, ServerProcess, metric_value, pattern_images
from kubetrain.trainer.server.batching import Batcher


class RecordingModel:
    """A deterministic row-wise function that remembers the size of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        return rows.sum(axis=1, keepdims=True) * 2


def run_clients(batcher: Batcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    async def main() -> list[np.ndarray]:
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(r) for r in requests))
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_concurrent_requests_share_calls_and_get_their_own_rows_in_order():
    rng = np.random.default_rng(0)
    requests = [rng.random((int(rng.integers(1, 4)), 3)) for _ in range(40)]
    model = RecordingModel()
    results = run_clients(Batcher(model, max_batch_size=16, max_wait=0.05), requests)
    for rows, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, rows.sum(axis=1, keepdims=True) * 2)
    assert sum(model.calls) == sum(len(r) for r in requests)
    assert len(model.calls) < len(requests)
    assert max(model.calls) <= 16


def test_a_request_larger_than_the_batch_limit_runs_alone():
    model = RecordingModel()
    big, small = np.ones((40, 2)), np.ones((1, 2))
    results = run_clients(Batcher(model, max_batch_size=8, max_wait=0.01), [small, big, small])
    assert [len(r) for r in results] == [1, 40, 1]
    assert 40 in model.calls and sum(model.calls) == 42


def test_a_lone_request_does_not_wait_once_the_batcher_has_seen_traffic_alone():
    model = RecordingModel()

    async def main() -> float:
        batcher = Batcher(model, max_batch_size=32, max_wait=1.0)
        batcher.start()
        loop = asyncio.get_running_loop()
        await batcher.predict(np.ones((1, 2)))  # first: waits for company, up to max_wait
        start = loop.time()
        await batcher.predict(np.ones((1, 2)))  # the previous batch had one row: no wait
        elapsed = loop.time() - start
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 0.5


def test_a_failing_model_call_fails_only_its_batch():
    def failing_on_negative(rows: np.ndarray) -> np.ndarray:
        if (rows < 0).any():
            raise ValueError("negative")
        return rows

    async def main() -> tuple[BaseException | np.ndarray, np.ndarray]:
        batcher = Batcher(failing_on_negative, max_batch_size=1, max_wait=0)
        batcher.start()
        bad, good = await asyncio.gather(
            batcher.predict(-np.ones((1, 1))),
            batcher.predict(np.ones((1, 1))),
            return_exceptions=True,
        )
        await batcher.close()
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError)
    np.testing.assert_array_equal(good, np.ones((1, 1)))


def test_a_call_known_to_be_short_runs_on_the_loops_own_thread_and_a_long_one_never_does():
    # Handing a short call to the model thread and back costs about what the call does.
    def calls_by_thread(seconds: float, fail_on_call: int | None = None) -> list[bool]:
        on_loop_thread: list[bool] = []

        def model(rows: np.ndarray) -> np.ndarray:
            on_loop_thread.append(threading.get_ident() == loop_thread)
            time.sleep(seconds)
            if len(on_loop_thread) == fail_on_call:
                raise ValueError("this call fails")
            return rows

        async def main() -> None:
            nonlocal loop_thread
            loop_thread = threading.get_ident()
            batcher = Batcher(model, max_batch_size=4, max_wait=0, inline_below=0.05)
            batcher.start()
            for call in range(1, 5):
                result = batcher.predict(np.full((1, 2), call))
                if call == fail_on_call:
                    with pytest.raises(ValueError, match="this call fails"):
                        await result
                else:
                    np.testing.assert_array_equal(await result, np.full((1, 2), call))
            await batcher.close()

        loop_thread = 0
        asyncio.run(main())
        return on_loop_thread

    assert calls_by_thread(0.0) == [False, True, True, True]  # the first call is timed
    assert calls_by_thread(0.0, fail_on_call=3) == [False, True, True, True]
    assert calls_by_thread(0.1) == [False, False, False, False]


class LoopIterations:
    """Counts event loop iterations: a callback that schedules itself runs once in each."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)


def test_requests_arriving_in_one_loop_iteration_share_a_batch_dispatched_in_the_next():
    # Cutting the batch at the first request that meets the target would split a crowd into
    # small batches; waiting for a dispatcher task would queue it behind a busy iteration.
    iterations = LoopIterations()
    model = RecordingModel()
    dispatched_in: list[int] = []
    arrived_in: list[int] = []

    async def main() -> None:
        batcher = Batcher(
            model,
            max_batch_size=32,
            max_wait=10.0,
            on_batch=lambda rows: dispatched_in.append(iterations.count),
        )
        batcher.start()
        await batcher.predict(np.ones((1, 2)))  # the batch target is now one row
        iterations.start()

        async def request() -> np.ndarray:
            arrived_in.append(iterations.count)
            return await batcher.predict(np.ones((1, 2)))

        async with asyncio.timeout(5):
            await asyncio.gather(*(request() for _ in range(5)))
        iterations.stop()
        await batcher.close()

    asyncio.run(main())
    assert model.calls[1:] == [5]
    assert len(set(arrived_in)) == 1 and dispatched_in[1:] == [arrived_in[0] + 1]


def test_answers_reach_the_caller_in_the_loop_iteration_after_the_model_returns():
    # The call's thread hands its output to one loop callback, which answers the callers
    # and starts the next batch: no future or task in between to queue behind a busy loop.
    iterations = LoopIterations()
    go = threading.Event()
    handed_over: list[int] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()

        def hold_the_loop_until_the_call_returned() -> None:
            go.set()
            time.sleep(0.2)  # the model returns meanwhile and queues its answer
            handed_over.append(iterations.count)

        def model(rows: np.ndarray) -> np.ndarray:
            loop.call_soon_threadsafe(hold_the_loop_until_the_call_returned)
            go.wait(5)
            return rows

        batcher = Batcher(model, max_batch_size=4, max_wait=0)
        batcher.start()
        iterations.start()
        async with asyncio.timeout(5):  # unlike wait_for, no task of its own in between
            await batcher.predict(np.ones((1, 2)))
        answered = iterations.count
        iterations.stop()
        await batcher.close()
        return answered

    answered = asyncio.run(main())
    assert answered - handed_over[0] <= 2


def test_queued_requests_go_as_soon_as_the_running_call_ends():
    release = threading.Event()
    calls: list[int] = []

    def model(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        if len(calls) == 1:
            release.wait(5)
        return rows

    async def main() -> float:
        batcher = Batcher(model, max_batch_size=8, max_wait=0)
        batcher.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.predict(np.ones((1, 2))))
        await asyncio.sleep(0.05)  # the first call runs and holds the only model thread
        waiting = [asyncio.ensure_future(batcher.predict(np.ones((1, 2)))) for _ in range(3)]
        await asyncio.sleep(0.05)
        released = loop.time()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
        elapsed = loop.time() - released
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 1.0
    assert calls == [1, 3], "the requests queued behind a running call share the next one"


def test_a_closed_batcher_refuses_new_requests_and_fails_queued_ones():
    async def main() -> tuple[BaseException | np.ndarray, BaseException | np.ndarray]:
        batcher = Batcher(RecordingModel(), max_batch_size=4, max_wait=10.0)
        batcher.start()
        queued = asyncio.ensure_future(batcher.predict(np.ones((1, 2))))
        await asyncio.sleep(0)
        await batcher.close()
        late = await asyncio.gather(batcher.predict(np.ones((1, 2))), return_exceptions=True)
        return (await asyncio.gather(queued, return_exceptions=True))[0], late[0]

    queued, late = asyncio.run(main())
    assert isinstance(queued, RuntimeError) and isinstance(late, RuntimeError)


def batch_histogram(client: httpx.Client) -> tuple[float, float]:
    """(model calls, rows) so far, from the server's batch size histogram."""
    text = client.get("/metrics").text
    return (
        metric_value(text, "kubetrain_serving_batch_size_count"),
        metric_value(text, "kubetrain_serving_batch_size_sum"),
    )


def test_concurrent_http_clients_each_get_their_own_predictions(
    server: ServerProcess, client: httpx.Client, exported: ExportedModels
):
    clients = 48
    rng = np.random.default_rng(3)
    inputs = [
        pattern_images(rng.integers(0, 10, size=int(rng.integers(1, 4))), seed=i)
        for i in range(clients)
    ]
    expected = [exported.expected(images) for images in inputs]
    calls_before, rows_before = batch_histogram(client)
    start = threading.Barrier(clients)

    def call(images: np.ndarray) -> tuple[int, list]:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            start.wait()
            response = own.post("/v1/models/mnist:predict", json={"instances": images.tolist()})
            return response.status_code, response.json().get("predictions")

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(call, inputs))

    for (status, predictions), want in zip(answers, expected, strict=True):
        assert status == 200
        np.testing.assert_allclose(np.array(predictions), want, atol=1e-5)
    calls_after, rows_after = batch_histogram(client)
    assert rows_after - rows_before == sum(len(images) for images in inputs)
    assert calls_after - calls_before < clients, "concurrent requests were not coalesced"
