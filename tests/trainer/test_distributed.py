"""Real MultiWorkerMirroredStrategy training: worker processes on localhost, as `kubetrain run`
starts them and as the operator starts pods."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubetrain.trainer.api.records import Epoch, Record, Start
from kubetrain.trainer.api.spec import parse_job
from kubetrain.trainer.runner import Display, JobFailed, cores_per_worker, run_local

pytestmark = pytest.mark.slow


class Recorder(Display):
    """Keeps every worker's records; optionally SIGKILLs a worker at a chosen chief epoch."""

    def __init__(self, kill_worker_at_epoch: int | None = None) -> None:
        super().__init__()
        self.records: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.kill_at = kill_worker_at_epoch
        self.killed = False

    def show(self, worker: int, record: Record) -> None:
        self.records[worker].append(record.document())
        if (
            self.kill_at
            and not self.killed
            and worker == 0
            and isinstance(record, Epoch)
            and record.epoch == self.kill_at
        ):
            (start,) = [r for r in self.records[1] if r["type"] == "start"][-1:]
            os.kill(start["pid"], signal.SIGKILL)
            self.killed = True

    def of(self, worker: int, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records[worker] if r["type"] == kind]


def test_two_workers_stay_in_sync_and_export_the_best_epoch(
    job_document: dict, tmp_path: Path
) -> None:
    recorder = Recorder()
    result = run_local(parse_job(job_document), tmp_path, display=recorder)

    chief, other = recorder.of(0, "epoch"), recorder.of(1, "epoch")
    assert [r["epoch"] for r in chief] == [r["epoch"] for r in other] == [1, 2, 3]
    assert [r["weightsDigest"] for r in chief] == [r["weightsDigest"] for r in other]
    assert len({r["weightsDigest"] for r in chief}) == 3  # the weights did change
    # Progress within an epoch reads like the epochs: running values, not summed over workers.
    batches = recorder.of(0, "batch")
    assert batches and all(0 <= b["metrics"]["accuracy"] <= 1 for b in batches), batches

    starts = {w: recorder.of(w, "start")[0] for w in (0, 1)}
    assert starts[0]["shardExamples"] + starts[1]["shardExamples"] == starts[0]["trainExamples"]
    # The machine's cores are shared between the two, not each given all of them.
    assert starts[0]["threads"] == starts[1]["threads"] == cores_per_worker(2)

    best = max(chief, key=lambda r: r["metrics"]["val_accuracy"])
    assert result.best_epoch == best["epoch"]
    assert result.validation["val_accuracy"] == pytest.approx(best["metrics"]["val_accuracy"])
    assert result.test_accuracy > 0.9  # the patterns are learnable: this is real training
    assert result.model.version == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0001",
        "epoch-0002",
        "epoch-0003",
    ]
    runs = [run.name for run in (tmp_path / "tensorboard").iterdir()]
    assert sorted(runs) == ["train", "validation"]  # the chief's curves, nobody else's
    for run in runs:
        assert len(list((tmp_path / "tensorboard" / run).iterdir())) == 1  # one event file

    from kubetrain.trainer.tflib import tf

    served = tf.saved_model.load(result.model.path).signatures["serving_default"]
    from datasets import digit_images

    labels = np.arange(10)
    pixels = digit_images(labels, np.random.default_rng(9)).astype(np.float32)[..., None]
    predicted = served(images=tf.constant(pixels))["probabilities"].numpy().argmax(axis=1)
    assert (predicted == labels).mean() >= 0.9  # raw 0-255 pixels in, normalised inside


def test_a_killed_worker_restarts_the_job_from_the_last_checkpoint(
    job_document: dict, tmp_path: Path
) -> None:
    job_document["spec"]["training"]["epochs"] = 8
    recorder = Recorder(kill_worker_at_epoch=2)
    result = run_local(parse_job(job_document), tmp_path, display=recorder)

    assert recorder.killed
    (resumed,) = recorder.of(0, "resumed")
    assert resumed["fromEpoch"] >= 3  # not from zero
    epochs = [r["epoch"] for r in recorder.of(0, "epoch")]
    assert epochs.count(1) == 1  # epoch 1 was never trained again
    assert epochs[-1] == 8 and result.status == "Succeeded"
    assert len(list((tmp_path / "checkpoints").glob("epoch-*"))) == 8


def test_a_bad_dataset_fails_at_once_without_restarts(job_document: dict, tmp_path: Path) -> None:
    job_document["spec"]["dataset"]["source"] = str(tmp_path / "nowhere")
    recorder = Recorder()
    with pytest.raises(JobFailed, match="nowhere: no such file or directory"):
        run_local(parse_job(job_document), tmp_path / "run", display=recorder)
    assert not any("restarting" in str(r) for r in recorder.records.values())


def test_a_job_that_keeps_failing_stops_at_the_backoff_limit(
    job_document: dict, tmp_path: Path
) -> None:
    job_document["spec"]["runPolicy"] = {"backoffLimit": 1}
    job_document["spec"]["training"]["epochs"] = 50
    job_document["spec"]["workers"]["replicas"] = 2

    class KillEveryAttempt(Recorder):
        def show(self, worker: int, record: Record) -> None:
            super().show(worker, record)
            if worker == 1 and isinstance(record, Start):
                os.kill(record.pid, signal.SIGKILL)

    with pytest.raises(JobFailed, match=r"BackoffLimitExceeded.*backoffLimit=1"):
        run_local(parse_job(job_document), tmp_path, display=KillEveryAttempt())


def test_cores_are_shared_among_workers_but_never_fewer_than_one_each() -> None:
    cores = len(os.sched_getaffinity(0))
    assert cores_per_worker(1) == cores
    assert cores_per_worker(cores) == 1
    assert cores_per_worker(cores * 4) == 1
