"""`kubetrain run` as a user types it."""

import json
import os
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
    assert f"kubetrain tensorboard {tmp_path / 'run' / 'tensorboard'}" in done.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result == json.loads(done.stdout)
    assert {
        "status",
        "bestEpoch",
        "validation",
        "test",
        "testAccuracy",
        "model",
        "wallTimeSeconds",
        "examplesPerSecond",
    } <= set(result)
    metadata = json.loads((Path(result["model"]["path"]) / "metadata.json").read_text())
    assert metadata["epoch"] == result["bestEpoch"]
    assert metadata["inputShape"] == [28, 28, 1]
    assert metadata["metrics"]["test_accuracy"] == result["testAccuracy"]

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


def test_a_job_file_that_is_a_directory_or_a_workdir_that_is_a_file_is_an_error_not_a_trace(
    tmp_path: Path, job_document: dict
) -> None:
    done = kubetrain("run", str(tmp_path))
    assert done.returncode == 2
    assert "is a directory" in done.stderr and "Traceback" not in done.stderr

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_document))
    (tmp_path / "taken").write_text("a file")
    done = kubetrain("run", str(path), "--workdir", str(tmp_path / "taken" / "run"))
    assert done.returncode == 2
    assert "cannot be made a directory" in done.stderr and "Traceback" not in done.stderr


def test_set_string_keeps_a_value_yaml_would_read_as_a_boolean(job_document: dict) -> None:
    from kubetrain.trainer.api.spec import SpecError, apply_override, parse_job

    apply_override(job_document, "spec.model.name=no")
    with pytest.raises(SpecError, match=r"spec\.model\.name"):
        parse_job(job_document)
    apply_override(job_document, "spec.model.name=no", string=True)
    assert parse_job(job_document).spec.model_name == "no"


@pytest.mark.slow
def test_a_lone_worker_without_tf_config_trains(job_document: dict, tmp_path: Path) -> None:
    job_document["spec"]["training"]["epochs"] = 1
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_document))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["KUBETRAIN_TERMINATION_LOG"] = str(tmp_path / "termination-log")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetrain.trainer",
            "worker",
            "--job",
            str(path),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert records[0]["type"] == "start" and records[0]["workers"] == 1
    assert records[-1]["type"] == "result"
    assert json.loads((tmp_path / "termination-log").read_text())["status"] == "Succeeded"


def test_a_worker_given_bad_data_exits_3_with_its_reason(
    job_document: dict, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    job_document["spec"]["dataset"]["source"] = str(tmp_path / "empty")
    env = {
        **os.environ,
        "KUBETRAIN_JOB": json.dumps(job_document),
        "KUBETRAIN_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer", "worker", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 3
    assert "missing train-images-idx3-ubyte" in (tmp_path / "termination-log").read_text()


def test_tensorboard_reads_a_jobs_curves_where_run_keeps_them(
    job_document: dict, tmp_path: Path
) -> None:
    from kubetrain.trainer.curves import log_dir

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(job_document))
    assert log_dir(str(path)) == "runs/tiny/tensorboard"
    assert log_dir(str(path), str(tmp_path / "run")) == f"{tmp_path}/run/tensorboard"
    job_document["spec"]["storage"] = {"uri": "s3://bucket/kubetrain"}
    path.write_text(yaml.safe_dump(job_document))
    assert log_dir(str(path)) == "s3://bucket/kubetrain/jobs/tiny/tensorboard"
    # A directory or URI is read as it is: TensorBoard finds the runs below it.
    assert log_dir(str(tmp_path)) == str(tmp_path)
    assert log_dir("s3://bucket/kubetrain/jobs") == "s3://bucket/kubetrain/jobs"
    # A pod's TensorBoard starts before the chief writes: a directory still to come.
    assert log_dir(f"{tmp_path}/jobs/tiny/tensorboard") == f"{tmp_path}/jobs/tiny/tensorboard"


def test_tensorboard_on_a_missing_job_file_names_it(tmp_path: Path) -> None:
    done = kubetrain("tensorboard", str(tmp_path / "nowhere.yaml"))
    assert done.returncode == 2
    assert "nowhere.yaml: no such file" in done.stderr and "Traceback" not in done.stderr
