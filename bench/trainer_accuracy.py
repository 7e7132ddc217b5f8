"""Accuracy and throughput of the trainer on the real data in ../shared/data.

Each row is a real `kubetrain run` of a TrainingJob built from the examples, with local worker
processes. Throughput for two workers is printed as a ratio against one worker measured in the
same run, on the same job. Targets: seed dense >= 98.0% and MNIST CNN >= 99.2% test accuracy;
PlanesNet seed CNN >= 97% with whole scenes held out, and the stronger PlanesNet CNN likewise.

    python bench/trainer_accuracy.py                 # everything (about 25 minutes on 2 cores)
    python bench/trainer_accuracy.py --only mnist-dense --only throughput
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kubetrain.trainer.api.records import Epoch, Record, Result
from kubetrain.trainer.api.spec import load_job
from kubetrain.trainer.runner import Display, run_local

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
MNIST = ROOT / "examples" / "mnist.yaml"
PLANESNET = ROOT / "examples" / "planesnet.yaml"

CASES = {
    "mnist-dense": (
        MNIST,
        0.980,
        [
            "spec.model.architecture=mnist-dense",
            "spec.training.epochs=12",
            "spec.workers.replicas=1",
        ],
    ),
    "mnist-cnn": (
        MNIST,
        0.992,
        ["spec.model.architecture=mnist-cnn", "spec.training.epochs=8", "spec.workers.replicas=1"],
    ),
    "planesnet-seed": (
        PLANESNET,
        0.97,
        [
            f"spec.dataset.source={SHARED / 'planesnet'}",
            "spec.model.architecture=planesnet-seed",
            "spec.training.epochs=30",
            "spec.workers.replicas=1",
        ],
    ),
    "planesnet-cnn": (
        PLANESNET,
        0.97,
        [
            f"spec.dataset.source={SHARED / 'planesnet'}",
            "spec.model.architecture=planesnet-cnn",
            "spec.training.epochs=30",
            "spec.workers.replicas=1",
        ],
    ),
}


class Quiet(Display):
    def show(self, worker: int, record: Record) -> None:
        if worker == 0 and isinstance(record, Epoch):
            accuracy = record.metrics["val_accuracy"]
            print(f"    epoch {record.epoch}: val_accuracy {accuracy:.4f}", flush=True)


def run(path: Path, overrides: list[str], workdir: Path) -> Result:
    return run_local(load_job(path, overrides), workdir, display=Quiet())


def accuracy(name: str, workdir: Path) -> dict:
    path, target, overrides = CASES[name]
    result = run(path, overrides, workdir / name)
    row = {
        "case": name,
        "test_accuracy": result.test_accuracy,
        "target": target,
        "met": result.test_accuracy >= target,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.validation["val_accuracy"],
        "test_examples": result.test_examples,
        "wall_seconds": result.wall_time_seconds,
    }
    print(json.dumps(row), flush=True)
    return row


def throughput(workdir: Path) -> dict:
    """The same MNIST job on 1 and 2 workers; examples/second of the training loop."""
    rates = {}
    for replicas in (1, 2):
        result = run(
            MNIST,
            [
                "spec.training.epochs=2",
                f"spec.workers.replicas={replicas}",
                "spec.training.batchSize=256",
            ],
            workdir / f"throughput-{replicas}",
        )
        rates[replicas] = result.examples_per_second
    row = {
        "case": "throughput",
        "examples_per_second_1_worker": rates[1],
        "examples_per_second_2_workers": rates[2],
        "ratio_2_vs_1": rates[2] / rates[1],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[*CASES, "throughput"])
    args = parser.parse_args()
    chosen = args.only or [*CASES, "throughput"]
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        rows = [
            throughput(Path(tmp)) if c == "throughput" else accuracy(c, Path(tmp)) for c in chosen
        ]
    print("\ncase            test accuracy  target   met")
    for row in rows:
        if row["case"] == "throughput":
            print(
                f"throughput      2 workers = {row['ratio_2_vs_1']:.2f}x 1 worker "
                f"({row['examples_per_second_2_workers']:.0f} vs "
                f"{row['examples_per_second_1_worker']:.0f} examples/s)"
            )
        else:
            print(
                f"{row['case']:<15} {row['test_accuracy']:.4f}         {row['target']:.3f}    "
                f"{'yes' if row['met'] else 'NO'}"
            )


if __name__ == "__main__":
    main()
