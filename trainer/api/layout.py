"""Where things live on disk: a job's working directory and the shared model repository.

The model repository is TensorFlow Serving's: `<model root>/<model name>/<version>/`, each
version a SavedModel with `metadata.json`, appearing only once complete (hidden staging
directories beside it are never a version). The exporter writes it, the model server reads it,
and the operator points the serving Deployment at it. On the storage volume a job works in
`jobs/<job>/` and exports to `models/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

RESULT_FILE = "result.json"
FENCE_FILE = "attempt"
"""In a job's workdir: the latest attempt whose chief started (`kubetrain.trainer.fence`)."""
METADATA_FILE = "metadata.json"
"""What the trainer records beside each exported SavedModel (class names, metrics, ...)."""
SAVED_MODEL_FILE = "saved_model.pb"
VERSION_FILES = (SAVED_MODEL_FILE, METADATA_FILE)
"""The files every complete version directory holds."""
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
JOBS_DIR = "jobs"
MODELS_DIR = "models"
TRIALS_DIR = "trials"
"""In a job's workdir: one workdir per trial, `trials/<index>/` (`spec.trials`)."""
REFIT_DIR = "refit"
"""Under `trials/`: the workdir of `spec.trials.refit`'s run (no trial index is a word)."""
TRIALS_FILE = "trials.json"
"""In a job's workdir beside `result.json`: every trial's parameters, state and best metric."""
TENSORBOARD_DIR = "tensorboard"
"""In a job's workdir: the chief's TensorBoard event files, one run per directory below it
(`train/`, `validation/`)."""


@dataclass(frozen=True)
class Layout:
    """Where a job keeps its state: the workdir is per job, the model root is shared.

    Both are local paths or object-store URIs (`s3://bucket/prefix/...`).
    """

    workdir: str
    model_root: str

    @property
    def checkpoints(self) -> str:
        return f"{self.workdir.rstrip('/')}/checkpoints"

    @property
    def backup(self) -> str:
        return f"{self.workdir.rstrip('/')}/backup"

    @property
    def tensorboard(self) -> str:
        return f"{self.workdir.rstrip('/')}/{TENSORBOARD_DIR}"


class Listing(Protocol):
    """What reading a model directory needs: a local one or an object store (`Store`)."""

    def children(self, rel: str = "") -> list[str]: ...

    def exists(self, rel: str) -> bool: ...


def versions(models: Listing) -> list[int]:
    """Version numbers in a model directory, ascending; hidden staging dirs are never one.

    A number may still be being written to an object store: `missing_files` says whether a
    version is complete.
    """
    return sorted(int(name) for name in models.children() if name.isdigit())


def missing_files(models: Listing, version: int) -> list[str]:
    """Which of `VERSION_FILES` the version lacks (all of them if it is not there)."""
    return [name for name in VERSION_FILES if not models.exists(f"{version}/{name}")]


def job_workdir(mount_path: str, job: str) -> str:
    """A job's workdir on the storage volume mounted at `mount_path`."""
    return f"{mount_path.rstrip('/')}/{JOBS_DIR}/{job}"


def model_root(mount_path: str) -> str:
    """The model repository on the storage volume mounted at `mount_path`."""
    return f"{mount_path.rstrip('/')}/{MODELS_DIR}"


def model_dir(mount_path: str, model_name: str) -> str:
    """The directory whose version subdirectories a model server serves."""
    return f"{model_root(mount_path)}/{model_name}"
