"""The TrainingJob resource: the one definition of its shape.

`kubetrain run` reads these models from a YAML file, the operator reads them from the
Kubernetes object, and the CRD's OpenAPI schema is generated from them, so a field exists
in exactly one place. Field names are camelCase on the wire (Kubernetes API conventions)
and snake_case in Python.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "kubetrain.io"
API_VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
MAX_NAME_LENGTH = 52
"""`<name>-worker-<index>` must stay a valid 63-character DNS label."""
MAX_TRIALS = 1000
TRIAL_SUFFIX = "-t"
"""On Kubernetes each trial is a TrainingJob of its own, `<name>-t<index>`, owned by the job."""
REFIT_SUFFIX = "-refit"
"""`spec.trials.refit`'s TrainingJob on Kubernetes, `<name>-refit`, owned by the job."""
MAX_TRIALS_JOB_NAME_LENGTH = MAX_NAME_LENGTH - max(
    len(TRIAL_SUFFIX) + len(str(MAX_TRIALS - 1)), len(REFIT_SUFFIX)
)

# Names that end up in object names or API URLs, checked as the API server would check them,
# so that a job author cannot reach outside their namespace with a path (`../kube-system`).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A Service name: lowercase letters, digits and '-'; a letter first, alphanumeric last."""
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A PersistentVolumeClaim name: DNS-1123 labels joined by dots, at most 253 characters."""
SERVING_SUFFIX = "-serving"
MAX_MODEL_NAME_LENGTH = 63 - len(SERVING_SUFFIX)
"""`<model name>-serving` is the default serving Deployment and Service name."""
TENSORBOARD_SUFFIX = "-tensorboard"
MAX_TENSORBOARD_JOB_NAME_LENGTH = 63 - len(TENSORBOARD_SUFFIX)
"""`<name>-tensorboard` names a job's TensorBoard Service, a DNS-1035 label of at most 63."""
MAX_SEED = 2**32 - 2
"""The split draws with `seed` and `seed + 1`; numpy takes 32-bit seeds."""
LOCAL_TRAINER_IMAGE = "localhost/kubetrain-trainer:dev"
"""The trainer image `make images` builds into the local cluster: the operator's default for
jobs that name none, unless the chart's `jobDefaults.image` says otherwise."""


class SpecError(ValueError):
    """A TrainingJob that cannot run; the message names the offending field."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )


class DatasetName(StrEnum):
    MNIST = "mnist"
    PLANESNET = "planesnet"


class SplitBy(StrEnum):
    RANDOM = "random"
    SCENE = "scene"


class ClassWeight(StrEnum):
    NONE = "none"
    BALANCED = "balanced"


class Architecture(StrEnum):
    """Networks a job can train; the first two per dataset are the seed's."""

    MNIST_DENSE = "mnist-dense"
    MNIST_CNN = "mnist-cnn"
    PLANESNET_SEED = "planesnet-seed"
    PLANESNET_CNN = "planesnet-cnn"


ARCHITECTURE_DATASET: dict[str, str] = {
    Architecture.MNIST_DENSE: DatasetName.MNIST,
    Architecture.MNIST_CNN: DatasetName.MNIST,
    Architecture.PLANESNET_SEED: DatasetName.PLANESNET,
    Architecture.PLANESNET_CNN: DatasetName.PLANESNET,
}


class Dataset(_Model):
    """Where the examples come from and how they are split."""

    name: DatasetName = Field(description="Which dataset the source holds.")
    source: str = Field(
        min_length=1,
        description="Where the data is: a directory or a file (IDX files, PlanesNet PNG folder "
        "or planesnet.json), as a local path or an `s3://`, `gs://` or `https://` URI. "
        "Relative paths resolve against the working directory (the image's in a pod).",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="For a source that is one remote file (planesnet.json): its SHA-256, "
        "checked after download.",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of the training data held out for validation."
    )
    test_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share held out for the final test, for datasets without a test set "
        "of their own (PlanesNet). MNIST uses its official 10,000-image test set.",
    )
    split_by: SplitBy = Field(
        SplitBy.RANDOM,
        description="`scene` keeps all chips of a PlanesNet scene in one split, which measures "
        "generalisation honestly; `random` is a stratified random split.",
    )
    augment: bool = Field(
        False, description="Random flips, 90-degree rotations and blur (PlanesNet)."
    )
    limit: int | None = Field(
        None, ge=10, description="Use at most this many training examples (quick trials)."
    )
    train_on_validation: bool = Field(
        False,
        description="Train on the validation split too, and export the last epoch rather "
        "than the best: how `spec.trials.refit` trains the winning parameters once more. "
        "The validation metrics then measure examples the model learned from, so they "
        "choose nothing; the test split stays unseen.",
    )


class TrainedModel(_Model):
    architecture: Architecture = Field(description="The network to train.")
    name: str | None = Field(
        None,
        pattern=DNS1035_LABEL,
        max_length=MAX_MODEL_NAME_LENGTH,
        description="Name the model is exported and served under; defaults to the dataset name. "
        "A DNS-1035 label, as `<name>-serving` names the serving Service.",
    )


class Training(_Model):
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the training set.")
    batch_size: int = Field(128, ge=1, le=65536, description="Global batch, split across workers.")
    learning_rate: float = Field(0.001, gt=0, le=10, description="Adam's initial learning rate.")
    weight_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Decoupled weight decay per step, scaled by the learning rate (AdamW); "
        "0 trains with plain Adam.",
    )
    class_weight: ClassWeight = Field(
        ClassWeight.NONE,
        description="`balanced` weighs each example's loss inversely to its class's share of "
        "the training split, so every class carries the same total weight (as scikit-learn's "
        "`class_weight='balanced'`); `none` weighs all examples alike.",
    )
    learning_rate_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="`cosine` decays the learning rate to zero by the last epoch."
    )
    metric: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="Validation metric that picks the best checkpoint."
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Seeds the split, the weights and the shuffling."
    )


class ResourceRequirements(_Model):
    requests: dict[str, str] = Field(default_factory=dict, description='e.g. `cpu: "1"`.')
    limits: dict[str, str] = Field(default_factory=dict, description="e.g. `memory: 2Gi`.")


Spread = Literal["Preferred", "Required", "None"]


class Workers(_Model):
    replicas: int = Field(2, ge=1, le=64, description="Worker processes (pods); 0 is the chief.")
    image: str | None = Field(
        None,
        min_length=1,
        description="Trainer image the worker and serving pods run; by default the operator's "
        "(the chart's `jobDefaults.image`).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="As in a pod's container."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Each worker container's resources."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Nodes the worker pods may run on."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Taints the worker pods tolerate."
    )
    spread: Spread = Field(
        "Preferred",
        description="Workers on different nodes: `Preferred` (where the scheduler can), "
        "`Required` (a worker stays Pending rather than share a node) or `None`.",
    )


OBJECT_STORE_URI = r"^(s3|gs)://[a-z0-9][-a-z0-9._]{1,61}[a-z0-9](/[^?#]*)?$"
"""`s3://bucket/prefix` or `gs://bucket/prefix`: a bucket name as both clouds allow them."""


class S3Options(_Model):
    """For S3-compatible stores other than AWS; given to the pods as the standard variables."""

    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="The store's URL, e.g. `http://minio.storage:9000` (AWS_ENDPOINT_URL).",
    )
    region: str | None = Field(
        None, pattern=r"^[a-z0-9-]+$", description="The bucket's region (AWS_REGION)."
    )
    addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        None,
        description="`path` (bucket in the URL path), `virtual` (bucket in the host name) or "
        "`auto`; by default `path` where an endpoint is set (as S3-compatible servers "
        "mostly need), else `auto`.",
    )


class Storage(_Model):
    """Where checkpoints and exported models live: a PVC mounted at `mountPath`, or an object
    store (`uri`) that needs no shared volume."""

    claim_name: str | None = Field(
        None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="PersistentVolumeClaim holding checkpoints and exported models. A job "
        "that names neither this nor `uri` gets the operator's default storage (the chart's "
        "`jobDefaults.storage`).",
    )
    uri: str | None = Field(
        None,
        max_length=1024,
        description="Object store for checkpoints and exported models instead of a claim: "
        "`s3://bucket/prefix` or `gs://bucket/prefix` (with `kubetrain run`, a local directory "
        "too). The layout under it is the claim's: `jobs/<job>/`, `models/<model>/<version>/`.",
    )
    secret_name: str | None = Field(
        None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="Secret whose keys become the pods' environment, e.g. `AWS_ACCESS_KEY_ID` "
        "and `AWS_SECRET_ACCESS_KEY`; the operator never reads it.",
    )
    s3: S3Options = Field(default_factory=S3Options)
    mount_path: str = Field(
        "/var/lib/kubetrain", pattern=r"^/", description="Where pods mount `claimName`."
    )
    data_claim_name: str | None = Field(
        None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="Optional PVC holding the dataset, mounted read-only at /data.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> Storage:
        if self.claim_name and self.uri:
            raise ValueError("give claimName (a volume) or uri (an object store), not both")
        return self


REQUESTS_PER_SECOND_METRIC = "kubetrain_serving_requests_per_second"
"""The per-pod metric a requests-per-second target names: the rate of the model server's
`kubetrain_serving_requests_total`, as a custom-metrics adapter (prometheus-adapter, say)
serves it under this name."""


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler for the serving Deployment, between these bounds."""

    min_replicas: int = Field(1, ge=1, le=100, description="Fewest serving pods.")
    max_replicas: int = Field(ge=1, le=100, description="Most serving pods.")
    target_cpu_utilization: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Average CPU use to hold the pods at, in percent of the serving "
        "container's CPU request (70 when no target is given).",
    )
    target_requests_per_second: float | None = Field(
        None,
        gt=0,
        description="Requests per second per pod to hold the pods at; needs a custom-metrics "
        f"adapter serving `{REQUESTS_PER_SECOND_METRIC}` for the pods.",
    )
    scale_down_stabilization_seconds: int = Field(
        300,
        ge=0,
        le=3600,
        description="How long load must stay low before serving pods are removed: the "
        "autoscaler follows the highest recommendation of this window (Kubernetes' 300).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        return self


class Promotion(_Model):
    enabled: bool = Field(True, description="Promote the best model when the job succeeds.")
    deployment: str | None = Field(
        None,
        pattern=DNS1035_LABEL,
        max_length=63,
        description="Serving Deployment (and Service) to roll the best model out to; defaults "
        "to `<model name>-serving`.",
    )
    replicas: int = Field(2, ge=1, le=100, description="Serving pods.")
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "100m", "memory": "768Mi"}, limits={"memory": "2Gi"}
        ),
        description="Each serving container's resources; the defaults fit a small image model "
        "(the server holds about 750 MB with TensorFlow loaded).",
    )
    min_improvement: float = Field(
        0.0, ge=0, description="How much the new metric must beat the served one by."
    )
    progress_deadline_seconds: int = Field(
        300, ge=10, description="Roll back if the rollout has not finished by then."
    )
    autoscaling: Autoscaling | None = Field(
        None,
        description="Scale the serving pods with load instead of keeping `replicas`; the "
        "operator then never sets the Deployment's replicas after creating it.",
    )


class TensorBoard(_Model):
    """TensorBoard on the cluster, drawing the curves the chief writes to the job's storage."""

    enabled: bool = Field(
        False,
        description="Run TensorBoard for this job in a Deployment and Service "
        f"`<name>{TENSORBOARD_SUFFIX}` (owned by the job: they go when it is deleted, and stay "
        "after it finishes); `kubectl port-forward` to `status.tensorboard`. It reads the job's "
        "claim read-only, or follows its object store. `kubetrain run` ignores it (`kubetrain "
        "tensorboard` shows a local run's curves).",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "100m", "memory": "768Mi"}, limits={"memory": "1536Mi"}
        ),
        description="The TensorBoard container's resources, applied when it is created; the "
        "defaults fit TensorBoard with TensorFlow loaded (about 650 MB).",
    )


class CleanPodPolicy(StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RunPolicy(_Model):
    backoff_limit: int = Field(3, ge=0, description="Job-level restarts before Failed.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job (DeadlineExceeded) after this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete a finished job after this long."
    )
    clean_pod_policy: CleanPodPolicy = Field(
        CleanPodPolicy.RUNNING,
        description="Which worker pods to delete when the job ends: All, Running or None.",
    )


TRIALS_SECTIONS = ("model", "training", "dataset")
"""Where a trial parameter may point: what a candidate learns. The rest of the spec (workers,
storage, promotion, runPolicy, tensorboard) is how and where the job runs, the same for all."""
FIXED_IN_TRIALS: dict[str, str] = {
    "training.metric": "trials are compared by it",
    "model.name": "the best trial is exported under it",
    "dataset.name": "every trial must learn the same data",
    "dataset.source": "every trial must learn the same data",
    "dataset.sha256": "every trial must learn the same data",
    "dataset.validationFraction": "trials are compared on the same validation split",
    "dataset.testFraction": "trials are compared on the same validation split",
    "dataset.splitBy": "trials are compared on the same validation split",
    "training.seed": "it draws the validation split trials are compared on",
    "dataset.trainOnValidation": "trials are compared on a validation split none learns from",
}
"""Fields in `TRIALS_SECTIONS` that must not vary, and why: trials are comparable only
when they are measured the same way."""


class Algorithm(StrEnum):
    RANDOM = "random"
    GRID = "grid"


ParameterValue = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
"""A value a field may take: a number, a string or a boolean, as the field wants it."""


class Distribution(_Model):
    """One parameter's search space: exactly one of `values`, `uniform` or `logUniform`."""

    values: list[ParameterValue] | None = Field(
        None, min_length=1, description="The values to choose from (the only kind `grid` takes)."
    )
    uniform: list[float] | None = Field(
        None, min_length=2, max_length=2, description="`[low, high]`: any number between."
    )
    log_uniform: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="`[low, high]`, both above 0: uniform in the logarithm, as learning rates "
        "are searched.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [name for name in ("values", "uniform", "log_uniform") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of values, uniform or logUniform")
        for name in ("uniform", "log_uniform"):
            bounds = getattr(self, name)
            if bounds and not bounds[0] < bounds[1]:
                raise ValueError(f"{to_camel(name)}: low must be below high")
        if self.log_uniform and self.log_uniform[0] <= 0:
            raise ValueError("logUniform: low must be above 0")
        return self


class MedianStop(_Model):
    """The median stopping rule: stop a trial whose best metric so far is worse than the
    median of the other trials' best at the same epoch."""

    min_trials: int = Field(
        3, ge=1, description="Other trials that must have reached the epoch before any stops."
    )
    start_epoch: int = Field(1, ge=1, description="The first epoch after which a trial may stop.")


class EarlyStopping(_Model):
    median_stop: MedianStop | None = Field(
        None, description="Stop trials that fall behind the median (`{}` takes the defaults)."
    )


class Trials(_Model):
    """Several candidates of this spec, each trained as a job of its own; the best is exported."""

    count: int = Field(ge=1, le=MAX_TRIALS, description="How many candidates to train.")
    parallelism: int = Field(
        1,
        ge=1,
        le=64,
        description="How many train at once (on Kubernetes, how many trial TrainingJobs "
        "run side by side).",
    )
    algorithm: Algorithm = Field(
        Algorithm.RANDOM,
        description="`random` samples each parameter; `grid` takes the first `count` "
        "combinations of `values`.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the sampling of candidates.")
    parameters: dict[str, Distribution] = Field(
        min_length=1,
        description="The search space: a field's camelCase path under spec (e.g. "
        "`training.learningRate`) to `{values: [...]}`, `{uniform: [low, high]}` or "
        "`{logUniform: [low, high]}`. A field of model, training or dataset, but none that "
        f"trials are compared by or exported under: {', '.join(FIXED_IN_TRIALS)}.",
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="When to stop a trial before its last epoch."
    )
    refit: bool = Field(
        False,
        description="Once every trial has ended, train the best one's parameters again on "
        "the training and validation splits together and export that model instead "
        "(scikit-learn's refit; on Kubernetes the TrainingJob `<name>-refit`). The job's "
        "validation metrics, and so the promotion gate, stay the best trial's: the refit "
        "has no held-out data left to measure itself on. If the refit fails, the best "
        "trial's own model is exported.",
    )

    @model_validator(mode="after")
    def _searchable(self) -> Trials:
        for path, space in self.parameters.items():
            if (why := _unsearchable(path)) is not None:
                raise ValueError(f"parameters.{path}: {why}")
            if self.algorithm == Algorithm.GRID and space.values is None:
                raise ValueError(
                    f"parameters.{path}: grid takes only `values` (a list to go through); "
                    "use algorithm random to sample uniform or logUniform"
                )
        sizes = [len(s.values) for s in self.parameters.values() if s.values is not None]
        if len(sizes) == len(self.parameters) and self.count > math.prod(sizes):
            raise ValueError(
                f"count {self.count} is more than the {math.prod(sizes)} combinations of "
                "the parameters' values (no candidate is trained twice)"
            )
        return self


def _unsearchable(path: str) -> str | None:
    """Why `path` cannot be a trial parameter, or None if it can."""
    keys = path.split(".")
    if keys[0] not in TRIALS_SECTIONS:
        return (
            f"only fields of spec.{', spec.'.join(TRIALS_SECTIONS)} can vary between trials "
            "(what a candidate learns); the rest is how and where the job runs"
        )
    model: type[BaseModel] | None = TrainingJobSpec
    for i, key in enumerate(keys):
        assert model is not None  # every key but the last named an object
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if key not in fields:
            where = ".".join(keys[:i]) or "spec"
            return f"{where} has no field {key!r} (one of {', '.join(fields)})"
        annotation = fields[key].annotation
        is_object = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        last = i == len(keys) - 1
        if last and is_object:
            return "names an object: give one of its fields"
        if not last and not is_object:
            return f"{key} is not an object"
        model = annotation if is_object else None
    if path in FIXED_IN_TRIALS:
        return f"cannot vary between trials: {FIXED_IN_TRIALS[path]}"
    return None


class TrainingJobSpec(_Model):
    dataset: Dataset
    model: TrainedModel
    training: Training = Field(default_factory=Training)
    workers: Workers = Field(default_factory=Workers)
    storage: Storage = Field(default_factory=Storage)
    promotion: Promotion = Field(default_factory=Promotion)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    tensorboard: TensorBoard = Field(default_factory=TensorBoard)
    trials: Trials | None = Field(
        None,
        description="Train several candidates of this spec and export the best (on "
        "Kubernetes each trial is a TrainingJob `<name>-t<index>` owned by this one).",
    )

    @model_validator(mode="after")
    def _architecture_fits_dataset(self) -> TrainingJobSpec:
        expected = ARCHITECTURE_DATASET[self.model.architecture]
        if expected != self.dataset.name:
            raise ValueError(
                f"spec.model.architecture {self.model.architecture!r} is for the "
                f"{expected} dataset, but spec.dataset.name is {self.dataset.name!r}"
            )
        return self

    @model_validator(mode="after")
    def _trials_hold_out_validation(self) -> TrainingJobSpec:
        if self.trials is not None and self.dataset.train_on_validation:
            raise ValueError(
                "spec.dataset.trainOnValidation cannot be set with spec.trials: trials are "
                "compared on a validation split none of them learns from; set "
                "spec.trials.refit to train the winner on it afterwards"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.model.name or str(self.dataset.name)

    @property
    def serving_deployment(self) -> str:
        return self.promotion.deployment or f"{self.model_name}{SERVING_SUFFIX}"


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    # DNS-1035: the job's headless Service has the job's name.
    name: Annotated[str, Field(pattern=DNS1035_LABEL, max_length=MAX_NAME_LENGTH)]
    namespace: str | None = None


class TrainingJob(_Model):
    api_version: Literal["kubetrain.io/v1alpha1"] = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["TrainingJob"] = KIND
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _tensorboard_name_fits(self) -> TrainingJob:
        if self.spec.tensorboard.enabled and (
            len(self.metadata.name) > MAX_TENSORBOARD_JOB_NAME_LENGTH
        ):
            raise ValueError(
                f"metadata.name must be at most {MAX_TENSORBOARD_JOB_NAME_LENGTH} characters "
                f"with spec.tensorboard.enabled (its Service is <name>{TENSORBOARD_SUFFIX})"
            )
        return self


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # A map's key (a trial parameter's path) is kept as written; fields are snake_case.
            name = to_camel(part) if "_" in str(part) else str(part)
            path += ("." if path else "") + name
    return path


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
        where = _field_path(loc) or "spec"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def parse_job(document: dict[str, Any]) -> TrainingJob:
    """Validate a TrainingJob document, raising SpecError naming each bad field."""
    try:
        return TrainingJob.model_validate(document)
    except ValidationError as err:
        raise SpecError(f"invalid TrainingJob: {_describe(err)}") from None


def parse_storage(document: dict[str, Any]) -> Storage:
    """Validate a `spec.storage` on its own (the operator's default storage)."""
    try:
        return Storage.model_validate(document)
    except ValidationError as err:
        raise SpecError(f"invalid storage: {_describe(err)}") from None


def parse_value(text: str) -> Any:
    """Interpret a `--set` value as YAML does (numbers, booleans, null), like `helm --set`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(document: dict[str, Any], assignment: str, string: bool = False) -> None:
    """Apply one `PATH=VALUE` override (dotted camelCase path) to a raw document in place.

    With `string`, VALUE is taken as it is (`--set-string`, as helm has): `007` stays `"007"`.
    """
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise SpecError(f"--set {assignment!r}: expected PATH=VALUE, e.g. spec.training.epochs=1")
    try:
        set_field(document, path, raw if string else parse_value(raw))
    except SpecError as err:
        raise SpecError(f"--set {path}: {err}") from None


def set_field(document: dict[str, Any], path: str, value: Any) -> None:
    """Set the field at a dotted camelCase path of a raw document in place (`--set`, and a
    trial's parameters), making the objects on the way."""
    keys = path.split(".")
    node: Any = document
    for i, key in enumerate(keys[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if child is None:
            node[key] = child = {}
        if not isinstance(child, dict):
            raise SpecError(f"{'.'.join(keys[: i + 1])} is not an object")
        node = child
    node[keys[-1]] = value


def load_job(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    string_overrides: list[str] | tuple[str, ...] = (),
) -> TrainingJob:
    """Read a TrainingJob YAML file, apply `--set` then `--set-string` overrides, validate it."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory; give the TrainingJob's YAML file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; give the TrainingJob's YAML file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(document, dict):
        raise SpecError(f"{path}: expected a TrainingJob object, got {type(document).__name__}")
    for assignment in overrides:
        apply_override(document, assignment)
    for assignment in string_overrides:
        apply_override(document, assignment, string=True)
    try:
        return parse_job(document)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
