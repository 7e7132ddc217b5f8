"""A real exported model and real server processes on loopback for the server tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from datasets import digit_images
from kubetrain.trainer.runner import free_ports
from prometheus_client.parser import text_string_to_metric_families

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
STARTUP_TIMEOUT = 120.0


@dataclass
class ExportedModels:
    """`mnist` version 1 (untrained) and version 2 (trained on the digit pattern)."""

    root: Path
    model_dir: Path
    trained: object  # the keras model exported as version 2
    untrained: object  # the keras model exported as version 1

    def expected(self, images: np.ndarray, version: int = 2) -> np.ndarray:
        model = self.trained if version == 2 else self.untrained
        return model(np.asarray(images, dtype=np.float32), training=False).numpy()


def pattern_images(labels: list[int] | np.ndarray, seed: int = 0) -> np.ndarray:
    """28x28x1 float images whose class the trained model knows (tests/datasets.py pattern)."""
    rng = np.random.default_rng(seed)
    return digit_images(np.asarray(labels), rng)[..., np.newaxis].astype(np.float32)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedModels:
    from kubetrain.trainer.export import export_model
    from kubetrain.trainer.models import build_model, compile_model
    from kubetrain.trainer.tflib import keras, tf

    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("models")
    metadata = {
        "classNames": CLASS_NAMES,
        "metric": "val_accuracy",
        "dataset": "mnist",
        "architecture": "mnist-dense",
        "jobName": "server-tests",
    }
    untrained = build_model("mnist-dense", (28, 28, 1), 10)
    export_model(untrained, root, "mnist", {**metadata, "metrics": {"val_accuracy": 0.1}})
    trained = build_model("mnist-dense", (28, 28, 1), 10)
    compile_model(trained, 0.003)
    labels = np.arange(400) % 10
    trained.fit(pattern_images(labels, seed=1), labels, epochs=4, batch_size=32, verbose=0)
    export_model(
        trained, root, "mnist", {**metadata, "metrics": {"val_accuracy": 0.99}, "epoch": 4}
    )
    # An export still being written: hidden, never a version.
    (root / "mnist" / ".export-0123abcd").mkdir()
    return ExportedModels(root, root / "mnist", trained, untrained)


def metric_value(text: str, sample: str, /, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition whose labels include `labels`;
    0 if there is none."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


class ServerProcess:
    """`python -m kubetrain.trainer.server` on a loopback port, as the container runs it."""

    def __init__(
        self, model_dir: Path, *flags: str, env: dict[str, str] | None = None, log: Path
    ) -> None:
        self.port, self.grpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        command = [
            sys.executable,
            "-m",
            "kubetrain.trainer.server",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            *flags,
        ]
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.not_ready_while_alive = False

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
        """Poll the probes as the kubelet does until ready; remembers a live-but-unready answer."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log()}")
                try:
                    alive = client.get("/healthz").status_code == 200
                    ready = client.get("/readyz").status_code
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                if ready == 200:
                    return self
                self.not_ready_while_alive |= alive and ready == 503
                time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start server processes that are stopped at the end of the session."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(model_dir: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(model_dir, *flags, env=env, log=logs / f"{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(exported: ExportedModels, start_server) -> ServerProcess:
    """The shared server: highest version, batching on with a short wait."""
    return start_server(
        exported.model_dir, "--max-batch-size", "32", "--batch-timeout-micros", "20000"
    ).wait_ready()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
