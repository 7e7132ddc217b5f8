"""Command-line flags and the settings object built from them (no heavy imports here)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..api.entrypoints import (
    CHECK_ONLY_FLAG,
    GRPC_PORT,
    MODEL_DIR_FLAG,
    MODEL_VERSION_ENV,
    SERVER_PORT,
)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_CONCURRENT_REQUESTS = 64
MAX_CONNECTIONS = 256
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0


def default_intra_op_threads() -> int:
    """All cores but one, which the event loop (parsing, answering) keeps for itself."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    model_name: str
    host: str = "0.0.0.0"
    port: int = SERVER_PORT
    grpc_port: int = GRPC_PORT
    model_version: int | None = None
    enable_batching: bool = True
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    batch_threads: int = 1
    intra_op_threads: int = 0  # 0: `default_intra_op_threads()`
    max_body_bytes: int = MAX_BODY_BYTES
    max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    shutdown_delay: float = 0.0
    drain_timeout: float = 20.0
    access_log: bool = False
    log_level: str = "info"
    check_only: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSettings:
        """Settings from parsed flags."""
        model_dir = Path(args.model_dir)
        return cls(
            model_dir=model_dir,
            model_name=args.model_name or model_dir.resolve().name,
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            model_version=args.model_version,
            enable_batching=args.enable_batching,
            max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            batch_threads=args.batch_threads,
            intra_op_threads=args.intra_op_threads,
            max_body_bytes=args.max_body_bytes,
            max_concurrent_requests=args.max_concurrent_requests,
            max_connections=args.max_connections,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            shutdown_delay=args.shutdown_delay,
            drain_timeout=args.drain_timeout,
            access_log=args.access_log,
            log_level=args.log_level,
            check_only=args.check_only,
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _non_negative(kind: type[int] | type[float]):
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
        return value

    return parse


def version_number(text: str) -> int | None:
    """`--model-version`, or `MODEL_VERSION` when the flag is absent (argparse converts a
    string default with `type` too); empty means the highest version."""
    text = text.strip()
    if text == "":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"a model version is a positive integer (from the flag or env {MODEL_VERSION_ENV}), "
            f"got {text!r}"
        )
    return int(text)


def add_model_version_argument(parser: argparse.ArgumentParser, purpose: str) -> None:
    """`--model-version`, pinned by env `MODEL_VERSION` as the serving pods set it."""
    parser.add_argument(
        "--model-version",
        type=version_number,
        default=os.environ.get(MODEL_VERSION_ENV, ""),
        help=f"{purpose} (default: env {MODEL_VERSION_ENV}, else the highest)",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `kubetrain serve`; defaults suit the serving Deployment's container."""
    parser.add_argument(
        MODEL_DIR_FLAG,
        required=True,
        help="<model_root>/<name>: the directory holding the integer version directories",
    )
    parser.add_argument(
        "--model-name", default=None, help="name in the URL (default: the directory name)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=SERVER_PORT, help="HTTP port")
    parser.add_argument(
        "--grpc-port",
        type=_non_negative(int),
        default=GRPC_PORT,
        help="TensorFlow Serving's gRPC API port, open once the model is loaded (0: none)",
    )
    add_model_version_argument(parser, "serve this version instead of the highest one")
    parser.add_argument(
        CHECK_ONLY_FLAG,
        action="store_true",
        help="only check that the version to serve is complete, then exit: 0 if it is, "
        "2 naming what is missing (the operator runs this before a rollout)",
    )
    batching = parser.add_argument_group("dynamic batching")
    batching.add_argument(
        "--enable-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="coalesce concurrent requests into one model call",
    )
    batching.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=32,
        help="most rows in one model call, and in one request (a larger one is a 400)",
    )
    batching.add_argument(
        "--batch-timeout-micros",
        type=_non_negative(int),
        default=2000,
        help="longest a request waits for others to join its batch",
    )
    batching.add_argument(
        "--batch-threads", type=_positive_int, default=1, help="model calls that may run at once"
    )
    batching.add_argument(
        "--intra-op-threads",
        type=_non_negative(int),
        default=0,
        help="threads one TensorFlow op may use (default 0: all cores but one, which the "
        "event loop keeps)",
    )
    lifecycle = parser.add_argument_group("limits and shutdown")
    lifecycle.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=MAX_BODY_BYTES,
        help="larger request bodies are refused with 413",
    )
    lifecycle.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=MAX_CONCURRENT_REQUESTS,
        help="API requests handled at once; more get 503 at once (probes and metrics never)",
    )
    lifecycle.add_argument(
        "--max-connections",
        type=_positive_int,
        default=MAX_CONNECTIONS,
        help="open connections, idle ones included; more get 503 and are closed",
    )
    lifecycle.add_argument(
        "--header-timeout",
        type=_positive_seconds,
        default=HEADER_TIMEOUT,
        help="seconds a client has to send a request's headers; then the connection closes",
    )
    lifecycle.add_argument(
        "--body-timeout",
        type=_positive_seconds,
        default=BODY_TIMEOUT,
        help="seconds a client has to send a request's whole body; then 408",
    )
    lifecycle.add_argument(
        "--shutdown-delay",
        type=_non_negative(float),
        default=0.0,
        help="seconds to keep serving (while reporting not-ready) after SIGTERM, for images "
        "without a preStop sleep",
    )
    lifecycle.add_argument(
        "--drain-timeout",
        type=_non_negative(float),
        default=20.0,
        help="seconds to let in-flight requests finish after the listener closes",
    )
    lifecycle.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log each request",
    )
    lifecycle.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
