"""TensorBoard as the tests see it: the scalars in a run's event files, and `kubetrain
tensorboard` running until it is stopped as a user stops it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubetrain.trainer.runner import free_ports
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

START_TIMEOUT = 180.0
"""TensorBoard imports TensorFlow before it listens: slow on a busy machine."""


def curves(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a TensorBoard run directory: {tag: {step: value}}."""
    events = EventAccumulator(str(run))
    events.Reload()
    return {
        tag: {e.step: float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
        for tag in events.Tags()["tensors"]
    }


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@contextmanager
def tensorboard(*args: str, log: Path, runs: list[str]) -> Iterator[str]:
    """`kubetrain tensorboard ARGS` on a free port, once it lists `runs`: yields its data API's
    URL, then stops it with SIGTERM and checks that it exited cleanly and took TensorBoard
    with it."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/data"
    command = [sys.executable, "-m", "kubetrain.trainer", "tensorboard", *args]
    with log.open("w") as stderr:
        board = subprocess.Popen([*command, "--port", str(port)], stderr=stderr)
    try:
        listed: object = None
        deadline = time.monotonic() + START_TIMEOUT
        while listed != runs and time.monotonic() < deadline:
            assert board.poll() is None, log.read_text()
            time.sleep(1)
            try:
                listed = sorted(get_json(f"{url}/runs"))  # type: ignore[call-overload]
            except OSError:
                continue
        assert listed == runs, log.read_text()
        yield url
    finally:
        board.send_signal(signal.SIGTERM)
        code = board.wait(timeout=60)
    assert code == 0, log.read_text()
    try:
        get_json(f"{url}/runs")
    except OSError:
        return
    raise AssertionError(f"TensorBoard still answers on {url} after kubetrain stopped")
