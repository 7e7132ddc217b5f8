"""Trials: the candidates of one TrainingJob, and the median rule that stops the weak ones.

Everything here is pure: `runner.run_trials` trains the candidates and feeds the rule the
metrics their chiefs report, so the sampling and the rule are tested without training. A
metric's direction is `api.metrics`' to say, never this module's.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from .api.metrics import better, lower_is_better
from .api.spec import (
    Algorithm,
    Distribution,
    MedianStop,
    SpecError,
    TrainingJob,
    parse_job,
    set_field,
)


class TrialState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    EARLY_STOPPED = "EarlyStopped"
    FAILED = "Failed"


@dataclass(frozen=True)
class Candidate:
    """One trial to train: its number, the parameters drawn for it and the job they make."""

    index: int
    parameters: dict[str, Any]
    job: TrainingJob


def _space(distribution: Distribution) -> Any:
    """A parameter's space as scikit-learn's samplers take it: a list or a scipy distribution."""
    from scipy.stats import loguniform, uniform  # loaded only when candidates are drawn

    if distribution.values is not None:
        return distribution.values
    if distribution.uniform is not None:
        low, high = distribution.uniform
        return uniform(loc=low, scale=high - low)
    assert distribution.log_uniform is not None  # the spec requires exactly one kind
    return loguniform(*distribution.log_uniform)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value a spec field (and JSON) takes."""
    return value.item() if hasattr(value, "item") else value


def sample(job: TrainingJob) -> list[dict[str, Any]]:
    """The parameters of each of the `count` trials, in the spec's order of parameters; the
    same for the same `seed`."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    trials = job.spec.trials
    if trials is None:
        return []
    space = {path: _space(d) for path, d in trials.parameters.items()}
    if trials.algorithm == Algorithm.GRID:
        drawn = itertools.islice(ParameterGrid(space), trials.count)
    else:
        drawn = ParameterSampler(space, n_iter=trials.count, random_state=trials.seed)
    return [{path: _plain(params[path]) for path in trials.parameters} for params in drawn]


def apply(job: TrainingJob, parameters: dict[str, Any]) -> TrainingJob:
    """The job one trial trains: `job` with `parameters` set and without `trials`, validated
    as any TrainingJob is (SpecError naming the field)."""
    document = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"].pop("trials", None)
    for path, value in parameters.items():
        set_field(document["spec"], path, value)
    return parse_job(document)


def refit(job: TrainingJob, parameters: dict[str, Any]) -> TrainingJob:
    """`spec.trials.refit`'s job: the winning parameters trained on the training and
    validation splits together, for all of the spec's epochs."""
    return apply(job, {**parameters, "dataset.trainOnValidation": True})


def candidates(job: TrainingJob) -> list[Candidate]:
    """Every trial of the job, each a valid TrainingJob, or SpecError before any trains."""
    found = []
    for index, parameters in enumerate(sample(job)):
        try:
            found.append(Candidate(index, parameters, apply(job, parameters)))
        except SpecError as err:
            raise SpecError(f"spec.trials: trial {index} ({describe(parameters)}): {err}") from None
    return found


def describe(parameters: dict[str, Any]) -> str:
    """`training.learningRate=0.00123 training.batchSize=64`, for a person."""
    return " ".join(
        f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={value}"
        for path, value in parameters.items()
    )


def best_so_far(metric: str, history: Sequence[float]) -> float:
    """The best value of `metric` in a trial's per-epoch history."""
    best = history[0]
    for value in history[1:]:
        if better(metric, value, best):
            best = value
    return best


@dataclass(frozen=True)
class MedianStopped:
    """Why the median rule stopped a trial: its best after `epoch`, and the others' median."""

    epoch: int
    best: float
    median: float
    others: int

    def message(self, metric: str) -> str:
        return (
            f"stopped after epoch {self.epoch}: best {metric} {self.best:.4f} is worse than "
            f"the median {self.median:.4f} of {self.others} other trial(s) at that epoch"
        )


def median_stop(
    metric: str, rule: MedianStop, history: Sequence[float], others: Sequence[Sequence[float]]
) -> MedianStopped | None:
    """Whether a trial stops after epoch `len(history)` (its `metric` per epoch so far):
    when its best so far is worse than the median of the other trials' best by that same
    epoch, counting only those that reached it, once `rule.min_trials` have.

    Other trials' histories count whatever became of them (stopped or failed), as far as
    they went.
    """
    epoch = len(history)
    if epoch < rule.start_epoch:  # at least 1: a history to judge
        return None
    peers = [best_so_far(metric, h[:epoch]) for h in others if len(h) >= epoch]
    if len(peers) < rule.min_trials:
        return None
    mine, median = best_so_far(metric, history), statistics.median(peers)
    if better(metric, median, mine):
        return MedianStopped(epoch=epoch, best=mine, median=median, others=len(peers))
    return None


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class TrialOutcome(_Wire):
    """What became of one trial: a row of the leaderboard and of `trials.json`."""

    index: int
    parameters: dict[str, Any]
    state: TrialState
    epochs: int
    """Epochs with a checkpoint."""
    best_epoch: int | None = None
    best_metric: float | None = None
    test_accuracy: float | None = None
    workdir: str
    """Its checkpoints, curves and (when it succeeded) exported model."""
    message: str | None = None
    """Why it stopped early or failed."""


class Refit(_Wire):
    """What became of `spec.trials.refit`: the best trial's parameters trained again."""

    trial: int
    """The trial whose parameters it trained."""
    state: TrialState
    test_accuracy: float | None = None
    workdir: str
    message: str | None = None
    """Why it failed (the best trial's own model was exported instead)."""


class Study(_Wire):
    """`trials.json`: every trial, the one that won, and its refit if the job asked for one."""

    metric: str
    best: int | None
    trials: list[TrialOutcome]
    refit: Refit | None = None


def best_trial(metric: str, outcomes: Sequence[TrialOutcome]) -> TrialOutcome | None:
    """The succeeded trial with the best metric (the first of equals); None if none
    succeeded. A trial stopped early cannot have beaten the trials it was stopped for."""
    best: TrialOutcome | None = None
    for outcome in outcomes:
        if outcome.state != TrialState.SUCCEEDED or outcome.best_metric is None:
            continue
        if best is None or better(metric, outcome.best_metric, best.best_metric):
            best = outcome
    return best


def rank(metric: str, value: float | None, index: int) -> tuple[int, float, int]:
    """A sort key for trial `index` whose best `metric` is `value`: best first, then by
    index; trials without a value (failed before an epoch) last."""
    if value is None or math.isnan(value):
        return 1, 0.0, index
    return 0, (value if lower_is_better(metric) else -value), index


def ranked(metric: str, outcomes: Sequence[TrialOutcome]) -> list[TrialOutcome]:
    """Best metric first; trials without one (failed before an epoch) last."""
    return sorted(outcomes, key=lambda o: rank(metric, o.best_metric, o.index))


def leaderboard(study: Study) -> str:
    """The trials as a table for a person, best first; `*` marks the winner."""
    header = f"  {'trial':>5}  {'state':<12}  {'epochs':>6}  {study.metric:>12}  parameters"
    lines = [header]
    for o in ranked(study.metric, study.trials):
        mark = "*" if o.index == study.best else " "
        value = "-" if o.best_metric is None else f"{o.best_metric:.4f}"
        lines.append(
            f"{mark} {o.index:>5}  {o.state:<12}  {o.epochs:>6}  {value:>12}  "
            f"{describe(o.parameters)}"
        )
    if study.refit is not None:
        lines.append(f"  refit of trial {study.refit.trial}: {study.refit.state}")
    return "\n".join(lines)
