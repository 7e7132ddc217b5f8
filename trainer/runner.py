"""`kubetrain run`: a TrainingJob's workers as processes on this machine.

It does what the operator does with pods: one process per worker, each with its TF_CONFIG
naming every worker, and a job-level restart of all workers when one fails (a worker whose peer
died either fails within seconds or waits forever, so survivors are killed, not trusted).
Workers catch SIGTERM and train on, so stopping them means SIGKILL.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .api.entrypoints import (
    ATTEMPT_ENV,
    CPUS_ENV,
    TERMINATION_LOG_ENV,
    WORKER,
    s3_environment,
    worker_arguments,
)
from .api.layout import (
    MODELS_DIR,
    REFIT_DIR,
    RESULT_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    Layout,
    job_workdir,
    model_root,
)
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
from .api.status import ModelRef
from .api.tfconfig import ENV as TF_CONFIG
from .api.tfconfig import tf_config
from .checkpoints import best_checkpoint, list_checkpoints
from .storage import Store, join

if TYPE_CHECKING:
    from .trials import Refit, Study, TrialOutcome


class JobFailed(RuntimeError):
    """The job did not succeed; the message says why and where the logs are."""


class Stopped(Exception):
    """The workers were stopped because the caller asked (`run_job`'s `stop`)."""


Watch = Callable[[int, Record], None]
"""Sees every record a worker prints, with the worker's index (early stopping reads them)."""


_PORTS_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()
"""Ports this process gave to workers: trials started side by side never share one, though
the first trial's workers may not have bound theirs yet when the next asks."""


def cores_per_worker(processes: int) -> int:
    """This machine's cores (those this process may run on) shared among `processes`."""
    return max(len(os.sched_getaffinity(0)) // processes, 1)


def free_ports(count: int) -> list[int]:
    with _PORTS_LOCK:
        sockets: list[socket.socket] = []
        try:
            while len(sockets) < count:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", 0))
                if s.getsockname()[1] in _HANDED_OUT:
                    sockets.pop().close()
            ports = [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()
        _HANDED_OUT.update(ports)
        return ports


@dataclass
class Display:
    """Progress for a person: a redrawn bar on a terminal, one line per epoch otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    label: str = ""
    """Put before every line (`trial 3`): trials side by side share the stream, not a bar."""
    total_epochs: int = 0
    epoch: int = 0

    @property
    def live(self) -> bool:
        return self.stream.isatty() and not self.label

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
        label = f"{self.label}: " if self.label else ""
        self.stream.write(f"{prefix}{label}{text}\n")
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
        cores: int = 1,
    ) -> None:
        self.records: queue.Queue[tuple[int, Record]] = queue.Queue()
        self.processes: list[subprocess.Popen[str]] = []
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        addresses = [f"localhost:{port}" for port in free_ports(replicas)]
        for index in range(replicas):
            env = {**os.environ, **storage_env, TF_CONFIG: tf_config(addresses, index)}
            env[ATTEMPT_ENV] = str(attempt)  # as the operator numbers them (fencing)
            env[CPUS_ENV] = os.environ.get(CPUS_ENV) or str(cores)  # "0": TensorFlow's own
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
    workdir = workdir.resolve()
    state, model_root = storage_locations(job, workdir)
    return run_job(job, workdir, state, model_root, display)


def run_job(
    job: TrainingJob,
    workdir: Path,
    state: str,
    model_root: str,
    display: Display | None = None,
    watch: Watch | None = None,
    stop: threading.Event | None = None,
    side_by_side: int = 1,
) -> Result:
    """Run one spec's workers to the end, restarting them all on failure; return the chief's
    result. `workdir` (local) takes the job file and logs, `state` (local or a store) the
    checkpoints and result.json, `model_root` the exported model. Setting `stop` kills the
    workers and raises Stopped. `side_by_side` jobs of this size share the machine's cores.
    """
    display = display or Display()
    workdir.mkdir(parents=True, exist_ok=True)
    # Set in the spec, the store's endpoint and region win over this shell's variables.
    storage_env = s3_environment(job.spec.storage.s3) if job.spec.storage.uri else {}
    job_file = workdir / "job.json"
    job_file.write_text(job.model_dump_json(by_alias=True, indent=2))
    policy = job.spec.run_policy
    deadline = time.monotonic() + (policy.active_deadline_seconds or float("inf"))
    replicas = job.spec.workers.replicas
    cores = cores_per_worker(replicas * side_by_side)
    restarts = 0
    while True:
        attempt = LocalJob(
            job_file, workdir, state, model_root, replicas, storage_env, restarts, cores
        )
        try:
            outcome = _supervise(attempt, display, deadline, watch, stop)
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
    attempt: LocalJob,
    display: Display,
    deadline: float,
    watch: Watch | None = None,
    stop: threading.Event | None = None,
) -> tuple[int, int, str | None] | None:
    """Wait for the attempt: None when all workers succeeded, else (worker, code, message)."""
    last_error: dict[int, str] = {}
    while True:
        try:
            index, record = attempt.records.get(timeout=0.2)
            if isinstance(record, Error):
                last_error[index] = record.message
            display.show(index, record)
            if watch is not None:
                watch(index, record)
        except queue.Empty:
            pass
        if stop is not None and stop.is_set():
            raise Stopped()  # the caller (run_job) kills the workers
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


def run_trials(job: TrainingJob, workdir: Path) -> tuple[Result, Study]:
    """Train every trial of `spec.trials` (`parallelism` at a time, each a full run of its
    candidate in `<workdir>/trials/<index>`), stop those the median rule gives up on, and
    export the best one's model as the job's; write result.json and trials.json.

    A trial that fails does not fail the job unless every trial does.
    """
    from . import trials  # scikit-learn loads only for a job with trials
    from .export import republish

    assert job.spec.trials is not None
    candidates = trials.candidates(job)  # SpecError here, before anything trains
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state, model_root = storage_locations(job, workdir)
    metric = job.spec.training.metric
    rule = job.spec.trials.early_stopping.median_stop
    lock = threading.Lock()
    histories: dict[int, dict[int, float]] = {c.index: {} for c in candidates}
    stops = {c.index: threading.Event() for c in candidates}
    stopped: dict[int, trials.MedianStopped] = {}

    def watch(index: int) -> Watch:
        def chief_epoch(worker: int, record: Record) -> None:
            if worker != 0 or not isinstance(record, Epoch) or metric not in record.metrics:
                return
            with lock:
                histories[index][record.epoch] = record.metrics[metric]
                if rule is None or record.epoch >= record.total_epochs:
                    return  # a trial that trained its last epoch has nothing left to save
                others = [_history(h) for i, h in histories.items() if i != index]
                mine = _history(histories[index])[: record.epoch]
                decision = trials.median_stop(metric, rule, mine, others)
            if decision is not None:
                stopped[index] = decision
                stops[index].set()

        return chief_epoch

    def run(candidate: trials.Candidate) -> tuple[trials.TrialOutcome, Result | None]:
        index = candidate.index
        display = Display(label=f"trial {index}")
        display.note(trials.describe(candidate.parameters))
        trial_state = join(state, TRIALS_DIR, str(index))
        layout = Layout(workdir=trial_state, model_root=join(trial_state, MODELS_DIR))
        result, message = None, None
        try:
            result = run_job(
                candidate.job,
                workdir / TRIALS_DIR / str(index),
                layout.workdir,
                layout.model_root,
                display,
                watch(index),
                stops[index],
                side_by_side=job.spec.trials.parallelism,
            )
            outcome = trials.TrialState.SUCCEEDED
        except Stopped:
            if index not in stopped:
                raise  # the whole run was interrupted
            outcome, message = trials.TrialState.EARLY_STOPPED, stopped[index].message(metric)
        except JobFailed as err:
            outcome, message = trials.TrialState.FAILED, str(err)
        display.note(message or outcome)
        kept = list_checkpoints(Store.open(layout.checkpoints))
        best = best_checkpoint(kept, metric) if kept else None
        return trials.TrialOutcome(
            index=index,
            parameters=candidate.parameters,
            state=outcome,
            epochs=max((c.epoch for c in kept), default=0),
            best_epoch=best.epoch if best else None,
            best_metric=best.metrics[metric] if best else None,
            test_accuracy=result.test_accuracy if result else None,
            workdir=trial_state,
            message=message,
        ), result

    parallelism = job.spec.trials.parallelism
    with ThreadPoolExecutor(parallelism, thread_name_prefix="kubetrain-trial") as pool:
        futures = [pool.submit(run, c) for c in candidates]
        try:
            done = [future.result() for future in futures]
        except BaseException:  # Ctrl-C, or a fault: stop every trial's workers before leaving
            for future in futures:
                future.cancel()
            for event in stops.values():
                event.set()
            raise
    outcomes = [outcome for outcome, _ in done]
    results = {outcome.index: result for outcome, result in done if result is not None}
    best = trials.best_trial(metric, outcomes)
    if best is None:
        raise JobFailed(
            f"no trial succeeded (see each trial's logs in {workdir / TRIALS_DIR}/<index>/logs)"
        )
    winner = results[best.index]
    metadata: dict[str, Any] = {"trial": best.index, "parameters": best.parameters}
    refit = None
    if job.spec.trials.refit:
        refit, refitted = _refit(job, best, workdir, state)
        if refitted is not None:
            # Its validation metrics measure examples it learned: the search's estimate stands.
            winner = refitted.model_copy(update={"validation": winner.validation})
            metadata |= {"refit": True, "metrics": {**winner.validation, **winner.test}}
    exported = republish(winner.model.path or "", model_root, job.spec.model_name, metadata)
    model = ModelRef(name=exported.name, version=exported.version, path=exported.path)
    result = winner.model_copy(update={"model": model})
    report = trials.Study(metric=metric, best=best.index, trials=outcomes, refit=refit)
    store = Store.open(state)
    store.write_text(TRIALS_FILE, report.model_dump_json(by_alias=True, indent=2) + "\n")
    store.write_text(RESULT_FILE, json.dumps(result.document(), indent=2))
    return result, report


def _refit(
    job: TrainingJob, best: TrialOutcome, workdir: Path, state: str
) -> tuple[Refit, Result | None]:
    """Train the best trial's parameters on the training and validation splits together
    (`spec.trials.refit`); a refit that fails leaves the best trial's model to export."""
    from .trials import Refit, TrialState, refit

    display = Display(label="refit")
    display.note(f"trial {best.index}'s parameters, on the training and validation splits")
    refit_state = join(state, TRIALS_DIR, REFIT_DIR)
    layout = Layout(workdir=refit_state, model_root=join(refit_state, MODELS_DIR))
    try:
        result = run_job(
            refit(job, best.parameters),
            workdir / TRIALS_DIR / REFIT_DIR,
            layout.workdir,
            layout.model_root,
            display,
        )
    except JobFailed as err:
        message = f"{err}; exporting trial {best.index}'s own model"
        display.note(message)
        return Refit(
            trial=best.index, state=TrialState.FAILED, workdir=refit_state, message=message
        ), None
    return Refit(
        trial=best.index,
        state=TrialState.SUCCEEDED,
        test_accuracy=result.test_accuracy,
        workdir=refit_state,
    ), result


def _history(values: dict[int, float]) -> list[float]:
    """A trial's metric per epoch from epoch 1, as far as it is known without a gap."""
    history: list[float] = []
    while len(history) + 1 in values:
        history.append(values[len(history) + 1])
    return history
