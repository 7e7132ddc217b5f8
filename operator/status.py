"""What status becomes: conditions set, and the chief's records and result turned into fields.

The operator keeps all job state in `status` (patched through the status subresource), so a
restarted operator resumes from what the API server holds. The schema, phases and reasons are
the contract's (`kubetrain.trainer.api.status`); everything here is a pure function of dicts and
records, and nothing talks to the API server.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from kubetrain.trainer.api.metrics import better
from kubetrain.trainer.api.records import Epoch, Result, read_records


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


def epoch_records(log_text: str) -> list[Epoch]:
    """The chief's per-epoch records in its log; its other records and lines are skipped."""
    return [r for r in read_records(log_text) if isinstance(r, Epoch)]


def metric_values(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The finite metrics of a record, to 4 decimals: what `kubectl get` shows, unpadded.

    NaN and infinity are left out: JSON has no such numbers, and one in a status patch would
    make the API server refuse every later update.
    """
    return {
        k: round(float(v), 4)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and math.isfinite(v)
    }


def progress_update(status: dict[str, Any], records: list[Epoch], metric: str) -> dict[str, Any]:
    """Status fields for the newest epoch records; keeps the best epoch seen so far."""
    if not records:
        return {}
    update: dict[str, Any] = {}
    best = dict(status.get("bestCheckpoint") or {})
    best_metrics = dict(status.get("bestMetrics") or {})
    history = list(status.get("metricHistory") or [])
    for record in records:
        values = metric_values(record.metrics)
        value = values.get(metric)
        if value is not None and record.epoch <= len(history) + 1:
            # An epoch trained again after a restart replaces what followed it.
            history = [*history[: record.epoch - 1], value]
        if value is not None and (
            not best
            or record.epoch == best.get("epoch")
            or better(metric, value, best.get("value"))
        ):
            best = {"epoch": record.epoch, "metric": metric, "value": value}
            best_metrics = values
    last = records[-1]
    update["epoch"] = last.epoch
    update["totalEpochs"] = last.total_epochs
    update["epochProgress"] = f"{last.epoch}/{last.total_epochs}"
    update["metrics"] = metric_values(last.metrics)
    update["examplesPerSecond"] = last.examples_per_second
    update["metricHistory"] = history
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


def result_update(result: Result) -> dict[str, Any]:
    """Status fields for the chief's final result: the best checkpoint, test metrics, model."""
    validation = metric_values(result.validation)
    update: dict[str, Any] = {
        "bestCheckpoint": {
            "epoch": result.best_epoch,
            "metric": result.metric,
            "value": validation.get(result.metric),
            "path": result.checkpoint,
        },
        "model": result.model.model_dump(by_alias=True),
    }
    if validation:
        update["bestMetrics"] = validation
    test = metric_values(result.test)
    if test:
        update["testMetrics"] = test
    return update
