"""Per-epoch checkpoints with their validation metrics, and choosing the best one.

`<checkpoints>/epoch-0003/` holds the weights and `metrics.json`, in a `Store` (a directory or
an object-store prefix). It is written locally, then published with `metrics.json` as its
marker: a rename on a local disk, the marker uploaded last in an object store. A checkpoint
without its metrics file is never listed, so a crash mid-write is never taken for a good one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api.metrics import lower_is_better
from .storage import Store

METRICS_FILE = "metrics.json"
WEIGHTS_PREFIX = "weights"


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    name: str
    """Its directory's name in the store."""
    uri: str
    metrics: dict[str, float]


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def publish(store: Store, staging: Path, epoch: int, metrics: dict[str, Any]) -> Checkpoint:
    """Add the metrics to a fully written staging dir (`store.scratch`) and publish it.

    An epoch trained again after a restart replaces its earlier copy.
    """
    clean = {k: float(v) for k, v in metrics.items()}
    (staging / METRICS_FILE).write_text(json.dumps({"epoch": epoch, "metrics": clean}) + "\n")
    name = checkpoint_name(epoch)
    store.publish(staging, name, marker=METRICS_FILE, replace=True)
    return Checkpoint(epoch=epoch, name=name, uri=store.path(name), metrics=clean)


def list_checkpoints(store: Store) -> list[Checkpoint]:
    """Complete checkpoints, by epoch; hidden or unmarked (unfinished) ones are skipped."""
    found = []
    for name in store.children():
        if not name.startswith("epoch-"):
            continue
        try:
            record = json.loads(store.read_text(f"{name}/{METRICS_FILE}") or "")
            found.append(
                Checkpoint(
                    epoch=int(record["epoch"]),
                    name=name,
                    uri=store.path(name),
                    metrics=record["metrics"],
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda c: c.epoch)


def weights(store: Store, checkpoint: Checkpoint, local: Path) -> Path:
    """A local path of the checkpoint's weights, for `model.load_weights` (fetched into
    `local` from an object store)."""
    return store.fetch(checkpoint.name, local) / WEIGHTS_PREFIX


def best_checkpoint(checkpoints: list[Checkpoint], metric: str) -> Checkpoint:
    """The first epoch with the best value of `metric` (NaN never wins)."""
    candidates = [c for c in checkpoints if not math.isnan(c.metrics.get(metric, math.nan))]
    if not candidates:
        raise ValueError(f"no checkpoint has a value for {metric}")
    sign = 1 if lower_is_better(metric) else -1
    return min(candidates, key=lambda c: (sign * c.metrics[metric], c.epoch))
