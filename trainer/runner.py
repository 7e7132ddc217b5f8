"""`kubetrain run`: a TrainingJob's workers as processes on this machine.

It does what the operator does with pods: one process per worker, each with its TF_CONFIG
naming every worker, and a job-level restart of all workers when one fails (a worker whose peer
died either fails within seconds or waits forever, so survivors are killed, not trusted).
Workers catch SIGTERM and train on, so stopping them means SIGKILL.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .api.entrypoints import (
    ATTEMPT_ENV,
    TERMINATION_LOG_ENV,
    WORKER,
    s3_environment,
    worker_arguments,
)
from .api.layout import MODELS_DIR, RESULT_FILE, job_workdir, model_root
from .api.records import (
    EXIT_PERMANENT,
    Batch,
    Epoch,
    Error,
    Record,
    Result,
    Resumed,
    Start,
    parse_record,
)
from .api.spec import TrainingJob
from .api.tfconfig import ENV as TF_CONFIG
from .api.tfconfig import tf_config
from .storage import Store


class JobFailed(RuntimeError):
    """The job did not succeed; the message says why and where the logs are."""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Display:
    """Progress for a person: a redrawn bar on a terminal, one line per epoch otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    total_epochs: int = 0
    epoch: int = 0

    @property
    def live(self) -> bool:
        return self.stream.isatty()

    def show(self, worker: int, record: Record) -> None:
        """Draw the chief's progress, and any worker's errors."""
        if isinstance(record, Error):
            self.note(f"worker {worker} error: {record.message}")
        elif worker != 0:
            return
        elif isinstance(record, Start):
            self.total_epochs = record.total_epochs
            self.note(
                f"training on {record.workers} worker(s): {record.train_examples} examples, "
                f"{record.steps_per_epoch} steps of {record.global_batch} per epoch"
            )
        elif isinstance(record, Resumed):
            self.note(f"resumed from the last checkpoint at epoch {record.from_epoch}")
        elif isinstance(record, Batch) and self.live:
            bar = "#" * int(record.step / record.steps_per_epoch * 30)
            m = record.metrics
            self.stream.write(
                f"\repoch {self.epoch + 1}/{self.total_epochs} [{bar:<30}] "
                f"{record.step}/{record.steps_per_epoch} loss {m.get('loss', 0):.4f} "
                f"acc {m.get('accuracy', 0):.4f}"
            )
            self.stream.flush()
        elif isinstance(record, Epoch):
            self.epoch = record.epoch
            m = record.metrics
            self.note(
                f"epoch {record.epoch}/{record.total_epochs}: loss {m.get('loss', 0):.4f} "
                f"acc {m.get('accuracy', 0):.4f} val_loss {m.get('val_loss', 0):.4f} "
                f"val_acc {m.get('val_accuracy', 0):.4f} ({record.examples_per_second:.0f} ex/s)"
            )

    def note(self, text: str) -> None:
        prefix = "\r\033[K" if self.live else ""
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()


class LocalJob:
    """One attempt's worker processes and the records they print."""

    def __init__(
        self,
        job_file: Path,
        workdir: Path,
        state: str,
        model_root: str,
        replicas: int,
        storage_env: dict[str, str],
        attempt: int = 0,
    ) -> None:
        self.records: queue.Queue[tuple[int, Record]] = queue.Queue()
        self.processes: list[subprocess.Popen[str]] = []
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        addresses = [f"localhost:{port}" for port in free_ports(replicas)]
        for index in range(replicas):
            env = {**os.environ, **storage_env, TF_CONFIG: tf_config(addresses, index)}
            env[ATTEMPT_ENV] = str(attempt)  # as the operator numbers them (fencing)
            env[TERMINATION_LOG_ENV] = str(logs / f"worker-{index}.termination")
            with open(logs / f"worker-{index}.log", "a") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        # Nothing imported from cwd, where a folder may shadow a stdlib module.
                        "-P",
                        "-m",
                        "kubetrain.trainer",
                        WORKER,
                        "--job",
                        str(job_file),
                        *worker_arguments(state, model_root),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches only the runner
                )
            self.processes.append(process)
            threading.Thread(target=self._read, args=(index, process), daemon=True).start()

    def _read(self, index: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            record = parse_record(line)
            if record is not None:
                self.records.put((index, record))

    def failed(self) -> tuple[int, int] | None:
        """(worker, exit code) of the first worker that exited non-zero, if any."""
        for index, process in enumerate(self.processes):
            code = process.poll()
            if code not in (None, 0):
                return index, code
        return None

    @property
    def done(self) -> bool:
        return all(p.poll() == 0 for p in self.processes)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()


def local_workdir(job: TrainingJob, given: str | None = None) -> Path:
    """Where `kubetrain run` works on `job`: `given` (its --workdir), else runs/<job name>."""
    return Path(given or Path("runs") / job.metadata.name)


def storage_locations(job: TrainingJob, workdir: Path) -> tuple[str, str]:
    """(the job's state, the model root): under `spec.storage.uri` when the job names one,
    as in a cluster, else in the local run directory."""
    if uri := job.spec.storage.uri:  # the pods' layout (`operator.manifests.storage_paths`)
        return job_workdir(uri, job.metadata.name), model_root(uri)
    return str(workdir), str(workdir / MODELS_DIR)


def run_local(job: TrainingJob, workdir: Path, display: Display | None = None) -> Result:
    """Run the job to the end, restarting all workers on failure; return its result.json.

    `workdir` holds the job file and the workers' logs, and the checkpoints and models too
    unless the job names a `spec.storage.uri`.
    """
    display = display or Display()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state, model_root = storage_locations(job, workdir)
    # Set in the spec, the store's endpoint and region win over this shell's variables.
    storage_env = s3_environment(job.spec.storage.s3) if job.spec.storage.uri else {}
    job_file = workdir / "job.json"
    job_file.write_text(job.model_dump_json(by_alias=True, indent=2))
    policy = job.spec.run_policy
    deadline = time.monotonic() + (policy.active_deadline_seconds or float("inf"))
    restarts = 0
    while True:
        attempt = LocalJob(
            job_file, workdir, state, model_root, job.spec.workers.replicas, storage_env, restarts
        )
        try:
            outcome = _supervise(attempt, display, deadline)
        finally:
            attempt.kill()
        if outcome is None:
            return Result.model_validate_json(Store.open(state).read_text(RESULT_FILE) or "")
        index, code, message = outcome
        log = workdir / "logs" / f"worker-{index}.log"
        message = message or _last_line(log)
        if code == EXIT_PERMANENT:
            raise JobFailed(f"worker {index} failed: {message or 'invalid job'} (see {log})")
        if code == -1:
            raise JobFailed(
                f"DeadlineExceeded: the job ran longer than "
                f"spec.runPolicy.activeDeadlineSeconds={policy.active_deadline_seconds}"
            )
        if restarts >= policy.backoff_limit:
            raise JobFailed(
                f"BackoffLimitExceeded: worker {index} exited with code {code} after "
                f"{restarts} restart(s) (spec.runPolicy.backoffLimit={policy.backoff_limit}); "
                f"last error: {message}; see {log}"
            )
        restarts += 1
        display.note(
            f"worker {index} exited with code {code}; restarting all workers "
            f"({restarts}/{policy.backoff_limit})"
        )


def _last_line(log: Path) -> str | None:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _supervise(
    attempt: LocalJob, display: Display, deadline: float
) -> tuple[int, int, str | None] | None:
    """Wait for the attempt: None when all workers succeeded, else (worker, code, message)."""
    last_error: dict[int, str] = {}
    while True:
        try:
            index, record = attempt.records.get(timeout=0.2)
            if isinstance(record, Error):
                last_error[index] = record.message
            display.show(index, record)
        except queue.Empty:
            pass
        failure = attempt.failed()
        if failure is not None:
            time.sleep(0.2)  # let the reader threads deliver the worker's last words
            while not attempt.records.empty():
                index, record = attempt.records.get()
                if isinstance(record, Error):
                    last_error[index] = record.message
            index, code = failure
            return index, code, last_error.get(index)
        if attempt.done and attempt.records.empty():
            return None
        if time.monotonic() > deadline:
            return 0, -1, None
