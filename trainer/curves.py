"""`kubetrain tensorboard`: a job's curves in TensorBoard, on this machine.

The chief writes TensorBoard event files under `<workdir>/tensorboard/` (`Layout.tensorboard`),
and TensorBoard itself draws them. It reads local directories only here (TensorFlow 2.21 has
no s3:// filesystem), so for a job in an object store the event files are copied into a
temporary directory first, and the copy is kept up to date while TensorBoard runs: event files
only grow, so each refresh fetches just their new bytes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .api.entrypoints import TENSORBOARD_PORT
from .api.layout import Layout
from .api.spec import load_job
from .runner import local_workdir, storage_locations
from .storage import StorageError, Store, StoreUnreachable, is_object_store

JOB_FILE_SUFFIXES = (".yaml", ".yml", ".json")
"""A target with one of these names a TrainingJob file; anything else is a directory of
curves, which may not exist yet (a pod's TensorBoard starts before the chief writes)."""
REFRESH_SECONDS = 10.0
"""How often a copy of an object store's event files is brought up to date."""


def log_dir(target: str, workdir: str | None = None) -> str:
    """What TensorBoard reads for `target`: a directory or object-store URI as it is (a job's
    workdir, its `tensorboard/`, or a folder of jobs, each shown as runs), or the curves of the
    TrainingJob file `target`, where `kubetrain run` keeps them (`workdir` is its --workdir)."""
    if is_object_store(target) or Path(target).is_dir():
        return target
    if not target.endswith(JOB_FILE_SUFFIXES):
        return target  # a directory still to come: TensorBoard shows it once it is there
    job = load_job(target)
    state, models = storage_locations(job, local_workdir(job, workdir))
    return Layout(workdir=state, model_root=models).tensorboard


def tensorboard(logdir: str, port: int = TENSORBOARD_PORT, bind_all: bool = False) -> int:
    """Run TensorBoard on `logdir` on 127.0.0.1 (every address with `bind_all`, as in a pod
    behind a Service) until it exits or this is interrupted."""
    store = Store.open(logdir)
    with tempfile.TemporaryDirectory(prefix="kubetrain-tensorboard-") as scratch:
        local = Path(logdir) if store.local else Path(scratch)
        if not store.local:
            fetched = store.follow("", local)
            print(f"copied {fetched} bytes of event files from {logdir}", file=sys.stderr)
        if not any(local.rglob("*tfevents*")):
            print(f"no curves in {logdir} yet: they appear as epochs end", file=sys.stderr)
        board = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                f"--logdir={local}",
                "--bind_all" if bind_all else "--host=127.0.0.1",
                f"--port={port}",
            ]
        )
        try:
            while True:
                try:
                    return board.wait(timeout=REFRESH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                if not store.local:
                    try:
                        store.follow("", local)
                    except (StorageError, StoreUnreachable) as err:
                        print(f"warning: {err}; showing the curves copied so far", file=sys.stderr)
        except KeyboardInterrupt:
            return 0
        finally:
            if board.poll() is None:
                board.terminate()
                try:
                    board.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    board.kill()
                    board.wait()
