"""Dynamic batching: concurrent requests share model calls and each gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
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
