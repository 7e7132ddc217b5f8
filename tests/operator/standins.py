"""Stand-in worker and model server programs for operator tests on a real cluster.

The operator's behaviour under test is what it does with pods, exit codes, termination
messages and Deployments, not TensorFlow training; these small programs (run with the trainer
image's python3) speak the trainer's and the model server's contract by importing it
(`kubetrain.trainer.api`: TF_CONFIG, KUBETRAIN_JOB, the epoch and result records, exit codes,
the termination message, the model repository, MODEL_VERSION), so a change to the contract
reaches them too. They take seconds instead of minutes and need no TensorFlow.
"""

from __future__ import annotations

import json
from typing import Any

UNLOADABLE = 'UNLOADABLE = "a SavedModel no server can load"\n'
"""What a stand-in export writes as its SavedModel when told to be unloadable."""

WORKER = r"""
import argparse, json, os, sys, time
from kubetrain.trainer.api import entrypoints, layout, records, tfconfig
from kubetrain.trainer.api.spec import parse_job
from kubetrain.trainer.api.status import ModelRef
from kubetrain.trainer.fence import Fence, Superseded
from kubetrain.trainer.storage import Store, join

parser = argparse.ArgumentParser()
parser.add_argument("--workdir"); parser.add_argument("--model-root")
args = parser.parse_args()
plan = json.loads(PLAN)
cluster = tfconfig.Cluster.from_env()
attempt = int(os.environ[entrypoints.ATTEMPT_ENV])
job = parse_job(json.loads(os.environ[entrypoints.JOB_ENV]))
total = job.spec.training.epochs
plan.update((plan.get("byLearningRate") or {}).get(repr(job.spec.training.learning_rate), {}))
if job.spec.dataset.train_on_validation:
    plan.update(plan.get("refit") or {})

def finish(code, message):
    try:
        with open(entrypoints.TERMINATION_LOG, "w") as f:
            f.write(message)
    except OSError:
        pass
    sys.exit(code)

work = Store.open(args.workdir)  # a volume's directory or an object store, as the trainer's
saved = work.read_text("epoch")  # what BackupAndRestore would resume from
start = int(saved) + 1 if saved else 1
print("stand-in worker", cluster.index, "attempt", attempt, "from epoch", start, flush=True)
fence = Fence(work, attempt)  # the trainer's fencing, as its chief does it

def publish(write):
    try:
        fence.check()
    except Superseded as err:
        print("fenced:", err, flush=True)
        records.emit(records.Error(message=str(err), permanent=True))
        finish(records.EXIT_PERMANENT, str(err))
    write()

if cluster.is_chief:
    fence.claim(resuming=start > 1)
if start > 1:
    records.emit(records.Resumed(worker=cluster.index, from_epoch=start))
val = plan["valAccuracy"]
for epoch in range(start, total + 1):
    time.sleep(plan["epochSeconds"])
    stop = plan.get("stop")
    if stop and stop["index"] == cluster.index and stop["epoch"] == epoch and (
            stop.get("attempts") is None or attempt in stop["attempts"]):
        print("exiting with", stop["code"], flush=True)
        message = stop.get("message", "stand-in failure" if stop["code"] else "")
        if stop["code"]:
            permanent = stop["code"] == records.EXIT_PERMANENT
            records.emit(records.Error(message=message, permanent=permanent))
        finish(stop["code"], message)
    if cluster.is_chief:
        metrics = {"loss": 1.0 / epoch, "accuracy": val - 0.01, "val_loss": 1.0 / epoch,
                   "val_accuracy": val - (total - epoch) * 0.01}
        records.emit(records.Epoch(worker=cluster.index, epoch=epoch, total_epochs=total,
                                   metrics=metrics, seconds=plan["epochSeconds"],
                                   examples_per_second=1000.0))
        publish(lambda: work.write_text("epoch", str(epoch)))
if not cluster.is_chief:
    finish(records.EXIT_SUCCEEDED, "")
version = plan["version"]
models = Store.open(join(args.model_root, job.spec.model_name))
path = models.path(str(version))
if plan.get("export", True):  # published as the exporter does: complete, marker last
    with models.scratch(str(version)) as staging:
        (staging / layout.SAVED_MODEL_FILE).write_text(
            "stand-in" if plan["loadable"] else UNLOADABLE)
        (staging / layout.METADATA_FILE).write_text(json.dumps(
            {"jobName": job.metadata.name, "metric": "val_accuracy",
             "metrics": {"val_accuracy": val}}))
        publish(lambda: models.publish(staging, str(version), marker=layout.METADATA_FILE))
result = records.Result(
    job_name=job.metadata.name, best_epoch=total, metric="val_accuracy",
    validation={"val_accuracy": val, "val_loss": 1.0 / total},
    test={"test_accuracy": val - 0.005}, test_accuracy=val - 0.005,
    model=ModelRef(name=job.spec.model_name, version=version, path=path),
    wall_time_seconds=total * plan["epochSeconds"], examples_per_second=1000.0,
    test_examples=100)
records.emit(records.Finished.model_validate(result.model_dump()))
finish(records.EXIT_SUCCEEDED, json.dumps(result.document()))
"""

SERVER = r"""
import argparse, http.server, json, os, sys, time
PREDICT_CPU_SECONDS = 0.02
from kubetrain.trainer.api import entrypoints, layout
parser = argparse.ArgumentParser()
parser.add_argument("--model-dir"); parser.add_argument("--port", type=int)
parser.add_argument(entrypoints.CHECK_ONLY_FLAG, action="store_true")
args = parser.parse_args()
version = int(os.environ[entrypoints.MODEL_VERSION_ENV])
if args.check_only:  # the real check: it needs no TensorFlow
    from kubetrain.trainer.server.model import check
    sys.exit(check(args.model_dir, version))  # a directory or an object-store URI
saved_model = os.path.join(args.model_dir, str(version), layout.SAVED_MODEL_FILE)

def loadable():  # a real export's saved_model.pb is binary: compare bytes
    return os.path.isfile(saved_model) and open(saved_model, "rb").read() != UNLOADABLE.encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz" or (self.path == "/readyz" and loadable())
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"model version not found")

    def do_POST(self):  # a prediction: some CPU, as a model's (what autoscaling follows)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        busy_until = time.process_time() + PREDICT_CPU_SECONDS
        while time.process_time() < busy_until:
            pass
        body = json.dumps({"predictions": [[1.0]], "version": version}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # one line a request would drown the pod's log
        pass

http.server.ThreadingHTTPServer(("", args.port), Handler).serve_forever()
"""


def worker_command(
    epoch_seconds: float = 1.0,
    val_accuracy: float = 0.9,
    version: int = 1,
    stop: dict[str, Any] | None = None,
    export: bool = True,
    loadable: bool = True,
    by_learning_rate: dict[float, dict[str, Any]] | None = None,
    refit: dict[str, Any] | None = None,
) -> list[str]:
    """python3 running WORKER with its plan.

    `stop` = {index, epoch, code, attempts?, message?}: that worker exits with `code` at the
    end of `epoch` (in the listed attempts, or every attempt). `by_learning_rate`: plan
    entries (`valAccuracy`, `version`, `stop`, ...) for jobs with that learning rate, as the
    trials of one job have; `refit`: plan entries for a job trained on its validation split.
    """
    plan = {
        "epochSeconds": epoch_seconds,
        "valAccuracy": val_accuracy,
        "version": version,
        "stop": stop,
        "export": export,
        "loadable": loadable,
        "byLearningRate": {repr(k): v for k, v in (by_learning_rate or {}).items()},
        "refit": refit,
    }
    return ["python3", "-c", f"PLAN = {json.dumps(json.dumps(plan))}\n{UNLOADABLE}{WORKER}"]


def server_command() -> list[str]:
    return ["python3", "-c", UNLOADABLE + SERVER]
