"""The worker process: `kubetrain worker`, run once per worker by the runner or in a pod.

Its exit code is its contract with whoever restarts it: 0 done, `EXIT_PERMANENT` when the
job itself is wrong (bad spec or data: restarting cannot help), anything else retryable.
The last words go to the termination log, which Kubernetes shows in the pod's status.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

from . import progress
from .data import DataError
from .spec import SpecError, TrainingJob, load_job, parse_job

EXIT_PERMANENT = 3
TERMINATION_LOG = Path("/dev/termination-log")
JOB_ENV = "KUBETRAIN_JOB"


def read_job(job_file: str | None) -> TrainingJob:
    if job_file:
        return load_job(job_file)
    raw = os.environ.get(JOB_ENV)
    if not raw:
        raise SpecError(f"no TrainingJob given: pass --job FILE or set {JOB_ENV}")
    try:
        return parse_job(json.loads(raw))
    except ValueError as err:
        raise SpecError(f"{JOB_ENV} is not a valid TrainingJob: {err}") from None


def _write_termination_log(message: str) -> None:
    path = Path(os.environ.get("KUBETRAIN_TERMINATION_LOG", TERMINATION_LOG))
    if path.parent.is_dir() and (path.exists() or path != TERMINATION_LOG):
        with contextlib.suppress(OSError):
            path.write_text(message[-4000:])


def run_worker(job_file: str | None, workdir: Path, model_root: Path | None) -> int:
    try:
        job = read_job(job_file)
        from .train import Layout, train  # TensorFlow loads only once the job is known good

        layout = Layout(workdir=workdir, model_root=model_root or workdir / "models")
        layout.workdir.mkdir(parents=True, exist_ok=True)
        result = train(job, layout)
    except (SpecError, DataError) as err:
        progress.emit("error", message=str(err), permanent=True)
        _write_termination_log(str(err))
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PERMANENT
    except Exception as err:  # retryable: the runner or operator restarts the job
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}"
        progress.emit("error", message=message, permanent=False)
        _write_termination_log(message)
        return 1
    if result is not None:
        progress.emit("result", **result)
        _write_termination_log(json.dumps(result))
    return 0
