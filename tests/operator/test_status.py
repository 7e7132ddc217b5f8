"""Progress and results: what the chief prints becomes TrainingJob status."""

from __future__ import annotations

import json

from kubetrain.operator.handlers import chief_log_query
from kubetrain.operator.status import epoch_records, progress_update, replace_maps, result_update
from kubetrain.trainer.api.records import Batch, Epoch, Result, parse_result
from kubetrain.trainer.api.status import ModelRef, TrainingJobStatus


def record(epoch: int, **metrics: float) -> str:
    """The chief's epoch line, as the worker prints it."""
    return Epoch(
        worker=0,
        epoch=epoch,
        total_epochs=5,
        metrics=metrics,
        seconds=4.2,
        examples_per_second=1200.5,
    ).line()


def result(**fields) -> Result:
    return Result.model_validate(
        {
            "jobName": "mnist",
            "bestEpoch": 2,
            "metric": "val_accuracy",
            "validation": {"val_accuracy": 0.95, "val_loss": 0.25},
            "test": {"test_accuracy": 0.948, "test_loss": 0.26},
            "testAccuracy": 0.948,
            "model": ModelRef(name="mnist", version=7, path="/var/lib/kubetrain/models/mnist/7"),
            "wallTimeSeconds": 30.5,
            "examplesPerSecond": 1100.0,
            "testExamples": 1000,
            **fields,
        }
    )


LOG = "\n".join(
    [
        "2025-01-01 12:00:00.000 I tensorflow/core/...: collective ops ready",
        record(1, loss=0.5, accuracy=0.85, val_loss=0.30, val_accuracy=0.91),
        "{not json",
        Batch(step=10, steps_per_epoch=20, metrics={"loss": 0.4}).line(),
        record(2, loss=0.3, accuracy=0.92, val_loss=0.25, val_accuracy=0.95),
        record(3, loss=0.2, accuracy=0.95, val_loss=0.27, val_accuracy=0.94),
    ]
)


def test_only_epoch_records_are_read_from_a_mixed_log():
    assert [r.epoch for r in epoch_records(LOG)] == [1, 2, 3]


def test_the_chief_log_is_read_as_a_bounded_tail():
    query = chief_log_query()
    assert query["tailLines"] == 200
    assert query["limitBytes"] <= 1024 * 1024


def test_a_log_cut_at_its_byte_limit_keeps_the_whole_records_before_the_cut():
    huge = "x" * 5_000_000  # a chief printing a giant line
    cut = (LOG + "\n" + huge + "\n" + record(4, val_accuracy=0.97)).encode()
    limit = chief_log_query()["limitBytes"]
    text = cut[: limit - 3].decode(errors="replace")
    assert [r.epoch for r in epoch_records(text)] == [1, 2, 3]
    # Cut inside a record: that line is skipped, not misread.
    assert [r.epoch for r in epoch_records(LOG[:-20])] == [1, 2]


def test_progress_reports_the_latest_epoch_and_the_best_one():
    update = progress_update({}, epoch_records(LOG), "val_accuracy")
    assert update["epoch"] == 3
    assert update["epochProgress"] == "3/5"
    assert update["metrics"]["val_accuracy"] == 0.94
    assert update["bestCheckpoint"] == {"epoch": 2, "metric": "val_accuracy", "value": 0.95}
    assert update["bestMetrics"]["val_loss"] == 0.25
    assert update["examplesPerSecond"] == 1200.5
    TrainingJobStatus.model_validate(update)  # fits the CRD's status schema


def test_for_a_loss_metric_lower_is_better():
    update = progress_update({}, epoch_records(LOG), "val_loss")
    assert update["bestCheckpoint"]["epoch"] == 2
    log = record(4, val_loss=0.1, val_accuracy=0.5)
    update = progress_update(update, epoch_records(log), "val_loss")
    assert update["bestCheckpoint"] == {"epoch": 4, "metric": "val_loss", "value": 0.1}


def test_the_best_epoch_survives_reading_only_later_log_lines():
    first = progress_update({}, epoch_records(LOG), "val_accuracy")
    later = progress_update(first, epoch_records(record(4, val_accuracy=0.93)), "val_accuracy")
    assert later["bestCheckpoint"]["epoch"] == 2
    assert later["epoch"] == 4


def test_the_chiefs_result_becomes_best_checkpoint_test_metrics_and_model():
    message = result().model_dump_json(by_alias=True, exclude_none=True)
    update = result_update(parse_result(message))
    assert update["bestCheckpoint"] == {
        "epoch": 2,
        "metric": "val_accuracy",
        "value": 0.95,
        "path": None,
    }
    assert update["testMetrics"] == {"test_accuracy": 0.948, "test_loss": 0.26}
    assert update["model"] == {
        "name": "mnist",
        "version": 7,
        "path": "/var/lib/kubetrain/models/mnist/7",
    }
    TrainingJobStatus.model_validate(update)


def test_a_message_that_is_not_a_result_is_none():
    assert parse_result("Traceback (most recent call last): ...") is None
    assert parse_result("") is None
    assert parse_result("[1, 2]") is None
    assert parse_result('{"status": "Succeeded"}') is None  # not the result the contract defines


def test_metrics_are_kept_to_four_decimals_so_kubectl_get_stays_readable():
    update = progress_update(
        {}, epoch_records(record(1, val_accuracy=0.96705162525177)), "val_accuracy"
    )
    assert update["bestMetrics"]["val_accuracy"] == 0.9671
    assert update["bestCheckpoint"]["value"] == 0.9671
    final = result_update(
        result(bestEpoch=1, validation={"val_accuracy": 0.96705162}, test={"accuracy": 0.97123})
    )
    assert final["bestCheckpoint"]["value"] == 0.9671
    assert final["testMetrics"] == {"accuracy": 0.9712}


def test_a_patch_replaces_metric_maps_so_stale_keys_go():
    old = {"metrics": {"loss": 0.3, "accuracy": 0.9}, "bestMetrics": {"loss": 0.2}}
    update = {"metrics": {"loss": 0.25}, "phase": "Running"}
    patch = replace_maps(old, update)
    assert patch == {"metrics": {"loss": 0.25, "accuracy": None}, "phase": "Running"}
    assert update == {"metrics": {"loss": 0.25}, "phase": "Running"}  # not modified


def test_a_metric_that_is_not_finite_stays_out_of_the_status_patch():
    diverged = "\n".join(
        [
            record(1, loss=0.5, val_accuracy=0.91),
            record(2, loss=float("nan"), val_accuracy=float("nan")),
            record(3, loss=float("inf"), val_accuracy=0.1),
        ]
    )
    update = progress_update({}, epoch_records(diverged), "val_accuracy")
    json.dumps(update, allow_nan=False)  # what the API server accepts
    assert update["metrics"] == {"val_accuracy": 0.1}
    assert update["bestCheckpoint"] == {"epoch": 1, "metric": "val_accuracy", "value": 0.91}
