"""What one kubetrain worker costs over the plain Keras it wraps.

The same MNIST split, model, batch, learning rate and epochs, two ways, alternating for a few
rounds, each a whole process started from the shell:

- plain: `model.fit` on the split in one process (this file run with `--plain`), nothing else;
- kubetrain: `kubetrain run examples/mnist.yaml` with one worker, which also checkpoints every
  epoch, keeps a backup to resume from, writes TensorBoard curves, tests the best checkpoint and
  exports it.

Both measure examples/second the same way: examples trained over the seconds the epochs took,
validation included (the kubetrain figure is its result's `examplesPerSecond`). Printed:
medians and the ratios kubetrain / plain. Goals: >= 0.95x the examples/second, <= 1.15x the
whole-process time.

    python bench/keras_overhead.py [--rounds 3] [--epochs 3]
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

ROOT = Path(__file__).resolve().parent.parent
MNIST_JOB = ROOT / "examples" / "mnist.yaml"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
BATCH = 256
SETTINGS = [
    f"spec.dataset.source={SHARED_MNIST}",
    "spec.model.architecture=mnist-dense",
    "spec.workers.replicas=1",
    f"spec.training.batchSize={BATCH}",
]


def plain(epochs: int) -> None:
    """The baseline: the job's split and model, `model.fit`, nothing more. Prints its
    examples/second as JSON."""
    from kubetrain.trainer.api.spec import load_job
    from kubetrain.trainer.data import load_source, split
    from kubetrain.trainer.models import build_model, compile_model
    from kubetrain.trainer.tflib import keras, tf

    job = load_job(MNIST_JOB, [*SETTINGS, f"spec.training.epochs={epochs}"])
    spec = job.spec
    keras.utils.set_random_seed(spec.training.seed)
    source = load_source(spec.dataset)
    parts = split(source, spec.dataset, spec.training.seed)

    def dataset(indices, train: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(
            (source.train.read(indices), source.train.labels[indices])
        )
        if train:
            ds = ds.shuffle(len(indices), seed=spec.training.seed).repeat()
        ds = ds.batch(BATCH, drop_remainder=True)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)

    steps = len(parts.train) // BATCH
    model = build_model(spec.model.architecture, source.input_shape, len(source.class_names))
    compile_model(model, spec.training.learning_rate)
    seconds: list[float] = []

    class Rate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(
        dataset(parts.train, train=True),
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=dataset(parts.validation, train=False),
        callbacks=[Rate()],
        verbose=0,
    )
    print(json.dumps({"examplesPerSecond": steps * BATCH * epochs / sum(seconds)}))


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain(args.epochs)
        return
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    kubetrain = str(Path(sys.executable).with_name("kubetrain"))
    seconds: dict[str, list[float]] = {"plain": [], "kubetrain": []}
    rates: dict[str, list[float]] = {"plain": [], "kubetrain": []}
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        for round_ in range(args.rounds):
            took, out = timed(
                [sys.executable, __file__, "--plain", "--epochs", str(args.epochs)], env
            )
            seconds["plain"].append(took)
            rates["plain"].append(json.loads(out.splitlines()[-1])["examplesPerSecond"])
            workdir = Path(tmp) / f"run-{round_}"
            sets = [
                a for s in [*SETTINGS, f"spec.training.epochs={args.epochs}"] for a in ("--set", s)
            ]
            took, _ = timed(
                [kubetrain, "run", str(MNIST_JOB), "--workdir", str(workdir), *sets], env
            )
            seconds["kubetrain"].append(took)
            result = json.loads((workdir / "result.json").read_text())
            rates["kubetrain"].append(result["examplesPerSecond"])
            print(
                f"round {round_ + 1}: plain {seconds['plain'][-1]:.1f} s "
                f"{rates['plain'][-1]:,.0f} ex/s; kubetrain {took:.1f} s "
                f"{rates['kubetrain'][-1]:,.0f} ex/s",
                flush=True,
            )
    median_s = {k: statistics.median(v) for k, v in seconds.items()}
    median_r = {k: statistics.median(v) for k, v in rates.items()}
    row = {
        "case": "keras-overhead",
        "epochs": args.epochs,
        "batch": BATCH,
        "plain_seconds": round(median_s["plain"], 1),
        "kubetrain_seconds": round(median_s["kubetrain"], 1),
        "plain_examples_per_second": round(median_r["plain"]),
        "kubetrain_examples_per_second": round(median_r["kubetrain"]),
        "ratio_examples_per_second": round(median_r["kubetrain"] / median_r["plain"], 3),
        "ratio_seconds": round(median_s["kubetrain"] / median_s["plain"], 3),
        "rounds": {"seconds": seconds, "examples_per_second": rates},
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
