"""A job's state and data in S3 against a local directory, measured side by side in one run.

A real S3 server (versitygw, `hack/s3`) on loopback, and the same TrainingJob run with
`spec.storage.uri` in a bucket and in a directory, alternately. Printed as ratios:

- epoch time with checkpoints and the training backup published to S3 after every epoch,
  against the same job writing them to a directory (goal: at most 5 % more);
- the model pull a serving pod's init container does (`kubetrain pull`), in seconds and MB/s;
- PlanesNet read from a bucket against the same chips in a directory: training
  examples/second (goal: at least 0.9x) and the whole run's wall time, fetching included.

    python bench/object_storage.py                       # both cases, about 10 minutes here
    python bench/object_storage.py --only checkpoints --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubetrain.trainer.api.entrypoints import DATA_CACHE_ENV
from kubetrain.trainer.api.records import Epoch, Record, Result
from kubetrain.trainer.api.spec import load_job
from kubetrain.trainer.runner import Display, run_local

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from s3server import S3Server  # noqa: E402  (the tests' server: one way to run it)

SHARED = ROOT.parent / "shared" / "data"
MNIST = ROOT / "examples" / "mnist.yaml"
PLANESNET = ROOT / "examples" / "planesnet.yaml"
BUCKET = "bench"


class EpochTimes(Display):
    """The chief's epoch times: training plus whatever its epoch-end callbacks publish."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def show(self, worker: int, record: Record) -> None:
        if worker == 0 and isinstance(record, Epoch):
            self.seconds.append(record.seconds)


def run(job_file: Path, overrides: list[str], workdir: Path) -> tuple[Result, list[float], float]:
    """(result, epoch seconds, wall seconds) of one `kubetrain run`."""
    display = EpochTimes()
    started = time.perf_counter()
    result = run_local(load_job(job_file, overrides), workdir, display=display)
    return result, display.seconds, time.perf_counter() - started


def checkpoints(s3: S3Server, workdir: Path, rounds: int) -> dict:
    """examples/mnist.yaml on one worker, state in a directory vs in the bucket."""
    job = ["spec.workers.replicas=1", "spec.training.epochs=5"]
    epoch: dict[str, list[float]] = {"directory": [], "s3": []}
    result = None
    for round_ in range(rounds):
        for where in ("directory", "s3"):
            uri = (
                [
                    f"spec.storage.uri=s3://{BUCKET}/checkpoints-{round_}",
                    "spec.storage.claimName=null",
                ]
                if where == "s3"
                else []
            )
            result, seconds, _ = run(MNIST, [*job, *uri], workdir / f"{where}-{round_}")
            epoch[where] += seconds[1:]  # the first epoch also traces the graph
    local, remote = statistics.median(epoch["directory"]), statistics.median(epoch["s3"])
    assert result is not None and result.model is not None
    pulled = workdir / "pulled"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetrain.trainer",
            "pull",
            "--model-dir",
            result.model.path.rsplit("/", 1)[0],
            "--into",
            str(pulled),
        ],
        check=True,
        env={**os.environ, "MODEL_VERSION": str(result.model.version)},
        capture_output=True,
    )
    pull_seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in pulled.rglob("*") if p.is_file())
    row = {
        "case": "checkpoints",
        "epoch_seconds_directory": round(local, 3),
        "epoch_seconds_s3": round(remote, 3),
        "publish_share_of_epoch": round(remote / local - 1, 4),
        "goal_share": 0.05,
        "model_pull_seconds": round(pull_seconds, 2),
        "model_mb": round(size / 1e6, 2),
        "epochs_measured": len(epoch["s3"]),
    }
    print(json.dumps(row), flush=True)
    return row


def planesnet(s3: S3Server, workdir: Path, rounds: int) -> dict:
    """The PlanesNet example (1 worker, 2 epochs) reading its chips locally vs from the bucket,
    alternately; every S3 run starts from an empty cache, so it fetches every chip."""
    chips = SHARED / "planesnet" / "planesnet"
    fs = s3.filesystem()
    started = time.perf_counter()
    fs.put(str(chips), f"{BUCKET}/planesnet/", recursive=True)
    upload = time.perf_counter() - started
    job = ["spec.workers.replicas=1", "spec.training.epochs=2", "spec.dataset.augment=false"]
    rates: dict[str, list[float]] = {"directory": [], "s3": []}
    walls: dict[str, list[float]] = {"directory": [], "s3": []}
    for round_ in range(rounds):
        for where, source in (("directory", str(chips)), ("s3", f"s3://{BUCKET}/planesnet")):
            os.environ[DATA_CACHE_ENV] = str(workdir / f"cache-{where}-{round_}")
            result, _, wall = run(
                PLANESNET,
                [*job, f"spec.dataset.source={source}"],
                workdir / f"planesnet-{where}-{round_}",
            )
            rates[where].append(result.examples_per_second)
            walls[where].append(wall)
    rate = {k: statistics.median(v) for k, v in rates.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    row = {
        "case": "planesnet",
        "chips": len(list(chips.glob("*.png"))),
        "rounds": rounds,
        "upload_seconds": round(upload, 1),
        "examples_per_second_directory": round(rate["directory"], 1),
        "examples_per_second_s3": round(rate["s3"], 1),
        "ratio_s3_vs_directory": round(rate["s3"] / rate["directory"], 3),
        "goal_ratio": 0.9,
        "wall_seconds_directory": round(wall["directory"], 1),
        "wall_seconds_s3_cold_cache": round(wall["s3"], 1),
        "wall_ratio_s3_vs_directory": round(wall["s3"] / wall["directory"], 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=["checkpoints", "planesnet"])
    parser.add_argument("--rounds", type=int, default=2, help="alternations of each comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp, S3Server() as s3:
        os.environ.update(s3.env())
        s3.make_bucket(BUCKET)
        workdir = Path(tmp)
        if not args.only or "checkpoints" in args.only:
            checkpoints(s3, workdir, args.rounds)
        if not args.only or "planesnet" in args.only:
            planesnet(s3, workdir, args.rounds)


if __name__ == "__main__":
    main()
