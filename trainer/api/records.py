"""What a worker tells whoever runs it: JSON records on stdout, its result, its exit code.

Each record is one JSON object on one line of stdout, so it survives interleaving with
TensorFlow's own output; the local runner draws its progress from them and the operator turns
the chief's into TrainingJob status. The chief's `Result` is also written to `result.json` and,
in a pod, to the termination message. Records are parsed here and nowhere else; a field a
newer worker adds is ignored by an older reader rather than refused.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from .status import ModelRef

EXIT_SUCCEEDED = 0
EXIT_RETRYABLE = 1
"""Anything but 0 and `EXIT_PERMANENT` is retryable; the worker uses 1."""
EXIT_PERMANENT = 3
"""A bad spec or bad data: restarting the job cannot help, so it fails at once."""


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def document(self) -> dict[str, Any]:
        """The JSON object as written: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Record(_Wire):
    time: float = Field(default_factory=lambda: round(time.time(), 3))

    def line(self) -> str:
        return json.dumps(self.document())


class Start(_Record):
    """A worker has its data and its shard and is about to train."""

    type: Literal["start"] = "start"
    worker: int
    pid: int
    workers: int
    total_epochs: int
    steps_per_epoch: int
    global_batch: int
    train_examples: int
    shard_examples: int
    validation_examples: int
    threads: int | None = None
    """TensorFlow's threads per pool, sized to the worker's cores; None: every core's."""


class Resumed(_Record):
    """A restarted worker continues from the last epoch its job finished."""

    type: Literal["resumed"] = "resumed"
    worker: int
    from_epoch: int


class Batch(_Record):
    """The chief's progress within an epoch, a few times a second."""

    type: Literal["batch"] = "batch"
    step: int
    steps_per_epoch: int
    metrics: dict[str, float] = Field(default_factory=dict)


class Epoch(_Record):
    """An epoch has ended; its checkpoint is published (by the chief) before this is printed."""

    type: Literal["epoch"] = "epoch"
    worker: int
    epoch: int
    total_epochs: int
    metrics: dict[str, float]
    seconds: float
    examples_per_second: float
    weights_digest: str | None = None


class Result(_Wire):
    """The chief's outcome: the best epoch, its metrics and the model version it exported."""

    status: Literal["Succeeded"] = "Succeeded"
    job_name: str
    best_epoch: int
    metric: str
    validation: dict[str, float]
    test: dict[str, float]
    test_accuracy: float
    checkpoint: str | None = None
    model: ModelRef
    wall_time_seconds: float
    examples_per_second: float
    test_examples: int


class Finished(Result, _Record):
    """The `result` record: the `Result`, printed as the chief's last record."""

    type: Literal["result"] = "result"


class Error(_Record):
    """Why a worker is about to exit non-zero."""

    type: Literal["error"] = "error"
    message: str
    permanent: bool


Record = Annotated[Start | Resumed | Batch | Epoch | Finished | Error, Field(discriminator="type")]
RECORD_TYPES = ("start", "resumed", "batch", "epoch", "result", "error")
_RECORD: TypeAdapter[Record] = TypeAdapter(Record)


def emit(record: _Record, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(record.line() + "\n")
    out.flush()


def parse_record(line: str) -> Record | None:
    """The record on a line, or None for anything else a worker may print."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        return _RECORD.validate_json(line)
    except ValidationError:
        return None


def read_records(text: str) -> list[Record]:
    """Every record in a log, in order; TensorFlow's lines and broken lines are skipped."""
    return [r for r in map(parse_record, text.splitlines()) if r is not None]


def parse_result(text: str | None) -> Result | None:
    """A `Result` from `result.json` or a termination message; None if the text is not one."""
    if not text:
        return None
    try:
        return Result.model_validate_json(text)
    except ValidationError:
        return None
