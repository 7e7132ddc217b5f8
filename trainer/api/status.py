"""TrainingJob status: its schema, phases, condition types and the reasons they give.

The CRD's status schema is generated from `TrainingJobStatus`; conditions follow the Kubernetes
API conventions (type, status, reason, message, lastTransitionTime) and every reason the
operator gives, on a condition or an Event, is a `Reason`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

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


class Reason(StrEnum):
    """Why a condition has its status, or why an Event was posted (CamelCase, as Kubernetes)."""

    # Valid
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    POD_REJECTED = "PodRejected"
    POD_FORBIDDEN = "PodForbidden"
    # Running and Failed
    STARTED = "Started"
    WORKERS_PENDING = "WorkersPending"
    WORKERS_RUNNING = "WorkersRunning"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    COMPLETED = "Completed"
    PERMANENT_ERROR = "PermanentError"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    NODE_LOST = "NodeLost"
    LOST_NODES_SCHEDULABLE = "LostNodesSchedulable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    # Succeeded
    CHIEF_SUCCEEDED = "ChiefSucceeded"
    SUCCEEDED = "Succeeded"
    # Promoted: the gate
    NOTHING_SERVED = "NothingServed"
    BETTER = "Better"
    NOT_BETTER = "NotBetter"
    NOT_COMPARABLE = "NotComparable"
    NO_METRIC = "NoMetric"
    # Promoted: the rollout
    NO_MODEL = "NoModel"
    DEPLOYMENT_NOT_MANAGED = "DeploymentNotManaged"
    SERVES_ANOTHER_MODEL = "ServesAnotherModel"
    NOT_PROMOTED = "NotPromoted"
    CHECKING_MODEL = "CheckingModel"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_CHECK_TIMED_OUT = "ModelCheckTimedOut"
    PROMOTING = "Promoting"
    DEPLOYMENT_DELETED = "DeploymentDeleted"
    SUPERSEDED = "Superseded"
    ROLLED_OUT = "RolledOut"
    PROMOTED = "Promoted"
    ROLLOUT_FAILED = "RolloutFailed"
    PROMOTION_REFUSED = "PromotionRefused"
    PROMOTION_RETRYING = "PromotionRetrying"
    # Trials (a job with spec.trials)
    TRIALS_RUNNING = "TrialsRunning"
    BEST_TRIAL = "BestTrial"
    NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"
    TRIAL_STARTED = "TrialStarted"
    TRIAL_SUCCEEDED = "TrialSucceeded"
    TRIAL_STOPPED = "TrialStopped"
    TRIAL_FAILED = "TrialFailed"
    REFITTING = "Refitting"
    REFIT_SUCCEEDED = "RefitSucceeded"
    REFIT_FAILED = "RefitFailed"
    # Events: the job's TensorBoard
    TENSORBOARD_CREATED = "TensorBoardCreated"
    TENSORBOARD_DELETED = "TensorBoardDeleted"
    TENSORBOARD_FAILED = "TensorBoardFailed"


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
    nodes: list[str] = Field(
        default_factory=list,
        description="The node each worker of the current attempt runs on, by index "
        "(empty until it is scheduled).",
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


class TensorBoardEndpoint(_Status):
    """Where the job's TensorBoard answers: `kubectl port-forward svc/<service> <port>`."""

    service: str = Field(description="The Service in the job's namespace.")
    port: int = Field(description="Its port, TensorBoard's.")


class TrialStatus(_Status):
    """One trial of a job with `spec.trials`: a row of the leaderboard."""

    index: int
    job: str = Field(description="Its TrainingJob, `<name>-t<index>`.")
    parameters: str = Field(description="The values drawn for it, `path=value` pairs.")
    state: str = Field(description="Pending, Running, Succeeded, EarlyStopped or Failed.")
    epochs: int = Field(0, description="Epochs it reported.")
    best_metric: float | None = Field(None, description="Its best spec.training.metric.")
    history: list[float] = Field(
        default_factory=list,
        description="spec.training.metric after each epoch, for the median stopping rule.",
    )
    model: ModelRef | None = Field(None, description="The model it exported, once it succeeded.")
    message: str | None = Field(None, description="Why it stopped early or failed.")


class RefitStatus(_Status):
    """`spec.trials.refit`: the best trial's parameters trained on training + validation."""

    trial: int = Field(description="The trial whose parameters it trains.")
    job: str = Field(description="Its TrainingJob, `<name>-refit`.")
    state: str = Field(description="Running, Succeeded or Failed.")
    epochs: int = Field(0, description="Epochs it reported.")
    model: ModelRef | None = Field(None, description="The model it exported, once it succeeded.")
    test_metrics: dict[str, float] = Field(default_factory=dict)
    message: str | None = Field(
        None, description="Why it failed (the best trial's own model is the job's then)."
    )


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
    lost_nodes: list[str] = Field(
        default_factory=list,
        description="Nodes lost under the last attempt; the next one is placed only once the "
        "scheduler keeps off them.",
    )
    start_time: str | None = None
    completion_time: str | None = None
    promotion_start_time: str | None = None
    metric_history: list[float] = Field(
        default_factory=list, description="spec.training.metric after each epoch, in order."
    )
    trials: list[TrialStatus] = Field(
        default_factory=list, description="With spec.trials: every trial, best first."
    )
    trials_progress: str | None = Field(
        None, description="`finished/count` trials, for kubectl get."
    )
    best_trial: int | None = Field(None, description="The index of the best trial so far.")
    refit: RefitStatus | None = Field(None, description="With spec.trials.refit, once started.")
    tensorboard: TensorBoardEndpoint | None = Field(
        None, description="The job's TensorBoard, once created (`spec.tensorboard.enabled`)."
    )
