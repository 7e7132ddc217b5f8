"""Record what the real worker tells the operator: its log and its termination message.

    .venv/bin/python tests/operator/record_worker.py    # rewrites tests/operator/recorded/

The worker runs as the operator starts it in a pod (KUBETRAIN_JOB, KUBETRAIN_ATTEMPT,
TF_CONFIG, `--workdir`/`--model-root` on the storage volume), once training a tiny MNIST and
once given a dataset that is not there. Its paths are rewritten to the volume's mount path, so
the recording reads as it would in a pod. `test_worker_output.py` feeds the recording to the
operator's parsers, and re-records to check that it still matches what the worker prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubetrain.trainer.api.entrypoints import (
    ATTEMPT_ENV,
    JOB_ENV,
    TERMINATION_LOG_ENV,
    WORKER,
    worker_arguments,
)
from kubetrain.trainer.api.layout import job_workdir, model_root
from kubetrain.trainer.api.tfconfig import ENV as TF_CONFIG
from kubetrain.trainer.api.tfconfig import tf_config
from kubetrain.trainer.runner import free_ports

RECORDED = Path(__file__).resolve().parent / "recorded"
MOUNT = "/var/lib/kubetrain"
"""The storage volume's mount path in a worker pod (the spec's default)."""
MISSING_DATA = "data/missing"


def tiny_job(source: str, epochs: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "recorded", "namespace": "ml"},
        "spec": {
            "dataset": {"name": "mnist", "source": source},
            "model": {"architecture": "mnist-dense", "name": "mnist"},
            "training": {"epochs": epochs, "batchSize": 64, "learningRate": 0.003},
            "workers": {"replicas": 1},
        },
    }


def run_worker(job: dict[str, Any], volume: Path) -> tuple[int, str, str]:
    """(exit code, stdout, termination message) of one worker run, as in a pod."""
    name = job["metadata"]["name"]
    termination = volume / "termination-log"
    env = {
        **os.environ,
        JOB_ENV: json.dumps(job),
        ATTEMPT_ENV: "0",
        TF_CONFIG: tf_config([f"localhost:{free_ports(1)[0]}"], 0),
        TERMINATION_LOG_ENV: str(termination),
    }
    args = worker_arguments(job_workdir(str(volume), name), model_root(str(volume)))
    done = subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer", WORKER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    message = termination.read_text() if termination.exists() else ""
    return done.returncode, done.stdout, message


def record(mnist: Path, scratch: Path) -> dict[str, str]:
    """The recording's files: {name: text}, with this machine's paths replaced."""
    files: dict[str, str] = {}
    volume = scratch / "volume"
    code, stdout, message = run_worker(tiny_job(str(mnist)), volume)
    if code != 0:
        raise RuntimeError(f"the worker exited {code}:\n{stdout}")
    files["chief.log"], files["chief.termination-log"] = stdout, message
    missing, volume_2 = scratch / "missing", scratch / "volume-2"
    code, stdout, message = run_worker(tiny_job(str(missing)), volume_2)
    if code == 0:
        raise RuntimeError("the worker trained on a dataset that does not exist")
    files["permanent-error.log"], files["permanent-error.termination-log"] = stdout, message
    replacements = {str(volume): MOUNT, str(volume_2): MOUNT, str(missing): MISSING_DATA}
    for name, text in files.items():
        for old, new in replacements.items():
            text = text.replace(old, new)
        files[name] = text
    files["exit-codes.json"] = json.dumps({"chief": 0, "permanent-error": code}) + "\n"
    return files


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from datasets import write_mnist

    with tempfile.TemporaryDirectory() as tmp:
        mnist = write_mnist(Path(tmp) / "mnist")
        files = record(mnist, Path(tmp))
    RECORDED.mkdir(exist_ok=True)
    for name, text in files.items():
        (RECORDED / name).write_text(text)
        print(f"wrote {RECORDED / name}")


if __name__ == "__main__":
    main()
