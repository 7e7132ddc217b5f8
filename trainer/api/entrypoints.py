"""How a worker and a model server are started: their commands, arguments and environment.

The operator puts these into pod specs, the local runner into subprocesses, and the CLI parses
them; another image may replace the command but keeps the arguments and the variables.
"""

from __future__ import annotations

from .spec import S3Options

WORKER = "worker"
SERVE = "serve"
PULL = "pull"
TENSORBOARD = "tensorboard"
WORKER_COMMAND = ["kubetrain", WORKER]
"""The trainer image's worker entrypoint; `worker_arguments` follow it."""
SERVE_COMMAND = ["kubetrain", SERVE]
"""The trainer image's model server entrypoint; `serve_arguments` follow it."""
PULL_COMMAND = ["kubetrain", PULL]
"""The trainer image's model puller (a serving pod's init container); `pull_arguments` follow."""
TENSORBOARD_COMMAND = ["kubetrain", TENSORBOARD]
"""The trainer image's TensorBoard of a job's curves; `tensorboard_arguments` follow it."""
TENSORBOARD_PORT = 6006
"""TensorBoard's own default port: `kubetrain tensorboard`'s, and the operator's Service's."""
SERVER_PORT = 8501
"""TensorFlow Serving's REST port, which the model server listens on by default."""
GRPC_PORT = 8500
"""TensorFlow Serving's gRPC port, the model server's other default."""

JOB_ENV = "KUBETRAIN_JOB"
"""The TrainingJob (name, namespace and spec) as JSON, for a worker without `--job`."""
ATTEMPT_ENV = "KUBETRAIN_ATTEMPT"
"""Which job-level attempt a worker pod belongs to (0, then one more per restart)."""
CPUS_ENV = "KUBETRAIN_CPUS"
"""The cores a worker may use. TensorFlow sizes its thread pools to every core of the machine,
so workers sharing one (local processes, pods on a node) would each take them all; the runner
divides the machine's cores among its workers (unless this is set; 0 leaves TensorFlow's
sizing), a pod gets its CPU limit (the Downward API)."""
TERMINATION_LOG = "/dev/termination-log"
"""Where Kubernetes takes a container's termination message from (the pod's default)."""
TERMINATION_LOG_ENV = "KUBETRAIN_TERMINATION_LOG"
"""Where a worker writes its last words when not in a pod (`/dev/termination-log` there)."""
DATA_CACHE_ENV = "KUBETRAIN_DATA_CACHE"
"""Where a worker caches a dataset it fetched from an object store or the web."""
S3_ADDRESSING_STYLE_ENV = "KUBETRAIN_S3_ADDRESSING_STYLE"
"""`path`, `virtual` or `auto`: how S3 requests name the bucket (AWS tools have no variable)."""
MODEL_VERSION_ENV = "MODEL_VERSION"
"""The model version a server pins; promotion changes only this in the serving Deployment."""


def worker_arguments(workdir: str, model_root: str) -> list[str]:
    return ["--workdir", workdir, "--model-root", model_root]


MODEL_DIR_FLAG = "--model-dir"
"""The model server's flag for `<model_root>/<name>`: what a serving Deployment serves."""


CHECK_ONLY_FLAG = "--check-only"
"""The model server's flag to check that its version is complete in storage, then exit."""


def pull_arguments(model_dir: str, into: str) -> list[str]:
    return [MODEL_DIR_FLAG, model_dir, "--into", into]


def serve_arguments(model_dir: str, port: int = SERVER_PORT) -> list[str]:
    return [MODEL_DIR_FLAG, model_dir, "--port", str(port)]


BIND_ALL_FLAG = "--bind-all"
"""`kubetrain tensorboard`'s flag to listen on every address (in a pod) instead of loopback."""


def tensorboard_arguments(log_dir: str, port: int = TENSORBOARD_PORT) -> list[str]:
    """A pod's TensorBoard: reached through its Service, so on every address."""
    return [log_dir, "--port", str(port), BIND_ALL_FLAG]


def s3_environment(options: S3Options) -> dict[str, str]:
    """The variables that point a worker's or server's S3 client where `options` say."""
    env = {}
    if options.addressing_style:
        env[S3_ADDRESSING_STYLE_ENV] = options.addressing_style
    if options.endpoint:
        env["AWS_ENDPOINT_URL"] = options.endpoint
    if options.region:
        env["AWS_REGION"] = options.region
    return env
