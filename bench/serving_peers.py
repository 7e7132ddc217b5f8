"""Benchmark: kubetrain's model server against KServe's and MLServer's, same model, same load.

Exports `mnist-dense` and `mnist-cnn` as `serving_batching.py` does, and serves each with:
kubetrain (batching on, its defaults; REST v1, Open Inference REST v2 and gRPC on one server),
kubetrain with batching off, KServe's Python server (a custom `kserve.Model` calling the same
SavedModel signature) and MLServer (a custom runtime, adaptive batching with kubetrain's batch
size and wait). Each peer runs in its own virtualenv, created once under
~/.cache/kubetrain/bench-venvs from PyPI. Every server runs at once; the measurements are
interleaved, round by round, so load from elsewhere on the machine falls on all of them alike.
The load is `serving_batching.py`'s: keep-alive clients sending one instance per request.
Each peer gets its own protocol: KServe TF Serving's v1 REST, MLServer the v2 REST. Medians
over the rounds are printed, then kubetrain (REST v1) / the best peer.

    python bench/serving_peers.py [--models mnist-dense,mnist-cnn] [--rounds 3] [--duration 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kubetrain.trainer.runner import free_ports
from serving_batching import (
    HOST,
    Result,
    drive,
    export_benchmark_model,
    process_cpu_seconds,
    start_server,
    wait_ready,
)

VENVS = Path.home() / ".cache" / "kubetrain" / "bench-venvs"
TENSORFLOW = "tensorflow-cpu==2.21.*"
PEER_REQUIREMENTS = {
    "kserve": ["kserve==0.21.0", TENSORFLOW],
    "mlserver": ["mlserver==1.7.1", TENSORFLOW],
}
MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_MICROS = 2000  # kubetrain's default; MLServer's max_batch_time is set to match
NAME = "mnist"
SETTLE = 0.5
"""Seconds between measurements: servers finish what the last clients left in flight."""

KSERVE_MODEL = '''
"""A custom kserve.Model serving the SavedModel's default signature (the KServe docs' way)."""
import logging, os, sys
import numpy as np
import tensorflow as tf
import kserve

class SavedModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.loaded = tf.saved_model.load(path)
        self.function = self.loaded.signatures["serving_default"]
        (self.input_name,) = self.function.structured_input_signature[1]
        (self.output_name,) = self.function.structured_outputs
        shape = self.function.structured_input_signature[1][self.input_name].shape[1:]
        self.call(np.zeros((1, *shape), np.float32))
        self.ready = True

    def call(self, images):
        return self.function(**{self.input_name: tf.constant(images)})[self.output_name].numpy()

    def predict(self, payload, headers=None):
        images = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self.call(images).tolist()}

if __name__ == "__main__":
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    model = SavedModel(os.environ["MODEL_NAME"], os.environ["MODEL_PATH"])
    kserve.ModelServer(
        http_port=int(os.environ["HTTP_PORT"]), enable_grpc=False, workers=1,
        enable_latency_logging=False,
    ).start([model])
'''

MLSERVER_RUNTIME = '''
"""A custom MLServer runtime serving the SavedModel's default signature."""
import numpy as np
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class SavedModel(MLModel):
    async def load(self) -> bool:
        self.loaded = tf.saved_model.load(self.settings.parameters.uri)
        self.function = self.loaded.signatures["serving_default"]
        (self.input_name,) = self.function.structured_input_signature[1]
        (self.output_name,) = self.function.structured_outputs
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        output = self.function(**{self.input_name: tf.constant(images)})[self.output_name]
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(self.output_name, output.numpy())],
        )
'''


def peer_python(peer: str) -> Path:
    """The peer's virtualenv's python, creating or updating the environment if needed."""
    venv = VENVS / peer
    marker = venv / ".kubetrain-requirements"
    wanted = "\n".join(PEER_REQUIREMENTS[peer])
    python = venv / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and python.exists():
        return python
    print(f"installing {peer} into {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *PEER_REQUIREMENTS[peer]], check=True)
    marker.write_text(wanted)
    return python


@dataclass
class Target:
    """One way to send the load to one server."""

    label: str
    process: subprocess.Popen
    run: Callable[[int, float], Result]
    results: dict[int, list[Result]] = field(default_factory=dict)

    def measure(self, clients: int, seconds: float) -> None:
        before = process_cpu_seconds(self.process.pid)
        result = self.run(clients, seconds)
        result.cpu_seconds = process_cpu_seconds(self.process.pid) - before
        self.results.setdefault(clients, []).append(result)

    def median(self, clients: int, metric: Callable[[Result], float]) -> float:
        return statistics.median(metric(r) for r in self.results[clients])


def v2_body(instance: np.ndarray, input_name: str) -> bytes:
    tensor = {
        "name": input_name,
        "shape": [1, *instance.shape],
        "datatype": "FP32",
        "data": instance.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def drive_grpc(port: int, instance: np.ndarray, input_name: str, clients: int, seconds: float):
    """TF Serving's gRPC Predict, one channel (connection) per client, back to back."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    shape = [1, *instance.shape]
    request.inputs[input_name].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape]
            ),
            tensor_content=instance.astype(np.float32).tobytes(),
        )
    )

    async def client(deadline: float, result: Result) -> None:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    await predict(request, timeout=30)
                except grpc.aio.AioRpcError:
                    result.errors += 1
                    continue
                result.requests += 1
                result.latencies.append(time.perf_counter() - start)

    async def main() -> Result:
        result = Result(0, 0, seconds, [])
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(client(deadline, result) for _ in range(clients)))
        return result

    return asyncio.run(main())


def start_kserve(version_dir: Path, port: int, workdir: Path, started: list) -> subprocess.Popen:
    script = workdir / "kserve_model.py"
    script.write_text(KSERVE_MODEL)
    env = {**os.environ, "MODEL_NAME": NAME, "MODEL_PATH": str(version_dir), "HTTP_PORT": str(port)}
    process = subprocess.Popen(
        [str(peer_python("kserve")), str(script)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "kserve.log").open("wb"),
    )
    started.append(process)
    return wait_ready(process, f"http://{HOST}:{port}/v2/health/ready")


def start_mlserver(version_dir: Path, port: int, workdir: Path, started: list) -> subprocess.Popen:
    root = workdir / "mlserver"
    (root / NAME).mkdir(parents=True)
    (root / "runtime.py").write_text(MLSERVER_RUNTIME)
    grpc_port, metrics_port = free_ports(2)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": HOST,
                "http_port": port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "debug": False,
                # In-process inference: MLServer 1.7.1's worker processes fail to start with
                # the uvloop it installs ("no current event loop"), and on 2 cores the
                # hop to a worker process would cost more than it spreads.
                "parallel_workers": 0,
            }
        )
    )
    (root / NAME / "model-settings.json").write_text(
        json.dumps(
            {
                "name": NAME,
                "implementation": "runtime.SavedModel",
                "parameters": {"uri": str(version_dir)},
                "max_batch_size": MAX_BATCH_SIZE,
                "max_batch_time": BATCH_TIMEOUT_MICROS / 1e6,
            }
        )
    )
    mlserver = peer_python("mlserver").parent / "mlserver"
    process = subprocess.Popen(
        [str(mlserver), "start", str(root)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "mlserver.log").open("wb"),
    )
    started.append(process)
    return wait_ready(process, f"http://{HOST}:{port}/v2/models/{NAME}/ready", 60)


def start_all(
    model_dir: Path, instance: np.ndarray, input_name: str, workdir: Path, started: list
) -> list[Target]:
    """Every server, each appended to `started` as soon as it runs, and the targets."""
    version_dir = max(
        (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    v1 = json.dumps({"instances": [instance.tolist()]}).encode()
    v2 = v2_body(instance, input_name)
    infer = f"/v2/models/{NAME}/infer"
    http, grpc_port, unbatched, kserve, mlserver = free_ports(5)
    batching = ["--max-batch-size", str(MAX_BATCH_SIZE)]
    batching += ["--batch-timeout-micros", str(BATCH_TIMEOUT_MICROS)]
    kubetrain = start_server(model_dir, http, [*batching, "--grpc-port", str(grpc_port)])
    started.append(kubetrain)
    off = start_server(model_dir, unbatched, ["--no-enable-batching"])
    started.append(off)
    peers = {}
    for peer, start, port in (
        ("kserve", start_kserve, kserve),
        ("mlserver", start_mlserver, mlserver),
    ):
        peers[peer] = start(version_dir, port, workdir, started)
    return [
        Target("kubetrain", kubetrain, lambda c, s: drive(http, NAME, v1, c, s)),
        Target("kubetrain v2", kubetrain, lambda c, s: drive(http, NAME, v2, c, s, infer)),
        Target(
            "kubetrain gRPC",
            kubetrain,
            lambda c, s: drive_grpc(grpc_port, instance, input_name, c, s),
        ),
        Target("kubetrain unbatched", off, lambda c, s: drive(unbatched, NAME, v1, c, s)),
        Target("kserve", peers["kserve"], lambda c, s: drive(kserve, NAME, v1, c, s)),
        Target("mlserver", peers["mlserver"], lambda c, s: drive(mlserver, NAME, v2, c, s, infer)),
    ]


def bench_model(architecture: str, args: argparse.Namespace, levels: list[int]) -> list[Target]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_benchmark_model(architecture, Path(tmp) / "models")
        from kubetrain.trainer.server.model import choose_version, load_model

        model = load_model(NAME, model_dir, choose_version(model_dir, None))
        instance = np.random.default_rng(0).integers(0, 256, model.input_shape).astype(np.float32)
        started: list[subprocess.Popen] = []
        try:
            targets = start_all(model_dir, instance, model.input.name, Path(tmp), started)
            for target in targets:  # warm up connections, threads and batch targets
                target.run(4, 0.5)
            for round_ in range(args.rounds):
                for clients in levels:
                    order = targets if round_ % 2 == 0 else targets[::-1]
                    for target in order:
                        time.sleep(SETTLE)
                        target.measure(clients, args.duration)
                print(f"  {architecture}: round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for process in started:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    return targets


def report(architecture: str, targets: list[Target], levels: list[int], args) -> None:
    ms = 1000
    print(
        f"\n{architecture}: {os.cpu_count()} cores, median of {args.rounds} rounds of "
        f"{args.duration:g} s, max batch {MAX_BATCH_SIZE}, max wait {BATCH_TIMEOUT_MICROS} us"
    )
    header = (
        f"{'server':<20} {'clients':>7} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu ms/req':>10} | errors"
    )
    print(header)
    print("-" * len(header))
    for target in targets:
        for c in levels:
            errors = sum(r.errors for r in target.results[c])
            print(
                f"{target.label:<20} {c:>7} | {target.median(c, lambda r: r.throughput):>7.0f} "
                f"{target.median(c, lambda r: r.percentile(50)) * ms:>7.2f} "
                f"{target.median(c, lambda r: r.percentile(99)) * ms:>7.2f} "
                f"{target.median(c, lambda r: r.cpu_ms_per_request):>10.2f} | {errors}"
            )
    by_label = {t.label: t for t in targets}
    ours, off = by_label["kubetrain"], by_label["kubetrain unbatched"]
    peers = [by_label["kserve"], by_label["mlserver"]]
    print(
        "\nkubetrain (REST v1, batching) / best peer; p99/p50 is kubetrain's; "
        "on/off is batching on / off"
    )
    print(
        f"{'clients':>7} | {'best peer':<9} {'req/s':>6} {'p50':>6} {'p99':>6} | "
        f"{'p99/p50':>7} | {'on/off req/s':>12} {'on/off p50':>10}"
    )
    for c in levels:
        best = max(peers, key=lambda t: t.median(c, lambda r: r.throughput))
        throughput = ours.median(c, lambda r: r.throughput)
        p50, p99 = (ours.median(c, lambda r, q=q: r.percentile(q)) for q in (50, 99))
        print(
            f"{c:>7} | {best.label:<9} "
            f"{throughput / best.median(c, lambda r: r.throughput):>6.2f} "
            f"{p50 / best.median(c, lambda r: r.percentile(50)):>6.2f} "
            f"{p99 / best.median(c, lambda r: r.percentile(99)):>6.2f} | {p99 / p50:>7.2f} | "
            f"{throughput / off.median(c, lambda r: r.throughput):>12.2f} "
            f"{p50 / off.median(c, lambda r: r.percentile(50)):>10.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mnist-dense,mnist-cnn")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    for peer in PEER_REQUIREMENTS:
        peer_python(peer)
    results = {}
    for architecture in args.models.split(","):
        results[architecture] = bench_model(architecture, args, levels)
    for architecture, targets in results.items():
        report(architecture, targets, levels, args)
    print("\nratios: above 1 is kubetrain ahead for req/s, behind for p50 and p99")
    return 0


if __name__ == "__main__":
    sys.exit(main())
