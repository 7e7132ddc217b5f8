"""Benchmark: does dynamic batching pay off? Throughput and latency of the model server.

Runs the real server (`python -m kubetrain.trainer.server`) on loopback twice, batching on and
off, and drives it with 1, 8, 32 and 64 concurrent keep-alive clients for a fixed time each.
The same run measures the raw SavedModel call in-process: its single-row latency is the
floor for one client, its throughput at batch size = clients the ceiling for batching.
Numbers are printed as ratios against those in-run baselines, since absolute numbers depend
on the machine and on whatever else it is running.

    python bench/serving_batching.py [--architecture mnist-cnn] [--duration 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from kubetrain.trainer.runner import free_ports

if TYPE_CHECKING:
    from kubetrain.trainer.server.model import ServedModel

HOST = "127.0.0.1"  # loopback only
SHAPES = {"mnist": ((28, 28, 1), 10), "planesnet": ((20, 20, 3), 2)}


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = float("nan")  # the server process's CPU time while measured

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1000 if self.requests else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def export_benchmark_model(architecture: str, root: Path) -> Path:
    from kubetrain.trainer.export import export_model
    from kubetrain.trainer.models import build_model

    dataset = architecture.split("-")[0]
    shape, classes = SHAPES[dataset]
    model = build_model(architecture, shape, classes)
    export_model(model, root, dataset, {"classNames": [str(i) for i in range(classes)]})
    return root / dataset


def load_served_model(model_dir: Path) -> ServedModel:
    """The highest version, loaded and warmed up as the server does it."""
    from kubetrain.trainer.server.model import choose_version, load_model

    model = load_model(model_dir.name, model_dir, choose_version(model_dir, None))
    model.warm_up()
    return model


def raw_baseline(
    model: ServedModel, instance: np.ndarray, batch_sizes: list[int], seconds: float
) -> tuple[Result, dict[int, float]]:
    """Single-row call latencies, and rows/s of back-to-back calls at each batch size."""
    single: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        model.predict(instance[np.newaxis])
        single.append(time.perf_counter() - start)
    rows_per_second = {}
    for size in batch_sizes:
        batch = np.repeat(instance[np.newaxis], size, axis=0)
        model.predict(batch)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(batch_sizes):
            model.predict(batch)
            calls += 1
        rows_per_second[size] = calls * size / (time.perf_counter() - start)
    return Result(len(single), 0, sum(single), single), rows_per_second


def in_process_batching(
    model: ServedModel,
    instance: np.ndarray,
    levels: list[int],
    max_batch: int,
    max_wait: float,
    seconds: float,
) -> dict[str, dict[int, Result]]:
    """The batcher alone (no HTTP, no JSON): coalescing's effect on the model side."""
    from kubetrain.trainer.server.batching import Batcher, Unbatched

    rows = instance[np.newaxis]

    async def run(batcher: Batcher | Unbatched, clients: int) -> Result:
        batcher.start()
        result = Result(0, 0, seconds, [])
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await batcher.predict(rows)
                result.latencies.append(time.perf_counter() - start)
                result.requests += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        await batcher.close()
        return result

    results: dict[str, dict[int, Result]] = {"on": {}, "off": {}}
    for clients in levels:
        on = Batcher(model.predict, max_batch_size=max_batch, max_wait=max_wait)
        results["on"][clients] = asyncio.run(run(on, clients))
        results["off"][clients] = asyncio.run(run(Unbatched(model.predict), clients))
    return results


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: a cost per request that other load cannot inflate
    as much as it inflates wall-clock numbers on a shared machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model_dir: Path, port: int, flags: list[str]) -> subprocess.Popen:
    """kubetrain's server; without a `--grpc-port` among `flags`, with no gRPC port."""
    command = [sys.executable, "-m", "kubetrain.trainer.server", "--model-dir", str(model_dir)]
    command += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    command += [*flags] if "--grpc-port" in flags else ["--grpc-port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_ready(process, f"http://{HOST}:{port}/readyz")


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 180) -> subprocess.Popen:
    """`process` once `url` answers 200; killed if it does not within `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"server did not become ready at {url}")


async def _client(port: int, request: bytes, deadline: float, result: Result) -> None:
    """One keep-alive HTTP/1.1 connection sending requests back to back until the deadline."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            await reader.readexactly(length)
            if lines[0].split(" ")[1] == "200":
                result.requests += 1
                result.latencies.append(time.perf_counter() - start)
            else:
                result.errors += 1
    finally:
        writer.close()


def drive(
    port: int, name: str, body: bytes, clients: int, seconds: float, path: str | None = None
) -> Result:
    """`clients` keep-alive connections posting `body` to `path` (TF Serving's predict URL of
    model `name` by default) back to back for `seconds`."""
    path = path or f"/v1/models/{name}:predict"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def main() -> Result:
        result = Result(0, 0, seconds, [])
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, request, deadline, result) for _ in range(clients)))
        return result

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="mnist-dense")
    parser.add_argument("--model-dir", type=Path, help="an exported model (default: export one)")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or export_benchmark_model(args.architecture, Path(tmp))
        name = model_dir.name
        model = load_served_model(model_dir)
        rng = np.random.default_rng(0)
        instance = rng.integers(0, 256, model.input_shape).astype(np.float32)
        body = json.dumps({"instances": [instance.tolist()]}).encode()

        raw, raw_rows = raw_baseline(
            model,
            instance,
            sorted({min(c, args.max_batch_size) for c in levels}),
            args.duration,
        )
        batcher_only = in_process_batching(
            model,
            instance,
            levels,
            args.max_batch_size,
            args.batch_timeout_micros / 1e6,
            args.duration / 2,
        )
        runs: dict[str, dict[int, Result]] = {}
        for label, flags in (
            (
                "on",
                [
                    "--max-batch-size",
                    str(args.max_batch_size),
                    "--batch-timeout-micros",
                    str(args.batch_timeout_micros),
                ],
            ),
            ("off", ["--no-enable-batching"]),
        ):
            port = free_ports(1)[0]
            process = start_server(model_dir, port, flags)
            try:
                drive(port, name, body, 4, 0.5)  # warm up connections and threads
                runs[label] = {}
                for c in levels:
                    before = process_cpu_seconds(process.pid)
                    runs[label][c] = drive(port, name, body, c, args.duration)
                    runs[label][c].cpu_seconds = process_cpu_seconds(process.pid) - before
            finally:
                process.terminate()
                process.wait(60)
    print("HTTP server (JSON requests of one instance each):")
    report(args, name, raw, raw_rows, runs, levels)
    print("\nbatcher alone, in-process (no HTTP, no JSON):")
    report(args, name, raw, raw_rows, batcher_only, levels)
    return 0


def report(args, name, raw: Result, raw_rows, runs, levels) -> None:
    ms = 1000
    print(
        f"model {args.architecture} ({name}), {os.cpu_count()} cores, "
        f"{args.duration:g}s per point, max batch {args.max_batch_size}, "
        f"max wait {args.batch_timeout_micros}us"
    )
    print(
        f"raw SavedModel call, 1 row: p50 {raw.percentile(50) * ms:.2f} ms, "
        f"p99 {raw.percentile(99) * ms:.2f} ms, {raw.throughput:.0f} calls/s"
    )
    header = (
        f"{'clients':>7} | {'on req/s':>9} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'off req/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'on/off':>6} | "
        f"{'on/raw-batched':>14} | {'cpu ms/req on':>13} {'off':>5} | errors"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        on, off = runs["on"][c], runs["off"][c]
        limit = raw_rows[min(c, args.max_batch_size)]
        print(
            f"{c:>7} | {on.throughput:>9.0f} {on.percentile(50) * ms:>7.2f} "
            f"{on.percentile(99) * ms:>7.2f} | {off.throughput:>9.0f} "
            f"{off.percentile(50) * ms:>7.2f} {off.percentile(99) * ms:>7.2f} | "
            f"{on.throughput / off.throughput:>6.2f} | {on.throughput / limit:>14.2f} | "
            f"{on.cpu_ms_per_request:>13.2f} {off.cpu_ms_per_request:>5.2f} | "
            f"{on.errors + off.errors}"
        )
    one = runs["on"][levels[0]]
    print(
        f"single client p50 / raw call p50: {one.percentile(50) / raw.percentile(50):.2f}x "
        f"(target <= 2x)"
    )
    if 32 in runs["on"]:
        ratio = runs["on"][32].throughput / runs["off"][32].throughput
        print(f"throughput at 32 clients, batching on / off: {ratio:.2f}x (target >= 5x)")


if __name__ == "__main__":
    sys.exit(main())
