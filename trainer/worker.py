"""The worker process: `kubetrain worker`, run once per worker by the runner or in a pod.

Its records, result and exit code are its contract with whoever restarts it
(`kubetrain.trainer.api.records`). The last words go to the termination log, which Kubernetes
shows in the pod's status: the result on success, the error otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

from .api.entrypoints import JOB_ENV, TERMINATION_LOG, TERMINATION_LOG_ENV
from .api.layout import MODELS_DIR, Layout
from .api.records import EXIT_PERMANENT, EXIT_RETRYABLE, EXIT_SUCCEEDED, Error, Finished, emit
from .api.spec import SpecError, TrainingJob, load_job, parse_job
from .data import DataError
from .fence import Superseded
from .storage import StorageError, join


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
    path = Path(os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG))
    if path.parent.is_dir() and (path.exists() or path != Path(TERMINATION_LOG)):
        with contextlib.suppress(OSError):
            path.write_text(message[-4000:])


def run_worker(job_file: str | None, workdir: str, model_root: str | None) -> int:
    """Train as one worker; `workdir` and `model_root` are local paths or object-store URIs."""
    try:
        job = read_job(job_file)
        from .train import train  # TensorFlow loads only once the job is known good

        layout = Layout(workdir=workdir, model_root=model_root or join(workdir, MODELS_DIR))
        result = train(job, layout)
    except (SpecError, DataError, StorageError, Superseded) as err:
        emit(Error(message=str(err), permanent=True))
        _write_termination_log(str(err))
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PERMANENT
    except Exception as err:  # retryable: the runner or operator restarts the job
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}"
        emit(Error(message=message, permanent=False))
        _write_termination_log(message)
        return EXIT_RETRYABLE
    if result is not None:
        emit(Finished.model_validate(result.model_dump()))
        _write_termination_log(json.dumps(result.document()))
    return EXIT_SUCCEEDED
