"""Where things live on disk: a job's working directory and the shared model repository.

The model repository is TensorFlow Serving's: `<model root>/<model name>/<version>/`, each
version a SavedModel with `metadata.json`, appearing only once complete (hidden staging
directories beside it are never a version). The exporter writes it, the model server reads it,
and the operator points the serving Deployment at it. On the storage volume a job works in
`jobs/<job>/` and exports to `models/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULT_FILE = "result.json"
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


@dataclass(frozen=True)
class Layout:
    """Where a job keeps its state: the workdir is per job, the model root is shared."""

    workdir: Path
    model_root: Path

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"

    @property
    def backup(self) -> Path:
        return self.workdir / "backup"

    @property
    def result(self) -> Path:
        return self.workdir / RESULT_FILE


def versions(model_dir: Path) -> list[int]:
    """Complete versions under a model directory, ascending (staging dirs are hidden)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def missing_files(version_dir: Path) -> list[str]:
    """Which of `VERSION_FILES` a version directory lacks (all of them if it is not there)."""
    return [name for name in VERSION_FILES if not (version_dir / name).is_file()]


def job_workdir(mount_path: str, job: str) -> str:
    """A job's workdir on the storage volume mounted at `mount_path`."""
    return f"{mount_path.rstrip('/')}/{JOBS_DIR}/{job}"


def model_root(mount_path: str) -> str:
    """The model repository on the storage volume mounted at `mount_path`."""
    return f"{mount_path.rstrip('/')}/{MODELS_DIR}"


def model_dir(mount_path: str, model_name: str) -> str:
    """The directory whose version subdirectories a model server serves."""
    return f"{model_root(mount_path)}/{model_name}"
