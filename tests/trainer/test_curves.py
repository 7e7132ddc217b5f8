"""The chief's TensorBoard curves, and `kubetrain tensorboard` showing them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from boards import curves, get_json, tensorboard
from datasets import tiny_job
from kubetrain.trainer.api.spec import parse_job
from kubetrain.trainer.runner import run_local

pytestmark = pytest.mark.slow

LEARNING_RATE = 0.003


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> tuple[Path, Path]:
    """(job file, workdir) of a 2-epoch, 1-worker run as `kubetrain run --workdir` leaves it."""
    root = tmp_path_factory.mktemp("curves")
    document = tiny_job(tiny_mnist, epochs=2, replicas=1, learning_rate=LEARNING_RATE)
    job_file = root / "tiny.yaml"
    job_file.write_text(yaml.safe_dump(document))
    run_local(parse_job(document), root / "run")
    return job_file, root / "run"


def test_the_chief_draws_loss_metrics_and_learning_rate_of_every_epoch(
    trained: tuple[Path, Path],
) -> None:
    _, workdir = trained
    board = workdir / "tensorboard"
    assert sorted(p.name for p in board.iterdir()) == ["train", "validation"]
    train, validation = curves(board / "train"), curves(board / "validation")
    assert set(train) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    assert set(validation) == {"epoch_loss", "epoch_accuracy"}

    for epoch in (1, 2):  # the step is the epoch's number, and the values its checkpoint's
        saved = json.loads((workdir / f"checkpoints/epoch-{epoch:04d}/metrics.json").read_text())
        metrics = saved["metrics"]
        assert train["epoch_loss"][epoch] == pytest.approx(metrics["loss"])
        assert train["epoch_accuracy"][epoch] == pytest.approx(metrics["accuracy"])
        assert validation["epoch_loss"][epoch] == pytest.approx(metrics["val_loss"])
        assert validation["epoch_accuracy"][epoch] == pytest.approx(metrics["val_accuracy"])

    rate = train["epoch_learning_rate"]
    assert LEARNING_RATE > rate[1] > rate[2] >= 0  # cosine decay towards zero


def test_kubetrain_tensorboard_serves_a_jobs_curves_on_loopback_and_stops_cleanly(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    job_file, workdir = trained
    args = (str(job_file), "--workdir", str(workdir))
    with tensorboard(*args, log=tmp_path / "log", runs=["train", "validation"]) as url:
        tags = get_json(f"{url}/plugin/scalars/tags")
        assert "epoch_learning_rate" in tags["train"]  # type: ignore[index]
