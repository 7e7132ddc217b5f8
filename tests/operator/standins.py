"""Stand-in worker and model server programs for operator tests on a real cluster.

The operator's behaviour under test is what it does with pods, exit codes, termination
messages and Deployments, not TensorFlow training; these small programs (run with python3
from the trainer image) follow the trainer's and the model server's contracts exactly —
TF_CONFIG, KUBETRAIN_JOB, JSON epoch lines, exit codes, /dev/termination-log, the exported
model directory, /readyz — in seconds instead of minutes.
"""

from __future__ import annotations

import json
from typing import Any

WORKER = r"""
import argparse, json, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--workdir"); parser.add_argument("--model-root")
args = parser.parse_args()
plan = json.loads(PLAN)
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
attempt = int(os.environ["KUBETRAIN_ATTEMPT"])
job = json.loads(os.environ["KUBETRAIN_JOB"])
total = job["spec"]["training"]["epochs"]
name = job["spec"]["model"].get("name") or job["spec"]["dataset"]["name"]

def finish(code, message):
    try:
        with open("/dev/termination-log", "w") as f:
            f.write(message)
    except OSError:
        pass
    sys.exit(code)

os.makedirs(args.workdir, exist_ok=True)
state = os.path.join(args.workdir, "epoch")  # what BackupAndRestore would resume from
start = int(open(state).read()) + 1 if os.path.exists(state) else 1
print("stand-in worker", index, "attempt", attempt, "from epoch", start, flush=True)
val = plan["valAccuracy"]
for epoch in range(start, total + 1):
    time.sleep(plan["epochSeconds"])
    stop = plan.get("stop")
    if stop and stop["index"] == index and stop["epoch"] == epoch and (
            stop.get("attempts") is None or attempt in stop["attempts"]):
        print("exiting with", stop["code"], flush=True)
        finish(stop["code"], stop.get("message", "stand-in failure" if stop["code"] else ""))
    if index == 0:
        metrics = {"loss": 1.0 / epoch, "accuracy": val - 0.01, "val_loss": 1.0 / epoch,
                   "val_accuracy": val - (total - epoch) * 0.01}
        print(json.dumps({"type": "epoch", "epoch": epoch, "totalEpochs": total,
                          "metrics": metrics, "examplesPerSecond": 1000.0}), flush=True)
        with open(state, "w") as f:
            f.write(str(epoch))
if index != 0:
    finish(0, "")
version = plan["version"]
path = os.path.join(args.model_root, name, str(version))
if plan.get("export", True):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump({"job": job["metadata"]["name"], "val_accuracy": val}, f)
finish(0, json.dumps({"status": "Succeeded", "bestEpoch": total, "metric": "val_accuracy",
                      "validation": {"val_accuracy": val, "val_loss": 1.0 / total},
                      "test": {"test_accuracy": val - 0.005},
                      "model": {"name": name, "version": version, "path": path}}))
"""

SERVER = r"""
import argparse, http.server, os
parser = argparse.ArgumentParser()
parser.add_argument("--model-dir"); parser.add_argument("--port", type=int)
args = parser.parse_args()
version_dir = os.path.join(args.model_dir, os.environ["MODEL_VERSION"])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz" or (self.path == "/readyz" and os.path.isdir(version_dir))
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"model version not found")

http.server.ThreadingHTTPServer(("", args.port), Handler).serve_forever()
"""


def worker_command(
    epoch_seconds: float = 1.0,
    val_accuracy: float = 0.9,
    version: int = 1,
    stop: dict[str, Any] | None = None,
    export: bool = True,
) -> list[str]:
    """python3 running WORKER with its plan.

    `stop` = {index, epoch, code, attempts?, message?}: that worker exits with `code` at the
    end of `epoch` (in the listed attempts, or every attempt).
    """
    plan = {
        "epochSeconds": epoch_seconds,
        "valAccuracy": val_accuracy,
        "version": version,
        "stop": stop,
        "export": export,
    }
    return ["python3", "-c", f"PLAN = {json.dumps(json.dumps(plan))}\n{WORKER}"]


def server_command() -> list[str]:
    return ["python3", "-c", SERVER]
