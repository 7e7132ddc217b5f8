"""TrainingJob status: its schema, phases, conditions, and what the chief's output tells.

The operator keeps all job state in `status` (patched through the status subresource), so a
restarted operator resumes from what the API server holds. Everything here is a pure function
of dicts; nothing talks to the API server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    FAILED = "Failed"


class ConditionType(StrEnum):
    VALID = "Valid"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PROMOTED = "Promoted"


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(_Status):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str


class WorkerCounts(_Status):
    desired: int = 0
    active: int = Field(0, description="Pods pending or running.")
    ready: int = Field(0, description="Pods running.")
    succeeded: int = 0
    failed: int = 0
    completed_indexes: list[int] = Field(
        default_factory=list,
        description="Workers that exited 0 in the current attempt; never started again.",
    )


class BestCheckpoint(_Status):
    epoch: int
    metric: str
    value: float | None = None
    path: str | None = None


class ModelRef(_Status):
    name: str
    version: int
    path: str | None = None


class Serving(_Status):
    deployment: str
    version: int | None = None
    previous_version: int | None = None
    metric: str | None = None
    value: float | None = None
    promoted_at: str | None = None


class TrainingJobStatus(_Status):
    """What `status` may hold; the CRD's status schema is generated from it."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    workers: WorkerCounts | None = None
    workers_ready: str | None = Field(None, description="`ready/desired`, for kubectl get.")
    restarts: int = Field(0, description="Job-level restarts so far; also the attempt number.")
    launched_attempt: int | None = Field(
        None,
        description="Attempt whose worker pods have all been seen; a pod of it that "
        "disappears later has failed.",
    )
    epoch: int | None = None
    total_epochs: int | None = None
    epoch_progress: str | None = Field(None, description="`epoch/total`, for kubectl get.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest epoch's metrics.")
    best_metrics: dict[str, float] = Field(default_factory=dict)
    best_checkpoint: BestCheckpoint | None = None
    examples_per_second: float | None = None
    test_metrics: dict[str, float] = Field(default_factory=dict)
    model: ModelRef | None = None
    serving: Serving | None = None
    served: str | None = Field(None, description="`deployment:version`, for kubectl get.")
    last_failure: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    promotion_start_time: str | None = None


def now_iso(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes timestamps."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
) -> list[dict[str, Any]]:
    """Return `conditions` with one condition set; its transition time moves only on change."""
    value = "True" if status else "False"
    result = []
    found = False
    for cond in conditions:
        if cond.get("type") == type_:
            found = True
            moved = cond.get("status") != value
            cond = {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if moved else cond.get("lastTransitionTime", now),
            }
        result.append(cond)
    if not found:
        result.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }
        )
    return result


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


# --- what the chief prints -------------------------------------------------------------------


def epoch_records(log_text: str) -> list[dict[str, Any]]:
    """The chief's per-epoch JSON records in `log_text`; other lines (TF's logs) are skipped."""
    records = []
    for line in log_text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "epoch":
            records.append(record)
    return records


def better(metric: str, new: float, old: float | None, margin: float = 0.0) -> bool:
    """Whether `new` beats `old` by more than `margin`: loss metrics improve downwards."""
    if old is None:
        return True
    if metric.endswith("loss"):
        return new < old - margin
    return new > old + margin


def metric_values(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The numeric metrics of a record, to 4 decimals: what `kubectl get` shows, unpadded."""
    return {k: round(float(v), 4) for k, v in (metrics or {}).items() if isinstance(v, int | float)}


def progress_update(
    status: dict[str, Any], records: list[dict[str, Any]], metric: str
) -> dict[str, Any]:
    """Status fields for the newest epoch records; keeps the best epoch seen so far."""
    if not records:
        return {}
    update: dict[str, Any] = {}
    best = dict(status.get("bestCheckpoint") or {})
    best_metrics = dict(status.get("bestMetrics") or {})
    for record in records:
        values = metric_values(record.get("metrics"))
        value = values.get(metric)
        if value is not None and (
            not best
            or record.get("epoch") == best.get("epoch")
            or better(metric, value, best.get("value"))
        ):
            best = {"epoch": int(record["epoch"]), "metric": metric, "value": value}
            best_metrics = values
    last = records[-1]
    epoch, total = last.get("epoch"), last.get("totalEpochs")
    if isinstance(epoch, int):
        update["epoch"] = epoch
        if isinstance(total, int):
            update["totalEpochs"] = total
            update["epochProgress"] = f"{epoch}/{total}"
    update["metrics"] = metric_values(last.get("metrics"))
    if isinstance(last.get("examplesPerSecond"), int | float):
        update["examplesPerSecond"] = float(last["examplesPerSecond"])
    if best:
        update["bestCheckpoint"] = best
        update["bestMetrics"] = best_metrics
    return update


REPLACED_MAPS = ("metrics", "bestMetrics", "testMetrics")
"""Status maps whose keys depend on the run: a patch replaces them rather than merging."""


def replace_maps(old_status: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` as a JSON merge patch that replaces the maps it sets, not merges them.

    A merge patch keeps keys it does not name, so each key of the old map that the new one
    lacks is set to None (which deletes it).
    """
    out = dict(update)
    for key in REPLACED_MAPS:
        if isinstance(out.get(key), dict):
            stale = set(old_status.get(key) or {}) - set(out[key])
            out[key] = {**dict.fromkeys(stale), **out[key]}
    return out


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The chief's termination message on success: its JSON result, or None if it is not one."""
    if not message:
        return None
    try:
        result = json.loads(message)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def result_update(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """Status fields for the chief's final result: the best checkpoint, test metrics, model."""
    update: dict[str, Any] = {}
    validation = metric_values(result.get("validation"))
    metric = result.get("metric") or metric
    if isinstance(result.get("bestEpoch"), int):
        checkpoint = result.get("checkpoint")
        update["bestCheckpoint"] = {
            "epoch": result["bestEpoch"],
            "metric": metric,
            "value": validation.get(metric),
            "path": checkpoint if isinstance(checkpoint, str) else None,
        }
    if validation:
        update["bestMetrics"] = validation
    test = metric_values(result.get("test"))
    if test:
        update["testMetrics"] = test
    model = result.get("model") or {}
    if isinstance(model.get("name"), str) and isinstance(model.get("version"), int):
        update["model"] = {
            "name": model["name"],
            "version": model["version"],
            "path": model.get("path"),
        }
    return update
