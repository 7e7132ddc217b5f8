"""Per-epoch checkpoints with their validation metrics, and choosing the best one.

`<workdir>/checkpoints/epoch-0003/` holds the weights and `metrics.json`. It is written under
a hidden temporary name and renamed into place, so a directory with the final name is always
complete: a crash mid-write leaves only a hidden directory that is never taken for a good one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api.metrics import lower_is_better

METRICS_FILE = "metrics.json"
WEIGHTS_PREFIX = "weights"


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    path: Path
    metrics: dict[str, float]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_PREFIX


def checkpoint_dir(root: Path, epoch: int) -> Path:
    return root / f"epoch-{epoch:04d}"


def staging_dir(root: Path) -> Path:
    """A hidden directory to write a checkpoint into before it is published."""
    root.mkdir(parents=True, exist_ok=True)
    return root / f".staging-{uuid.uuid4().hex}"


def publish(staging: Path, root: Path, epoch: int, metrics: dict[str, Any]) -> Checkpoint:
    """Add the metrics to a fully written staging dir and rename it to its final name."""
    clean = {k: float(v) for k, v in metrics.items()}
    (staging / METRICS_FILE).write_text(json.dumps({"epoch": epoch, "metrics": clean}) + "\n")
    target = checkpoint_dir(root, epoch)
    if target.exists():
        # The epoch was trained again after a restart: swap the old copy out first.
        stale = root / f".stale-{uuid.uuid4().hex}"
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(staging, target)
    return Checkpoint(epoch=epoch, path=target, metrics=clean)


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints, by epoch; hidden (unfinished) directories are skipped."""
    found = []
    if not root.is_dir():
        return found
    for path in sorted(root.glob("epoch-*")):
        try:
            record = json.loads((path / METRICS_FILE).read_text())
            found.append(
                Checkpoint(epoch=int(record["epoch"]), path=path, metrics=record["metrics"])
            )
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda c: c.epoch)


def best_checkpoint(checkpoints: list[Checkpoint], metric: str) -> Checkpoint:
    """The first epoch with the best value of `metric` (NaN never wins)."""
    candidates = [c for c in checkpoints if not math.isnan(c.metrics.get(metric, math.nan))]
    if not candidates:
        raise ValueError(f"no checkpoint has a value for {metric}")
    sign = 1 if lower_is_better(metric) else -1
    return min(candidates, key=lambda c: (sign * c.metrics[metric], c.epoch))
