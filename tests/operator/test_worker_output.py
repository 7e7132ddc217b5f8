"""What the real worker printed, recorded, fed to the operator's parsers.

`recorded/` holds a real worker's log and termination message (`record_worker.py` writes them):
a short training run and a run whose dataset is missing. The fast tests read them as the
operator reads a pod; the slow one runs the worker again and fails when what it prints no
longer has the recording's shape, so a renamed key fails here and not only in e2e.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubetrain.operator.reconcile import plan
from kubetrain.operator.status import epoch_records, progress_update, result_update
from kubetrain.trainer.api.records import (
    EXIT_PERMANENT,
    RECORD_TYPES,
    Error,
    Finished,
    parse_record,
    parse_result,
    read_records,
)
from kubetrain.trainer.api.status import TrainingJobStatus
from record_worker import RECORDED, record
from trainingjobs import body, job, pod

REGENERATE = "re-record with: .venv/bin/python tests/operator/record_worker.py"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def shape(value: object) -> object:
    """The keys of a JSON value, nested, without the values (which differ from run to run)."""
    if isinstance(value, dict):
        metrics = {"metrics", "validation", "test"}
        return {k: "…" if k in metrics else shape(v) for k, v in sorted(value.items())}
    return type(value).__name__


def record_shapes(text: str) -> dict[str, object]:
    return {line["type"]: shape(line) for line in json_lines(text)}


@pytest.mark.parametrize("log", ["chief.log", "permanent-error.log"])
def test_every_record_the_worker_printed_parses_without_losing_a_field(log: str):
    lines = json_lines(recorded(log))
    assert lines, f"{log} holds no records; {REGENERATE}"
    for line in lines:
        parsed = parse_record(json.dumps(line))
        assert parsed is not None, f"the contract cannot read {line}; {REGENERATE}"
        assert parsed.document() == line  # nothing ignored, nothing renamed


def test_the_chiefs_log_has_every_kind_of_record_a_successful_run_prints():
    kinds = [r.type for r in read_records(recorded("chief.log"))]
    assert kinds[0] == "start" and kinds[-1] == "result"
    assert {"start", "batch", "epoch", "result"} <= set(kinds) <= set(RECORD_TYPES)


def test_the_operator_turns_the_real_chiefs_log_and_message_into_status():
    epochs = epoch_records(recorded("chief.log"))
    assert [e.epoch for e in epochs] == [1, 2]
    progress = progress_update({}, epochs, "val_accuracy")
    assert progress["epochProgress"] == "2/2"
    assert set(progress["metrics"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    result = parse_result(recorded("chief.termination-log"))
    assert result is not None, f"the termination message is not a Result; {REGENERATE}"
    final = result_update(result)
    assert final["model"] == {
        "name": "mnist",
        "version": 1,
        "path": "/var/lib/kubetrain/models/mnist/1",
    }
    assert final["bestCheckpoint"]["epoch"] == result.best_epoch
    assert final["testMetrics"]["test_accuracy"] == round(result.test_accuracy, 4)
    TrainingJobStatus.model_validate({**progress, **final})


def test_the_result_record_and_the_termination_message_are_one_result():
    (last,) = [r for r in read_records(recorded("chief.log")) if isinstance(r, Finished)]
    message = parse_result(recorded("chief.termination-log"))
    assert message is not None
    assert last.model_dump(exclude={"type", "time"}) == message.model_dump()


def test_a_missing_dataset_is_a_permanent_error_the_job_fails_on_at_once():
    (error,) = read_records(recorded("permanent-error.log"))
    assert isinstance(error, Error) and error.permanent
    exit_code = json.loads(recorded("exit-codes.json"))["permanent-error"]
    assert exit_code == EXIT_PERMANENT
    message = recorded("permanent-error.termination-log")
    assert message == error.message
    chief = pod(0, phase="Failed", exit_code=exit_code, message=message)
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    step = plan(job(body()).spec, "mnist", {"phase": "Running", "restarts": 0}, [chief], now)
    assert step.status["phase"] == "Failed"
    assert step.status["lastFailure"].endswith(message)


@pytest.mark.slow
def test_the_recording_is_what_the_worker_prints_today(tiny_mnist: Path, tmp_path: Path):
    fresh = record(tiny_mnist, tmp_path)
    for log in ("chief.log", "permanent-error.log"):
        assert record_shapes(fresh[log]) == record_shapes(recorded(log)), REGENERATE
    message = "chief.termination-log"
    assert shape(json.loads(fresh[message])) == shape(json.loads(recorded(message))), REGENERATE
    assert fresh["exit-codes.json"] == recorded("exit-codes.json"), REGENERATE
