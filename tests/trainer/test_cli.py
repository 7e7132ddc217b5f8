"""`kubetrain run` as a user types it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def kubetrain(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_run_trains_exports_and_writes_the_result(job_document: dict, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(job_document))
    done = kubetrain(
        "run",
        str(path),
        "--workdir",
        str(tmp_path / "run"),
        "--set",
        "spec.training.epochs=2",
        "--set",
        "spec.workers.replicas=1",
    )
    assert done.returncode == 0, done.stderr
    assert "epoch 2/2" in done.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result == json.loads(done.stdout)
    assert {
        "status",
        "bestEpoch",
        "validation",
        "test",
        "test_accuracy",
        "model",
        "wallTimeSeconds",
        "examplesPerSecond",
    } <= set(result)
    metadata = json.loads((Path(result["model"]["path"]) / "metadata.json").read_text())
    assert metadata["epoch"] == result["bestEpoch"]
    assert metadata["inputShape"] == [28, 28, 1]
    assert metadata["metrics"]["test_accuracy"] == result["test_accuracy"]

    again = kubetrain(
        "run",
        str(path),
        "--workdir",
        str(tmp_path / "run"),
        "--set",
        "spec.training.epochs=1",
        "--set",
        "spec.workers.replicas=1",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model"]["version"] == 2  # version 1 is never overwritten


def test_a_bad_set_names_the_field_and_fails(tmp_path: Path) -> None:
    done = kubetrain(
        "run",
        "examples/mnist.yaml",
        "--set",
        "spec.training.batchSize=-5",
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode != 0
    assert "spec.training.batchSize" in done.stderr


def test_a_spec_with_an_unknown_field_is_refused(tmp_path: Path, job_document: dict) -> None:
    job_document["spec"]["trainnig"] = {"epochs": 1}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(job_document))
    done = kubetrain("run", str(path))
    assert done.returncode != 0
    assert "spec.trainnig: Extra inputs are not permitted" in done.stderr
